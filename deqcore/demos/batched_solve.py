"""``python -m deqcore demo --solvers``: solve a batched nonlinear system with several solvers, side by side.

The system is the hard DEQ map z = tanh(W z + U x + b) with spectral radius of W = 1.5 (32 independent
systems of 128 unknowns: a modest size, so the demo runs in seconds), then the generalised Rosenbrock root
problem; each row of the table says how many systems converged, the f-evaluations, the largest residual and
the time.
"""

from __future__ import annotations

import time

import numpy as np

import deqcore as dq
from .solve_cli import PROBLEMS
from ..cli import ArgumentParser

__all__ = ["main"]

BATCH, WIDTH = 32, 128


def _row(name, solve, fn, fixed):
    start = time.perf_counter()
    sol = solve()
    elapsed = time.perf_counter() - start
    residual = fn(sol.value) - (sol.value if fixed else 0)
    ok = np.atleast_1d(sol.success)
    return f"| {name} | {int(ok.sum())}/{ok.size} | {sol.stats['nfev']} | {np.abs(residual).max():.1e} | " \
           f"{elapsed * 1e3:.0f} |"


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m deqcore demo --solvers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
    args = parser.parse_args(argv)
    if not 0 < args.atol < float("inf"):           # (NaN fails too)
        parser.error("--atol must be a finite positive number")
    f, z0, _, _ = PROBLEMS["deq"](batch=BATCH, width=WIDTH, inputs=WIDTH // 2)
    header = "| solver | converged | f-evaluations | max residual | ms |\n|---|---|---|---|---|"
    print(f"Hard DEQ map, {BATCH} systems x {WIDTH} unknowns, atol {args.atol:g}\n\n{header}")
    for name, solver in (("FixedPointIteration", dq.FixedPointIteration()), ("Anderson", dq.Anderson()),
                         ("Broyden", dq.Broyden()), ("LimitedMemoryBroyden", dq.LimitedMemoryBroyden()),
                         ("NewtonRaphson (Krylov)", dq.NewtonRaphson())):
        print(_row(name, lambda: dq.fixed_point(f, z0, solver, atol=args.atol, rtol=0.0, max_steps=200, batched=True,
                                                throw=False), f, True))
    fn, y0, _, _ = PROBLEMS["rosenbrock"]()
    print(f"\nGeneralised Rosenbrock, 10 unknowns, from the standard start\n\n{header}")
    for name, solver in (("default (solver=None)", None), ("NewtonRaphson", dq.NewtonRaphson()),
                         ("TrustRegion", dq.TrustRegion()), ("Broyden", dq.Broyden())):
        print(_row(name, lambda: dq.root_find(fn, y0, solver, atol=args.atol, rtol=0.0, max_steps=200, throw=False),
                   fn, False))
    return 0
