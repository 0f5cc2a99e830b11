"""Active-set compaction in the DEQ models: ``compact=True`` against ``compact=False``, side by side in one run.

Two workloads, each solved by the same model twice (the two settings alternate within every repeat, so both
meet the same machine load):

* the DEQ maps z = tanh(W z + U x + b) of ``deq_maps.py`` (easy: ‖W‖₂ = 0.9; hard: spectral radius 1.5) as a
  ``dq.DeepEquilibriumNetwork`` on the injection U x + b, batch 64, width 256, input 128; float64 at tolerance
  1e-6 and float32 at 1e-5 (rtol = 0), at most 200 steps;
* the digits classifier of ``deqcore.demos.digits`` (width 64) after a few epochs of training: its DEQ layer on a
  training batch of 64 (training-mode state, the demo's tolerances 1e-3 and 32 steps) and on the 450 test
  images (inference state, the demo's tolerances, and 1e-6 with 100 steps).

Columns: NFE (f-evaluations of the solve), row evaluations (rows f was evaluated on, summed over calls: NFE × batch
without compaction), forward time of the DEQ layer (medians), whether the return codes agree and the largest
change of the solution. Writes ``results/compaction.md``.

    python benchmarks/bench_compaction.py [--quick]
"""

from __future__ import annotations

import argparse
import os

# Single-threaded BLAS: the benchmark machine is shared, and a multi-threaded OpenBLAS under contention makes
# one f-evaluation 5-20x slower and erratic. Set before NumPy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

import deqcore as dq  # noqa: E402
from deqcore import nn  # noqa: E402
from deq_maps import deq_map_arrays  # noqa: E402

SOLVERS = {"Anderson": dq.Anderson, "Broyden": dq.Broyden, "LimitedMemoryBroyden": dq.LimitedMemoryBroyden}


def _twins(model_of):
    """The same DEQ with compact=False and compact=True."""
    return {compact: model_of(compact) for compact in (False, True)}


def measure(twins, x, params, state, repeats):
    """Per setting: (solution, median forward seconds by the wall clock, and by the thread's CPU clock); the
    settings alternate within each repeat. With single-threaded BLAS and Numba loops all the work runs on this
    thread, so the CPU clock leaves out the time spent waiting for the shared cores."""
    times = {False: [], True: []}
    cpu = {False: [], True: []}
    solutions = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "the forward solve of", RuntimeWarning)
        for compact, model in twins.items():          # warm-up (kernel compilation, caches)
            model(x, params, state)
        for _ in range(repeats):
            for compact, model in twins.items():
                start, start_cpu = time.perf_counter(), time.thread_time()
                _, out = model(x, params, state)
                cpu[compact].append(time.thread_time() - start_cpu)
                times[compact].append(time.perf_counter() - start)
                solutions[compact] = out["solution"]
    # the ratios are medians of the paired ratios (one pair per repeat, run back to back): a change of the
    # machine's load between repeats then cancels
    ratios = (statistics.median(a / b for a, b in zip(times[True], times[False])),
              statistics.median(a / b for a, b in zip(cpu[True], cpu[False])))
    return {c: (solutions[c], statistics.median(times[c])) for c in (False, True)}, ratios


def f_cost(model, x, params, state, repeats=40):
    """(ms of one f on every row, ms on a quarter of the rows): CPU-clock medians of the DEQ's own f at its
    fixed point. How much a dropped row saves: f's cost per call that does not scale with the rows stays."""
    z = state["solution"].z_star
    cost = []
    for rows in (x.shape[0], max(1, x.shape[0] // 4)):
        args = ((z[:rows], x[:rows]), params["model"], state["model"])
        model.model(*args)
        times = []
        for _ in range(repeats):
            start = time.thread_time()
            model.model(*args)
            times.append(time.thread_time() - start)
        cost.append(statistics.median(times) * 1e3)
    return cost


def row(label, batch, measured, cost):
    results, (ratio, ratio_cpu) = measured
    (off, t_off), (on, t_on) = results[False], results[True]
    s_off, s_on = off.original.stats, on.original.stats
    z_off, z_on = (np.asarray(s.z_star, dtype=np.float64) for s in (off, on))
    return (*label, f"{int(np.sum(on.success))}/{batch}", s_on["nfev"], s_off["row_evaluations"],
            s_on["row_evaluations"], f"{s_on['row_evaluations'] / s_off['row_evaluations']:.2f}",
            f"{t_off * 1e3:.1f}", f"{t_on * 1e3:.1f}", f"{ratio:.2f}", f"{ratio_cpu:.2f}",
            f"{cost[0]:.3f} / {cost[1]:.3f}", "yes" if np.array_equal(off.result, on.result) else "NO",
            f"{np.abs(z_off - z_on).max():.0e}")


def map_rows(batch, width, inputs, repeats, max_steps=200):
    """The easy and hard maps as DEQ models, per dtype and solver."""
    cell = nn.Chain(nn.Parallel(nn.add, nn.Dense(width, width, use_bias=False), nn.NoOpLayer()),
                    nn.Activation("tanh"))
    rows = []
    for dtype, tol in ((np.float64, 1e-6), (np.float32, 1e-5)):
        for kind in ("easy", "hard"):
            W, U, b, x = deq_map_arrays(kind, batch, width, inputs, np.random.default_rng(0))
            injection = (x @ U.T + b).astype(dtype)
            for name, solver in SOLVERS.items():
                twins = _twins(lambda compact: dq.DeepEquilibriumNetwork(
                    cell, solver(), atol=tol, rtol=0.0, max_steps=max_steps, compact=compact))
                params, state = nn.setup(np.random.default_rng(0), twins[False], dtype=dtype)
                params["model"]["layer_1"]["layer_1"]["weight"] = W.astype(dtype)
                results = measure(twins, injection, params, state, repeats)
                _, out = twins[False](injection, params, state)
                rows.append(row((np.dtype(dtype).name, kind, name), batch, results,
                                f_cost(twins[False], injection, params, out)))
    return rows


def digits_rows(epochs, repeats):
    """The trained digits classifier's DEQ layer: a training batch and the test set."""
    from deqcore.demos import digits

    data = digits.load_digits_split(0)
    model = digits.build_classifier(64, dq.Anderson())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        params, state, history = digits.train(model, data, epochs=epochs, progress=False)
    encoder, deq = model.layers[0], model.layers[1]
    x_train, _, x_test, _ = data
    cases = [("training batch (train mode)", x_train[:64], state, deq.atol, deq.max_steps),
             ("test set (inference)", x_test, nn.testmode(state), deq.atol, deq.max_steps),
             ("test set (inference)", x_test, nn.testmode(state), 1e-6, 100)]
    rows = []
    for label, x, st, tol, max_steps in cases:
        injection, _ = encoder(x, params["layer_1"], st["layer_1"])
        twins = _twins(lambda compact: dq.DeepEquilibriumNetwork(deq.model, deq.solver, atol=tol, rtol=tol,
                                                                 max_steps=max_steps, compact=compact))
        results = measure(twins, injection, params["layer_2"], st["layer_2"], repeats)
        _, out = twins[False](injection, params["layer_2"], st["layer_2"])
        rows.append(row((label, f"{tol:g}, {max_steps}"), x.shape[0], results,
                        f_cost(twins[False], injection, params["layer_2"], out)))
    return rows, history["test_accuracy"][-1]


HEADER = ("| converged | NFE | row evals off | row evals on | ratio | forward ms off | forward ms on | ratio | "
          "ratio, CPU clock | one f ms: all rows / a quarter | codes equal | max change of z* |")


def table(columns, rows):
    head = "| " + " | ".join(columns) + " " + HEADER
    sep = "|" + "---|" * (len(columns) + 12)
    return [head, sep] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


NOTES = """\
* Compaction saves work only where the samples of a batch converge at different speeds: the driver drops the
  finished rows once at most half of them still run (so the gathers happen at most log2(batch) times), and from
  then on f, the solver's step and the bookkeeping run on the remaining rows. A batch whose samples finish within
  a step or two of each other (the easy map) never compacts; its cost is then unchanged (the rows above with a
  row ratio of 1.00 differ only by the machine's noise).
* What a dropped row saves is its share of a step's cost (f, the solver's update, the bookkeeping). That share is
  large where the cost scales with the rows (width 256; the 450-image test set) and small where a step costs
  mostly fixed per-call work: on the digits DEQ's training batch of 64, one f on a quarter of the rows still
  costs over half of one on all of them, and the solver's and the driver's per-step work (of the order of one f
  at this size) barely shrinks with the rows either, so the row ratio does not turn into time there. The gather
  of x's rows for every call (x reaches f per sample) is part of that fixed cost.
* Results agree with the uncompacted solve to round-off and with the same codes in every row above; the
  gradients (the adjoint still runs on every row) are the same to round-off (tests/test_models_compaction.py).
* Not compacted: the adjoint (backward) solve, ODE solvers (refused), Newton and TrustRegion (accepted, nothing
  dropped), and a call in which a layer couples the samples (BatchNorm or Dropout in training mode: it warns and
  solves every row).
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and epochs; prints, writes nothing")
    args = parser.parse_args(argv)
    repeats, epochs = (3, 2) if args.quick else (21, 10)
    maps = map_rows(64, 256, 128, repeats)
    digit_rows, accuracy = digits_rows(epochs, repeats)
    import numba
    import scipy

    lines = [
        "# Active-set compaction in the DEQ models (`compact=True`)", "",
        f"{platform.machine()}, Python {platform.python_version()}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
        f"Numba {numba.__version__}, deqcore {dq.__version__}; OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS')}; written by `benchmarks/bench_compaction.py`. Each model is "
        f"solved with `compact=False` and `compact=True` back to back, {repeats} times; times are wall-clock medians "
        f"of the DEQ layer's forward call on a shared 2-core machine; the ratios are medians of the {repeats} paired "
        "ratios, by the wall clock and by the working thread's CPU clock (all the work runs on it: BLAS and the "
        "Numba loops are single-threaded), which leaves out waiting for the cores. Other processes shared the "
        "cores: ratios within about ±15% of 1 are noise. Row evals = "
        "rows f was evaluated on, summed over calls (NFE × batch without compaction). The driver compacts once at "
        "most half of the rows still run, so a batch whose samples finish together never compacts. The last two "
        "columns compare the solves: the same return codes, and the largest change of z* (round-off: f's products "
        "on fewer rows round differently, and the iteration carries that up to the tolerance's scale at most). "
        "\"One f\" is the DEQ's f on all the batch's rows and on a quarter of them (CPU clock): what a dropped row "
        "can save.", "",
        "## DEQ maps z = tanh(W z + U x + b) as `dq.DeepEquilibriumNetwork` (batch 64, width 256, input 128)", "",
        *table(("dtype", "map", "solver"), maps), "",
        f"## Digits classifier (`deqcore.demos.digits`, width 64, Anderson, {epochs} epochs: test accuracy "
        f"{accuracy:.3f})", "",
        *table(("batch", "tolerance, max steps"), digit_rows), "",
        "## When it pays", "",
        NOTES,
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        out = pathlib.Path(__file__).resolve().parent / "results" / "compaction.md"
        out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
