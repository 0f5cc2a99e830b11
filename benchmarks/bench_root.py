"""Root solvers on batched DEQ maps z = tanh(W z + U x + b): NFE, wall time and overhead per iteration.

Batch 64, width 256, input 128 by default; an easy map (‖W‖₂ = 0.9) and a hard one (spectral radius of W =
1.5); float64 at tolerance 1e-6 and float32 at 1e-5 (1e-6 sits at float32's resolution for |z| ≈ 1). The
overhead is (wall time − time spent inside f) / iterations, in units of one f-evaluation (f is timed inside
each solve, on the solver's own iterates; the validation call fn(y0) counts as overhead). Medians of
repeats; every solver measured side by side in one run.

    python benchmarks/bench_root.py [--quick]
    python benchmarks/bench_root.py --compaction     # active-set compaction: a section of results/root.md
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

    def __call__(self, z, *args):
        start = time.perf_counter()
        out = self.f(z, *args)
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


COMPACTION_SOLVERS = ("Anderson(m=10)", "Broyden", "LimitedMemoryBroyden")
COMPACTION_MARK = "## Active-set compaction"


def run_compaction(batch, width, inputs, repeats, max_steps):
    """Each solver with compact=False and compact=True side by side: the injection Ux + b is passed per sample
    through ``args`` (as compaction requires), so fn can be called on the running rows alone."""
    rows = []
    for dtype, tol in ((np.float64, 1e-6), (np.float32, 1e-5)):
        for kind in ("easy", "hard"):
            W, U, b, x = deq_map_arrays(kind, batch, width, inputs, np.random.default_rng(0))
            Wt = np.ascontiguousarray(W.T.astype(dtype))
            injection = (x @ U.T + b).astype(dtype)
            timed = TimedMap(lambda z, inj: np.tanh(z @ Wt + inj))
            z0 = np.zeros((batch, width), dtype)
            for name in COMPACTION_SOLVERS:
                results = {}
                for compact in (False, True):
                    def solve():
                        timed.seconds, timed.calls = 0.0, 0
                        return dq.fixed_point(timed, z0, SOLVERS[name], args=(injection,), atol=tol, rtol=0.0,
                                              max_steps=max_steps, batched=True, throw=False, compact=compact)

                    solve()  # warm-up
                    walls, f_seconds = [], []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        sol = solve()
                        walls.append(time.perf_counter() - start)
                        f_seconds.append(timed.seconds)
                    results[compact] = (sol, statistics.median(walls), statistics.median(f_seconds))
                (off, wall_off, f_off), (on, wall_on, f_on) = results[False], results[True]
                codes_equal = bool(np.array_equal(off.result, on.result))
                max_change = float(np.abs(off.value.astype(np.float64) - on.value.astype(np.float64)).max())
                rows.append((np.dtype(dtype).name, kind, name, f"{int(on.success.sum())}/{batch}", on.stats["nfev"],
                             off.stats["row_evaluations"], on.stats["row_evaluations"],
                             f"{on.stats['row_evaluations'] / off.stats['row_evaluations']:.2f}",
                             f"{wall_off * 1e3:.1f}", f"{wall_on * 1e3:.1f}", f"{wall_on / wall_off:.2f}",
                             f"{f_off * 1e3:.1f}", f"{f_on * 1e3:.1f}", "yes" if codes_equal else "NO",
                             f"{max_change:.0e}"))
    return rows


def compaction_section(batch, width, inputs, repeats, max_steps=200) -> str:
    rows = run_compaction(batch, width, inputs, repeats, max_steps)
    lines = [COMPACTION_MARK, "",
             f"`fixed_point(..., batched=True, compact=True)` against `compact=False`, same maps, batch {batch}, width "
             f"{width}, tolerances as above (rtol = 0), Ux + b passed per sample through `args`; medians of {repeats} "
             "runs. Row evaluations = rows f was evaluated on, summed over calls (NFE × batch without compaction); "
             "time in f is the part of the wall time spent inside f. Compaction starts once at most half of the "
             "loop's rows still run. The last columns compare the two solves: equal return codes, and the largest "
             "change of a solution value (round-off: f's matrix product on fewer rows rounds differently, and the "
             "iteration carries that to the tolerance's scale at most). Wall times on a shared 2-core machine: "
             "differences of ±20% where no row is dropped (the easy map, every sample converging at the same step) "
             "are noise.", "",
             "| dtype | map | solver | converged | NFE | row evals off | row evals on | ratio | wall ms off | "
             "wall ms on | ratio | f ms off | f ms on | codes equal | max change of z |", "|" + "---|" * 15]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch and fewer repeats")
    parser.add_argument("--compaction", action="store_true",
                        help="measure active-set compaction only (rewrites that section of results/root.md)")
    args = parser.parse_args(argv)
    if args.compaction:
        section = compaction_section(64, 256, 128, 5)
        print(section)
        out = pathlib.Path(__file__).resolve().parent / "results" / "root.md"
        text = out.read_text() if out.exists() else ""
        text = text.split(COMPACTION_MARK)[0].rstrip("\n") + "\n\n" + section
        out.write_text(text)
        return 0
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
