"""DEQ vs skip DEQ vs continuous DEQ (VCABM3) on scikit-learn's digits: time per epoch, NFE, accuracy, and
forward + backward time against NFE × one f-evaluation (the solver's and adjoint's overhead).

    python benchmarks/bench_deq_digits.py [--quick]
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

import deqcore as dq
from deqcore import nn
from deqcore.demos import digits

VARIANTS = {
    "DEQ (Anderson)": lambda width: dict(solver=dq.Anderson()),
    "Skip DEQ (Anderson, learned u0)": lambda width: dict(solver=dq.Anderson(), init=nn.Dense(width, width, "tanh"),
                                                          skip_loss_weight=1.0),
    "Skip-Reg DEQ (Anderson, u0 = f(0, x))": lambda width: dict(solver=dq.Anderson(), init="one_step",
                                                                skip_loss_weight=1.0),
    "Continuous DEQ (VCABM3)": lambda width: dict(solver=dq.VCABM3()),
}


def f_time(model, params, state, x, repeats=50):
    """Median time of one evaluation of the DEQ's f on a training batch."""
    encoder, deq = model.layers[0], model.layers[1]
    injection, _ = encoder(x, params["layer_1"], state["layer_1"])
    z = np.zeros_like(injection)
    f = nn.bind(deq.model, params["layer_2"]["model"], state["layer_2"]["model"])    # f as the solve runs it
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f((z, injection))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def vjp_time(model, params, state, x, repeats=50):
    """Median time of one input VJP of the DEQ's f (∂f/∂zᵀ v, what each step of the adjoint solve costs)."""
    from deqcore.nn.core import input_pullback

    encoder, deq = model.layers[0], model.layers[1]
    injection, _ = encoder(x, params["layer_1"], state["layer_1"])
    z = np.zeros_like(injection)
    _, pullback, _ = deq.model.vjp((z, injection), params["layer_2"]["model"], state["layer_2"]["model"])
    vjp = input_pullback(pullback, (True, False))
    v = np.ones_like(z)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        vjp(v)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_overhead(model, params, state, x, y, repeats=15):
    """Medians over ``repeats`` of one training step's forward + backward on a fixed batch, timed by the working
    thread's CPU clock (the machine is shared: the wall clock mostly measures other processes), each against
    blocks of f-evaluations and input VJPs timed beside it. Returns (share outside f with a VJP counted as one
    f, share outside f and the VJPs at their own cost)."""
    clock = time.thread_time
    encoder, deq = model.layers[0], model.layers[1]
    injection, _ = encoder(x, params["layer_1"], state["layer_1"])
    z = np.zeros_like(injection)
    pm, sm = params["layer_2"]["model"], state["layer_2"]["model"]
    from deqcore.nn.core import input_pullback

    _, pullback, _ = deq.model.vjp((z, injection), pm, sm)
    vjp = input_pullback(pullback, (True, False))
    f = nn.bind(deq.model, pm, sm)                      # f as the solve runs it
    v = np.ones_like(z)
    as_f, as_own = [], []
    for _ in range(repeats):
        start = clock()
        for _ in range(10):
            f((z, injection))
        t_f = (clock() - start) / 10
        start = clock()
        for _ in range(10):
            vjp(v)
        t_vjp = (clock() - start) / 10
        start = clock()
        logits, step_pullback, new_state = nn.vjp(model, x, params, state)
        step_pullback(nn.softmax_cross_entropy(logits, y)[1])
        total = clock() - start
        solution = new_state["layer_2"]["solution"]
        nfe, nvjp = solution.nfev, solution.adjoint.nvjp
        as_f.append(1 - (nfe + nvjp) * t_f / total)
        as_own.append(1 - (nfe * t_f + nvjp * t_vjp) / total)
    return statistics.median(as_f), statistics.median(as_own)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    args = parser.parse_args(argv)
    epochs, width = (4, 32) if args.quick else (25, 64)
    data = digits.load_digits_split(0)
    rows = []
    for name, settings in VARIANTS.items():
        model = digits.build_classifier(width, **settings(width))
        start = time.perf_counter()
        params, state, history = digits.train(model, data, epochs=epochs, lr=1e-2, progress=False)
        per_epoch = (time.perf_counter() - start) / epochs
        t_f = f_time(model, params, state, data[0][:64])
        t_vjp = vjp_time(model, params, state, data[0][:64])
        cpu_as_f, cpu_own = cpu_overhead(model, params, state, data[0][:64], data[1][:64])
        fwd_nfe, bwd_nfe = np.mean(history["forward_nfe"]), np.mean(history["backward_nfe"])
        fwd, bwd = np.median(history["forward_time"]), np.median(history["backward_time"])
        overhead = (fwd + bwd - (fwd_nfe + bwd_nfe) * t_f) / (fwd + bwd)
        _, test_state = model(data[2], params, nn.testmode(state))
        rows.append((name, f"{per_epoch:.2f}", f"{fwd_nfe:.1f}", f"{bwd_nfe:.1f}",
                     test_state["layer_2"]["solution"].nfev, f"{history['test_accuracy'][-1]:.4f}",
                     f"{fwd * 1e3:.1f}", f"{bwd * 1e3:.1f}", f"{t_f * 1e3:.3f}", f"{t_vjp * 1e3:.3f}", f"{overhead:.0%}",
                     f"{cpu_as_f:.0%}", f"{cpu_own:.0%}"))
    import numba
    import scipy

    lines = [f"# DEQ variants on digits ({epochs} epochs, width {width}, batch 64, atol = rtol = 1e-3, ≤ 32 steps)", "",
             f"{platform.machine()}, Python {platform.python_version()}, NumPy {np.__version__}, SciPy "
             f"{scipy.__version__}, Numba {numba.__version__}, deqcore {dq.__version__}. Times are medians per batch; "
             "backward NFE counts VJPs of f; overhead = share of forward+backward time not spent in f or its VJPs "
             "(a VJP counted as one f; the measured input VJP, what each adjoint step calls, is shown beside it). "
             "The machine is shared with other work: times are wall-clock medians, indicative. The last two columns "
             "time 15 training steps of the trained model on one batch by the working thread's CPU clock, each "
             "against f and input-VJP blocks timed beside it: the same overhead, and the share outside f and "
             "the VJPs each at its own cost.", "",
             "| model | s / epoch | forward NFE | backward VJPs | test-set NFE | test accuracy | forward ms | "
             "backward ms | one f ms | one VJP ms | overhead | overhead, CPU clock | outside f and VJPs, CPU clock |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = pathlib.Path(__file__).resolve().parent / "results" / ("deq_digits_quick.md" if args.quick else "deq_digits.md")
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
