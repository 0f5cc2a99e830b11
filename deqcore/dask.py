"""Batched solves on Dask: the batch axis cut into chunks, each chunk solved batched on a worker.

``pip install deqcore[dask]`` (dask[array] + distributed). The rest of deqcore works without it.

Each function takes ``y0`` as a dask array chunked along axis 0 (a NumPy array is cut into ``chunk_size``
rows), solves every chunk with the in-process batched solver (``dq.fixed_point(..., batched=True)`` and so on)
and returns a :class:`LazySolution`: ``value``, ``result`` and ``residual`` are dask arrays, nothing has run
yet, and ``compute()`` gives an ordinary :class:`dq.Solution` with the chunks' stats summed.

Arguments in ``args``: a dask array is per-sample data (its leading axis is the batch; it is rechunked to
``y0``'s chunks); anything else (NumPy weights, scalars) is shared and sent whole with every chunk.

Where it runs: ``compute()`` with no ``scheduler`` uses dask's default (the active ``distributed.Client`` if
there is one, else the local threaded scheduler); ``scheduler=client`` or ``scheduler="tcp://host:8786"``
runs on that cluster. ``fn`` travels to the workers by cloudpickle; a function that cannot be pickled is
refused up front with a TypeError. Samples are independent, so chunking never changes a sample's result:
each equals the in-process batched solve of the whole batch, and a chunk lost with a worker is recomputed.

>>> import numpy as np, dask.array as da, deqcore.dask as dqd
>>> x = da.from_array(np.linspace(0.0, 1.0, 6).reshape(6, 1), chunks=2)
>>> lazy = dqd.fixed_point(lambda z, x: 0.5 * np.cos(z) + x, da.zeros((6, 1), chunks=2), args=(x,),
...                        atol=1e-12, rtol=0.0)
>>> lazy.value.chunks[0], lazy.num_chunks
((2, 2, 2), 3)
>>> sol = lazy.compute(scheduler="sync")
>>> sol.success.all(), sol.stats["num_chunks"]
(np.True_, 3)
>>> bool(np.allclose(sol.value, 0.5 * np.cos(sol.value) + np.linspace(0, 1, 6)[:, None], atol=1e-10))
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .results import Solution

try:
    import cloudpickle
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError("deqcore.dask needs dask: pip install deqcore[dask]") from exc

__all__ = ["fixed_point", "root_find", "steady_state", "integrate", "LazySolution"]

_DEFAULT_CHUNK = 65_536


@dataclass
class LazySolution:
    """A batched solve not yet run: per-sample dask arrays and the chunks' stats (delayed).

    Attributes:
        value: dask array shaped like ``y0`` (the solution, or the best iterate where a sample failed).
        result: dask int64 array ``(B,)`` of :class:`dq.ReturnCode` values.
        residual: dask array ``(B,)`` of final residual norms (None for :func:`integrate`).
        stats: list of delayed per-chunk stats dicts.
    """

    value: Any
    result: Any
    residual: Any
    stats: list

    @property
    def num_chunks(self) -> int:
        return len(self.stats)

    def compute(self, scheduler=None, **compute_kwargs) -> Solution:
        """Run the solve and gather it into one :class:`dq.Solution` (``batched=True``, stats summed).

        ``scheduler``: None (dask's default), a ``distributed.Client``, a scheduler address
        (``"tcp://host:8786"``) or a dask scheduler name (``"threads"``, ``"sync"``, ``"processes"``).
        """
        parts = (self.value, self.result, self.residual, self.stats)
        value, result, residual, stats = _compute(parts, scheduler, compute_kwargs)
        return Solution(value, result, _sum_stats(stats), residual, batched=True)


def _compute(parts, scheduler, kwargs):
    if isinstance(scheduler, str) and "://" in scheduler:
        from distributed import Client

        with Client(scheduler) as client:
            return client.compute(list(parts), sync=True)
    if scheduler is not None and hasattr(scheduler, "compute") and hasattr(scheduler, "scheduler_info"):
        return scheduler.compute(list(parts), sync=True)
    if scheduler is not None and not isinstance(scheduler, str):
        raise TypeError("scheduler must be None, a distributed.Client, an address 'tcp://host:port' or a dask "
                        f"scheduler name; got {type(scheduler).__name__}")
    return dask.compute(*parts, scheduler=scheduler, **kwargs)


def _sum_stats(stats):
    """Scalars summed over chunks; per-sample arrays concatenated; ``num_chunks`` added."""
    total: dict = {"num_chunks": len(stats)}
    for key in stats[0] if stats else ():
        values = [s[key] for s in stats if key in s]
        if all(np.ndim(v) == 0 and isinstance(v, (int, float, np.number)) for v in values):
            total[key] = sum(values)
        elif all(np.ndim(v) == 1 for v in values):
            total[key] = np.concatenate([np.asarray(v) for v in values])
    return total


def _check_picklable(obj, name):
    try:
        cloudpickle.dumps(obj)
    except Exception as exc:  # cloudpickle raises PicklingError, TypeError, AttributeError ...
        raise TypeError(f"{name} cannot be sent to dask workers: cloudpickle failed ({type(exc).__name__}: "
                        f"{exc}). Define it so that it holds no open files, locks, sockets or live "
                        "device handles (e.g. a module-level function taking its data through args).") from exc


def _as_dask_batch(y0, chunk_size):
    if isinstance(y0, da.Array):
        if y0.ndim < 1:
            raise ValueError("y0 must have a leading batch axis")
        if chunk_size is not None:
            y0 = y0.rechunk({0: chunk_size})
        return y0.rechunk({i: -1 for i in range(1, y0.ndim)})
    if not hasattr(y0, "shape") or not hasattr(y0, "dtype"):
        raise TypeError(f"y0 must be a dask or NumPy array, got {type(y0).__name__}")
    if len(y0.shape) < 1:
        raise ValueError("y0 must have a leading batch axis")
    size = _DEFAULT_CHUNK if chunk_size is None else chunk_size
    return da.from_array(y0, chunks=(size,) + tuple(y0.shape[1:]))


def _split_args(args, y0):
    """Per-sample dask arrays (rechunked like y0) and the shared rest; ``slots`` records which is which."""
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple of extra arguments, got {type(args).__name__}")
    per_sample, shared, slots = [], [], []
    for i, a in enumerate(args):
        if isinstance(a, da.Array):
            if a.ndim < 1 or a.shape[0] != y0.shape[0]:
                raise ValueError(f"args[{i}] is a dask array, so it is per-sample data: its leading axis must "
                                 f"have the batch size {y0.shape[0]}, got shape {a.shape}"
                                 + (" (unknown chunk sizes: call .compute_chunk_sizes() on it and on y0 first)"
                                    if np.isnan(y0.shape[0]) or (a.ndim and np.isnan(a.shape[0])) else ""))
            a = a.rechunk((y0.chunks[0],) + tuple((n,) for n in a.shape[1:]))
            slots.append(("sample", len(per_sample)))
            per_sample.append(a)
        else:
            slots.append(("shared", len(shared)))
            shared.append(a)
    _check_picklable(tuple(shared), "args (the shared, non-dask part)")
    return per_sample, tuple(shared), tuple(slots)


def _check_rows(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_options(kind, options):
    """The solve's options checked here, before anything runs (a bad one would otherwise surface on a worker
    at compute time)."""
    from ._checks import check_positive_int, check_tolerance
    from .ode.base import ODEMethod
    from .root import RootSolver

    check_tolerance(options["rtol"], "rtol")
    if kind != "integrate" or np.ndim(options["atol"]) == 0:     # (integrate: one atol per component of a row)
        check_tolerance(options["atol"], "atol")
    check_positive_int(options["max_steps"], "max_steps")
    solver = options["solver"]
    ode = kind in ("steady_state", "integrate")
    if solver is not None and not isinstance(solver, ODEMethod if ode else RootSolver):
        wanted = ("an ODE method (dq.Tsit5(), dq.VCABM3(), dq.Rodas5P(), ...)" if ode
                  else "a deqcore root solver (dq.Anderson(), dq.Broyden(), ...)")
        raise TypeError(f"solver must be {wanted} or None, got {type(solver).__name__}")
    if kind == "steady_state" and isinstance(solver, _unbatched_methods()):
        raise ValueError(f"solver=dq.{type(solver).__name__}() solves unbatched problems only, and steady_state "
                         "solves each chunk as one batch: use dq.Rodas5P() (stiff, batched) or an explicit method")


def _unbatched_methods():
    """The ODE methods that refuse ``batched=True`` (their step loops run one system)."""
    from .ode import BDF, Radau

    return (BDF, Radau)


def _lazy(kind, fn, y0, args, options, chunk_size):
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if chunk_size is not None:
        _check_rows("chunk_size", chunk_size, 1, 2 ** 62)
    _check_options(kind, options)
    _check_picklable(fn, "fn")
    y0 = _as_dask_batch(y0, chunk_size)
    if y0.dtype not in (np.float32, np.float64):
        raise TypeError(f"y0 has dtype {y0.dtype}; deqcore solves in float32 or float64")
    if y0.shape[0] == 0:
        raise ValueError(f"y0 must hold at least one sample, got shape {y0.shape}")
    if kind == "integrate" and np.ndim(options["atol"]) > 0:     # one atol per component of a row, checked
        from .ode.solve import _check_atol                          # here rather than on a worker

        _check_atol(options["atol"], np.broadcast_to(np.zeros((), y0.dtype), y0.shape[1:]))
    if kind in ("fixed_point", "root_find") and y0.ndim < 2:
        raise ValueError(f"y0 must have shape (batch, n, ...): one system per row, got shape {y0.shape} (for "
                         "scalar systems add an axis: y0[:, None])")
    per_sample, shared, slots = _split_args(args, y0)
    y_blocks = y0.to_delayed().ravel()
    arg_blocks = [a.to_delayed().ravel() for a in per_sample]
    task = dask.delayed(_solve_chunk, pure=True, nout=4)
    values, results, residuals, stats = [], [], [], []
    for i, rows in enumerate(y0.chunks[0]):
        if rows == 0:                 # an empty chunk (e.g. from concatenating or filtering) has nothing to solve
            continue
        v, r, res, st = task(kind, fn, options, slots, shared, y_blocks[i], *(b[i] for b in arg_blocks))
        values.append(da.from_delayed(v, (rows,) + y0.shape[1:], dtype=y0.dtype))
        results.append(da.from_delayed(r, (rows,), dtype=np.int64))
        residuals.append(da.from_delayed(res, (rows,), dtype=y0.dtype))
        stats.append(st)
    residual = None if kind == "integrate" else da.concatenate(residuals)
    return LazySolution(da.concatenate(values), da.concatenate(results), residual, stats)


def _solve_chunk(kind, fn, options, slots, shared, y, *sample_args):
    """Solve one chunk in this process; returns NumPy ``(value, codes, residual, stats)``."""
    import deqcore as dq

    args = tuple(sample_args[j] if where == "sample" else shared[j] for where, j in slots)
    if kind == "integrate":
        row_of = [where == "sample" for where, _ in slots]
        return _integrate_rows(fn, y, args, row_of, options)
    solve = {"fixed_point": dq.fixed_point, "root_find": dq.root_find, "steady_state": dq.steady_state}[kind]
    sol = solve(fn, y, args=args, batched=True, throw=False, **options)
    stats = {k: v for k, v in sol.stats.items() if np.ndim(v) == 0 or np.shape(v)[:1] == (y.shape[0],)}
    codes = np.asarray(sol.result, dtype=np.int64).reshape(-1)
    residual = np.asarray(sol.residual, dtype=y.dtype).reshape(-1)
    return np.asarray(sol.value), codes, residual, stats


def _integrate_rows(rhs, y, args, row_of, options):
    """Each row its own initial value problem (own step sizes); the last accepted state per row (y(t1) when
    it succeeded)."""
    import deqcore as dq

    t_span = options["t_span"]
    rest = {k: v for k, v in options.items() if k != "t_span"}
    values = np.empty_like(y)
    codes = np.empty(y.shape[0], dtype=np.int64)
    nfev = steps = 0
    for i in range(y.shape[0]):
        row_args = tuple(a[i] if per_row else a for a, per_row in zip(args, row_of))
        sol = dq.integrate(rhs, y[i], t_span, args=row_args, throw=False, **rest)
        codes[i] = int(sol.result)
        values[i] = sol.ys[-1]
        nfev += sol.stats["nfev"]
        steps += sol.stats["num_steps"]
    return values, codes, np.full(y.shape[0], np.nan, dtype=y.dtype), {"nfev": nfev, "num_steps": steps}


def fixed_point(fn, y0, solver=None, *, args=(), atol=1e-6, rtol=1e-6, max_steps=100, chunk_size=None):
    """Lazy ``dq.fixed_point(fn, y0, solver, args=args, batched=True)``, one batched solve per chunk of y0.

    ``fn(y, *args)`` sees one chunk (rows × ...) at a time, with the matching rows of every dask array in
    ``args``. Failed samples are recorded in ``result`` (never raised). See the module docstring.
    """
    return _lazy("fixed_point", fn, y0, args, dict(solver=solver, atol=atol, rtol=rtol, max_steps=max_steps),
                 chunk_size)


def root_find(fn, y0, solver=None, *, args=(), atol=1e-6, rtol=1e-6, max_steps=100, chunk_size=None):
    """Lazy ``dq.root_find(fn, y0, solver, args=args, batched=True)``, one batched solve per chunk of y0."""
    return _lazy("root_find", fn, y0, args, dict(solver=solver, atol=atol, rtol=rtol, max_steps=max_steps),
                 chunk_size)


def steady_state(rhs, y0, solver=None, *, args=(), atol=1e-6, rtol=1e-4, max_steps=1000, chunk_size=None):
    """Lazy ``dq.steady_state(rhs, y0, solver, args=args, batched=True)``, one batched solve per chunk."""
    return _lazy("steady_state", rhs, y0, args, dict(solver=solver, atol=atol, rtol=rtol, max_steps=max_steps),
                 chunk_size)


def integrate(rhs, y0, t_span, solver=None, *, args=(), atol=1e-6, rtol=1e-3, max_steps=100_000,
              chunk_size=None):
    """Lazy final states ``y(t1)``: every row of y0 is its own initial value problem.

    Each row is integrated by ``dq.integrate(rhs, y0[i], t_span, args=row_args)`` with its own adaptive steps
    (so the result never depends on the chunking); ``rhs(t, y, *args)`` receives one row and the matching row
    of each dask array in ``args``. ``residual`` is None. Rows are integrated one after another inside a chunk:
    for many small systems prefer :func:`steady_state` (batched) where it applies.
    """
    from .ode.solve import _check_span

    options = dict(t_span=_check_span(t_span), solver=solver, atol=atol, rtol=rtol, max_steps=max_steps)
    return _lazy("integrate", rhs, y0, args, options, chunk_size)
