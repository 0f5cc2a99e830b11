"""``python -m deqcore solve``: solve a built-in problem, or ``fn`` from your own Python file.

A file passed with ``--file`` must define ``fn(y)`` (a root problem fn(y) = 0, or with ``--fixed-point`` a map
whose fixed point y = fn(y) is wanted) and ``y0`` (the start point, a NumPy array); it may define
``batched = True`` when the leading axis of y0 holds independent systems.

With ``--batch N`` the built-in DEQ map is solved for N samples in chunks on Dask (``pip install
deqcore[dask]``): on the local threaded scheduler, on ``--workers K`` local worker processes, or on the cluster
at ``--scheduler ADDRESS``; a progress bar runs and the summary gives the return codes and the throughput.

Examples::

    python -m deqcore solve --problem deq --solver anderson --atol 1e-8
    python -m deqcore solve --file my_problem.py --solver newton --max-steps 100
    python -m deqcore solve --batch 1000000 --width 64 --workers 2 --atol 1e-6
"""

from __future__ import annotations

import runpy
import time

import numpy as np

from .problems import PROBLEMS as CLASSIC
from ..cli import ArgumentParser

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
    except (SyntaxError, ImportError, OSError) as err:    # not Python, a folder, unreadable, a missing import
        parser.error(f"--file {path!r} cannot be run: {type(err).__name__}: {err}")
    if not callable(namespace.get("fn")):
        parser.error(f"--file {path!r} must define a function fn(y)")
    if "y0" not in namespace:
        parser.error(f"--file {path!r} must define the start point y0")
    try:
        y0 = np.asarray(namespace["y0"])
        if y0.dtype not in (np.float32, np.float64):      # (a float32 y0 stays float32, as fn computes in it)
            y0 = y0.astype(float)
    except (TypeError, ValueError) as err:
        parser.error(f"--file {path!r}: y0 must be an array of numbers ({err})")
    return namespace["fn"], y0, bool(namespace.get("batched", False))


def build_parser():
    parser = ArgumentParser(prog="python -m deqcore solve", description=__doc__.split("\n\n")[0],
                            epilog="Built-in problems: " + ", ".join(PROBLEMS))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--problem", choices=sorted(PROBLEMS), default=None, help="a built-in problem (default deq)")
    source.add_argument("--file", help="a Python file defining fn(y) and y0 (and optionally batched = True)")
    parser.add_argument("--fixed-point", action="store_true", help="the file's fn is a map: solve y = fn(y)")
    parser.add_argument("--solver", choices=SOLVER_NAMES, default="default",
                        help="the solver (default: Anderson for fixed points, a robust sequence for roots)")
    parser.add_argument("--atol", type=float, default=1e-8, help="absolute tolerance (default 1e-8)")
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default 0)")
    parser.add_argument("--max-steps", type=int, default=200, help="iteration limit (default 200)")
    scale = parser.add_argument_group("many samples on Dask (the built-in deq map)")
    scale.add_argument("--batch", type=int, help="number of samples, solved in chunks on Dask")
    scale.add_argument("--width", type=int, default=None, help="state width of the deq map (default 256)")
    scale.add_argument("--chunk-size", type=int, default=None, help="samples per chunk (default 16384)")
    where = scale.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="start this many local worker processes (a LocalCluster)")
    where.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    return parser


def main(argv=None) -> int:
    import deqcore as dq

    parser = build_parser()
    args = parser.parse_args(argv)
    if not (0 <= args.atol < float("inf") and 0 <= args.rtol < float("inf")):     # (NaN fails too)
        parser.error("--atol and --rtol must be finite numbers >= 0")
    if args.max_steps < 1:
        parser.error("--max-steps must be a positive integer")
    if args.batch is not None or args.workers is not None or args.scheduler is not None:
        return _main_dask(args, parser)
    for flag, value in (("--width", args.width), ("--chunk-size", args.chunk_size)):
        if value is not None:
            parser.error(f"{flag} sizes the Dask solve of the deq map: it needs --batch N")
    if args.fixed_point and not args.file:
        parser.error("--fixed-point says what the --file's fn is; the built-in problems know what they are")
    if args.file:
        fn, y0, batched = _from_file(args.file, parser)
        fixed = args.fixed_point
        label = args.file
    else:
        label = args.problem or "deq"
        fn, y0, batched, fixed = PROBLEMS[label]()
    solver = _solver(args.solver)
    options = dict(atol=args.atol, rtol=args.rtol, max_steps=args.max_steps, batched=batched, throw=False)
    start = time.perf_counter()
    try:
        if fixed:
            sol = dq.fixed_point(fn, y0, dq.Anderson() if solver is None else solver, **options)
        else:
            sol = dq.root_find(fn, y0, solver, **options)
    except (TypeError, ValueError) as err:
        if not args.file:
            raise
        parser.error(f"--file {args.file!r}: {err}")      # what the file defines is refused in one line
    residual = np.abs(fn(sol.value) - sol.value).max() if fixed else np.abs(fn(sol.value)).max()
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


def _main_dask(args, parser):
    """``--batch``: the deq map for many samples, chunked on Dask; prints codes and throughput."""
    if args.batch is None:
        parser.error("--workers and --scheduler need --batch N")
    if args.file or args.fixed_point:
        parser.error("--batch solves the built-in deq map; --file is not supported with it")
    if args.problem not in (None, "deq"):
        parser.error(f"--batch solves the built-in deq map; --problem {args.problem} is not supported with it")
    args.width = 256 if args.width is None else args.width
    args.chunk_size = 16384 if args.chunk_size is None else args.chunk_size
    for flag, value in (("--batch", args.batch), ("--width", args.width), ("--chunk-size", args.chunk_size),
                        ("--workers", 1 if args.workers is None else args.workers)):
        if value < 1:
            parser.error(f"{flag} must be a positive integer")
    try:
        import dask.array as da

        import deqcore.dask as dqd
    except ImportError:
        parser.error("--batch needs dask: pip install deqcore[dask]")
    import deqcore as dq

    fn, W, U, b = _deq_map_for_chunks(args.width)
    chunks = (min(args.chunk_size, args.batch), args.width)
    x = da.random.default_rng(0).standard_normal((args.batch, U.shape[1]), chunks=(chunks[0], U.shape[1]))
    solver = _solver(args.solver)
    lazy = dqd.fixed_point(fn, da.zeros((args.batch, args.width), chunks=chunks),
                           dq.Anderson() if solver is None else solver, args=(x, W, U, b), atol=args.atol,
                           rtol=args.rtol, max_steps=args.max_steps)
    summary = [da.bincount(lazy.result, minlength=len(dq.ReturnCode)), lazy.residual.max(), lazy.stats]
    start = time.perf_counter()
    where = _run_summary(summary, args, parser)
    (counts, worst, stats), label = where
    elapsed = time.perf_counter() - start
    total = _sum(stats, "nfev")
    print(f"problem: deq map, {args.batch} samples of width {args.width} in {lazy.num_chunks} chunks of "
          f"{chunks[0]} ({label})")
    print("codes: " + ", ".join(f"{dq.ReturnCode(i).name} {int(c)}" for i, c in enumerate(counts) if c))
    print(f"max residual: {worst:.3e}; f-evaluations (summed over chunks): {total}")
    print(f"time: {elapsed:.2f} s; throughput: {args.batch / elapsed:,.0f} samples/s")
    return 0 if counts[0] == args.batch else 1


def _sum(stats, key):
    return int(sum(s.get(key, 0) for s in stats))


def _deq_map_for_chunks(width, inputs=32, radius=0.9, seed=0):
    """z = tanh(W z + U x + b) with ρ(W) = ``radius``; every piece a plain NumPy argument (picklable)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((width, width))
    W *= radius / np.max(np.abs(np.linalg.eigvals(W)))
    U = rng.standard_normal((width, inputs)) / np.sqrt(inputs)
    b = 0.1 * rng.standard_normal(width)
    return deq_map, W, U, b


def deq_map(z, x, W, U, b):
    """One chunk of the DEQ map: tanh(z Wᵀ + x Uᵀ + b)."""
    return np.tanh(z @ W.T + (x @ U.T + b))


def _run_summary(parts, args, parser):
    """Compute ``parts`` with a progress bar where ``args`` says; returns (values, label). A scheduler address
    that is malformed or cannot be reached is a one-line usage error naming --scheduler."""
    if args.workers is None and args.scheduler is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar(dt=0.5):
            import dask

            return dask.compute(*parts, scheduler="threads"), "dask threads, this process"
    from distributed import Client, LocalCluster, progress

    if args.scheduler is not None:
        try:
            client = Client(args.scheduler)
        except (OSError, ValueError, TypeError) as err:     # (distributed's timeout is an OSError)
            parser.error(f"--scheduler {args.scheduler!r}: cannot connect to a Dask scheduler there ({err})")
        cluster, label = None, f"cluster at {args.scheduler}"
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None)
        client, label = Client(cluster), f"{args.workers} local worker processes"
    try:
        futures = client.compute(parts)
        progress(futures)
        print()
        return client.gather(futures), label
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
