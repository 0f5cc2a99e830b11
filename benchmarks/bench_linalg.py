"""Linear solvers side by side: deqcore's batched LU and GMRES against NumPy/SciPy equivalents.

    python benchmarks/bench_linalg.py            # B=64 systems of n=256
    python benchmarks/bench_linalg.py --quick    # B=16, n=64 (well under a minute)

Prints a Markdown table (medians of repeated timings, ratios against deqcore) and writes it to
benchmarks/results/bench_linalg.md with the machine and library versions.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.linalg
import scipy.sparse.linalg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deqcore as dq  # noqa: E402
from deqcore.linalg import GMRES, LU, LinearOperator  # noqa: E402


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def problem(rng, batch, n):
    """I + E with ||E|| about 0.6 (restarted GMRES converges), and right-hand sides."""
    A = np.eye(n) + 0.3 / np.sqrt(n) * rng.standard_normal((batch, n, n))
    return A, rng.standard_normal((batch, n))


def lu_rows(A, b, repeats):
    def ours():
        fac = LU().factor(A)
        return fac.solve(b), fac.solve(b, transpose=True)

    def numpy_solve():
        return (np.linalg.solve(A, b[..., None]), np.linalg.solve(A.swapaxes(1, 2), b[..., None]))

    def scipy_loop():
        out = []
        for Ai, bi in zip(A, b):
            f = scipy.linalg.lu_factor(Ai)
            out.append((scipy.linalg.lu_solve(f, bi), scipy.linalg.lu_solve(f, bi, trans=1)))
        return out

    x, xt = ours()
    ref = np.linalg.solve(A, b[..., None])[..., 0]
    assert np.allclose(x, ref) and np.allclose(xt, np.linalg.solve(A.swapaxes(1, 2), b[..., None])[..., 0])
    base = median_time(ours, repeats)
    return [
        ("LU factor + solve + transpose solve", "deqcore LU (one batched factorisation)", base, 1.0),
        ("", "numpy.linalg.solve twice (no factor reuse)", t := median_time(numpy_solve, repeats), t / base),
        ("", "scipy lu_factor/lu_solve, loop over B", t := median_time(scipy_loop, repeats), t / base),
    ]


def gmres_rows(A, b, restart, repeats):
    batch, n = b.shape
    rtol = 1e-8
    op = LinearOperator.from_matrix(A)
    solver = GMRES(rtol=rtol, restart=restart)
    sol = solver.solve(op, b)
    assert np.all(sol.success)
    steps = sol.stats["num_steps"]

    def ours():
        return solver.solve(op, b)

    def scipy_loop():
        out = []
        for Ai, bi in zip(A, b):
            x, info = scipy.sparse.linalg.gmres(Ai, bi, rtol=rtol, atol=0.0, restart=restart)
            assert info == 0
            out.append(x)
        return out

    def matvecs_only():
        v = b
        for _ in range(steps):
            v = op.matvec(v)

    base = median_time(ours, repeats)
    t_matvec = median_time(matvecs_only, repeats)
    overhead_ms = (base - t_matvec) / steps * 1e3
    return [
        (f"GMRES({restart}) rtol={rtol:g}", f"deqcore GMRES, batched ({steps} shared matvecs)", base, 1.0),
        ("", "scipy.sparse.linalg.gmres, loop over B", t := median_time(scipy_loop, repeats), t / base),
        ("", f"  of which deqcore's {steps} batched matvecs", t_matvec, t_matvec / base),
        ("", f"  deqcore overhead per Arnoldi step outside the matvec: {overhead_ms:.3f} ms", None, None),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--restart", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    batch = args.batch or (16 if args.quick else 64)
    n = args.n or (64 if args.quick else 256)
    repeats = args.repeats or (3 if args.quick else 7)

    rng = np.random.default_rng(0)
    A, b = problem(rng, batch, n)
    rows = lu_rows(A, b, repeats) + gmres_rows(A, b, args.restart, repeats)

    lines = [
        f"# bench_linalg: B={batch} systems of n={n}, float64, median of {repeats}",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared; timings are noisy); "
        f"Python {platform.python_version()}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
        f"deqcore {dq.__version__}",
        "",
        "| problem | method | median time (ms) | ratio vs deqcore |",
        "|---|---|---:|---:|",
    ]
    for prob, method, t, ratio in rows:
        t_s = "" if t is None else f"{t * 1e3:.2f}"
        r_s = "" if ratio is None else f"{ratio:.2f}"
        lines.append(f"| {prob} | {method} | {t_s} | {r_s} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(__file__).resolve().parent / "results" / ("bench_linalg_quick.md" if args.quick else "bench_linalg.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)


if __name__ == "__main__":
    main()
