"""``python -m deqcore solve``: solve a built-in problem, or ``fn`` from your own Python file.

A file passed with ``--file`` must define ``fn(y)`` (a root problem fn(y) = 0, or with ``--fixed-point`` a map
whose fixed point y = fn(y) is wanted) and ``y0`` (the start point, a NumPy array); it may define
``batched = True`` when the leading axis of y0 holds independent systems.

Examples::

    python -m deqcore solve --problem deq --solver anderson --atol 1e-8
    python -m deqcore solve --file my_problem.py --solver newton --max-steps 100
"""

from __future__ import annotations

import argparse
import runpy
import time

import numpy as np

from .problems import PROBLEMS as CLASSIC

__all__ = ["main", "PROBLEMS", "SOLVER_NAMES"]

SOLVER_NAMES = ("default", "newton", "newton_krylov", "trust_region", "broyden", "lbroyden", "anderson",
                "fixed_point")


def _solver(name):
    import deqcore as dq

    return {
        "default": None,
        "newton": dq.NewtonRaphson(),
        "newton_krylov": dq.NewtonRaphson(linear_solver=dq.GMRES()),
        "trust_region": dq.TrustRegion(),
        "broyden": dq.Broyden(),
        "lbroyden": dq.LimitedMemoryBroyden(),
        "anderson": dq.Anderson(),
        "fixed_point": dq.FixedPointIteration(),
    }[name]


def _deq_problem(batch=64, width=256, inputs=128, radius=1.5, seed=0):
    """The batched DEQ map z = tanh(W z + U x + b) with spectral radius of W = ``radius`` (fixed point)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((width, width))
    W *= radius / np.max(np.abs(np.linalg.eigvals(W)))
    U = rng.standard_normal((width, inputs)) / np.sqrt(inputs)
    b = 0.1 * rng.standard_normal(width)
    x = rng.standard_normal((batch, inputs))
    injection = x @ U.T + b
    return (lambda z: np.tanh(z @ W.T + injection)), np.zeros((batch, width)), True, True


#: name -> builder returning (fn, y0, batched, is_fixed_point)
PROBLEMS = {"deq": _deq_problem}
PROBLEMS.update({name: (lambda build: lambda: (*build(), False, False))(build) for name, build in CLASSIC.items()})


def _from_file(path, parser):
    try:
        namespace = runpy.run_path(path)
    except FileNotFoundError:
        parser.error(f"--file {path!r} does not exist")
    if not callable(namespace.get("fn")):
        parser.error(f"--file {path!r} must define a function fn(y)")
    if "y0" not in namespace:
        parser.error(f"--file {path!r} must define the start point y0")
    y0 = np.asarray(namespace["y0"], dtype=float)
    return namespace["fn"], y0, bool(namespace.get("batched", False))


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m deqcore solve", description=__doc__.split("\n\n")[0],
                                     epilog="Built-in problems: " + ", ".join(PROBLEMS))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--problem", choices=sorted(PROBLEMS), default="deq", help="a built-in problem (default deq)")
    source.add_argument("--file", help="a Python file defining fn(y) and y0 (and optionally batched = True)")
    parser.add_argument("--fixed-point", action="store_true", help="the file's fn is a map: solve y = fn(y)")
    parser.add_argument("--solver", choices=SOLVER_NAMES, default="default",
                        help="the solver (default: Anderson for fixed points, a robust sequence for roots)")
    parser.add_argument("--atol", type=float, default=1e-8, help="absolute tolerance (default 1e-8)")
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default 0)")
    parser.add_argument("--max-steps", type=int, default=200, help="iteration limit (default 200)")
    return parser


def main(argv=None) -> int:
    import deqcore as dq

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.atol < 0 or args.rtol < 0:
        parser.error("--atol and --rtol must be >= 0")
    if args.max_steps < 1:
        parser.error("--max-steps must be a positive integer")
    if args.file:
        fn, y0, batched = _from_file(args.file, parser)
        fixed = args.fixed_point
        label = args.file
    else:
        fn, y0, batched, fixed = PROBLEMS[args.problem]()
        label = args.problem
    solver = _solver(args.solver)
    options = dict(atol=args.atol, rtol=args.rtol, max_steps=args.max_steps, batched=batched, throw=False)
    start = time.perf_counter()
    if fixed:
        sol = dq.fixed_point(fn, y0, dq.Anderson() if solver is None else solver, **options)
        residual = np.abs(fn(sol.value) - sol.value).max()
    else:
        sol = dq.root_find(fn, y0, solver, **options)
        residual = np.abs(fn(sol.value)).max()
    elapsed = time.perf_counter() - start
    success = np.atleast_1d(sol.success)
    print(f"problem: {label} ({'fixed point' if fixed else 'root'}, {y0.size} unknowns"
          f"{f', {y0.shape[0]} systems' if batched else ''})")
    print(f"solver: {args.solver}; converged: {int(success.sum())}/{success.size}; steps: "
          f"{sol.stats.get('num_steps')}; f-evaluations: {sol.stats.get('nfev')}; time: {elapsed * 1e3:.1f} ms")
    print(f"max residual: {residual:.3e}")
    if not success.all():
        print(sol.failure_message())
        return 1
    return 0
