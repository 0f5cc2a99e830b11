"""Root solvers on batched DEQ maps z = tanh(W z + U x + b): NFE, wall time and overhead per iteration.

Batch 64, width 256, input 128 by default; an easy map (‖W‖₂ = 0.9) and a hard one (spectral radius of W =
1.5); float64 at tolerance 1e-6 and float32 at 1e-5 (1e-6 sits at float32's resolution for |z| ≈ 1). The
overhead is (wall time − time spent inside f) / iterations, in units of one f-evaluation (f is timed inside
each solve, on the solver's own iterates; the validation call fn(y0) counts as overhead). Medians of
repeats; every solver measured side by side in one run.

    python benchmarks/bench_root.py [--quick]
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

import numpy as np  # noqa: E402

import deqcore as dq  # noqa: E402
from deq_maps import deq_map_arrays  # noqa: E402


def make_map(kind, batch, width, inputs, dtype, seed=0):
    W, U, b, x = deq_map_arrays(kind, batch, width, inputs, np.random.default_rng(seed))
    Wt = np.ascontiguousarray(W.T.astype(dtype))
    injection = (x @ U.T + b).astype(dtype)

    def f(z):
        return np.tanh(z @ Wt + injection)

    return f, np.zeros((batch, width), dtype)


SOLVERS = {
    "FixedPointIteration": dq.FixedPointIteration(),
    "Anderson(m=5)": dq.Anderson(history_size=5),
    "Anderson(m=10)": dq.Anderson(history_size=10),
    "Anderson(m=20)": dq.Anderson(history_size=20),
    "Broyden": dq.Broyden(),
    "LimitedMemoryBroyden": dq.LimitedMemoryBroyden(),
    "NewtonRaphson (Newton–Krylov)": dq.NewtonRaphson(),
}


class TimedMap:
    """The map with a stopwatch: the time spent inside f during a solve, so the overhead is wall − f time."""

    def __init__(self, f):
        self.f, self.seconds, self.calls = f, 0.0, 0

    def __call__(self, z):
        start = time.perf_counter()
        out = self.f(z)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def run(batch, width, inputs, repeats, max_steps):
    rows = []
    for dtype, tol in ((np.float64, 1e-6), (np.float32, 1e-5)):
        for kind in ("easy", "hard"):
            f, z0 = make_map(kind, batch, width, inputs, dtype)
            for name, solver in SOLVERS.items():
                timed = TimedMap(f)

                def solve():
                    timed.seconds, timed.calls = 0.0, 0
                    return dq.fixed_point(timed, z0, solver, atol=tol, rtol=0.0, max_steps=max_steps, batched=True,
                                          throw=False)

                solve()  # warm-up (Numba compilation, caches)
                walls, overheads, f_times = [], [], []
                for _ in range(repeats):
                    start = time.perf_counter()
                    sol = solve()
                    wall = time.perf_counter() - start
                    t_f = timed.seconds / timed.calls
                    walls.append(wall)
                    f_times.append(t_f)
                    overheads.append((wall - timed.seconds) / max(sol.stats["num_steps"], 1) / t_f)
                rows.append((np.dtype(dtype).name, kind, name, f"{int(sol.success.sum())}/{batch}", sol.stats["nfev"],
                             f"{float(np.max(sol.residual)):.1e}", f"{statistics.median(walls) * 1e3:.1f}",
                             f"{statistics.median(f_times) * 1e3:.3f}", f"{statistics.median(overheads):.2f}"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch and fewer repeats")
    args = parser.parse_args(argv)
    batch, width, inputs, repeats = (16, 128, 64, 3) if args.quick else (64, 256, 128, 5)
    rows = run(batch, width, inputs, repeats, max_steps=200)
    import numba
    import scipy

    header = [f"# Root solvers on DEQ maps (batch {batch}, width {width}, input {inputs})", "",
              f"{platform.machine()}, {platform.python_version()}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
              f"Numba {numba.__version__}, deqcore {dq.__version__}; OPENBLAS_NUM_THREADS="
              f"{os.environ['OPENBLAS_NUM_THREADS']}; medians of {repeats} runs; max 200 steps; tolerance atol = 1e-6 "
              "(float64) and 1e-5 (float32: 1e-6 is at float32's resolution for |z| ~ 1), rtol = 0.", "",
              "| dtype | map | solver | converged | NFE | max residual | wall ms | one f ms | "
              "overhead per iteration (f-evals) |", "|---|---|---|---|---|---|---|---|---|"]
    text = "\n".join(header + ["| " + " | ".join(map(str, row)) + " |" for row in rows]) + "\n"
    print(text)
    out = pathlib.Path(__file__).resolve().parent / "results" / ("root_quick.md" if args.quick else "root.md")
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
