"""Pieces shared by the framework adapters: option checks, default solver and adjoint, the forward solve."""

from __future__ import annotations

import numpy as np

from .._checks import check_bool, check_positive_int, check_tolerance
from ..adjoint._warn import warn_failed
from ..adjoint.steady_state import OneStepGradient, PhantomGradient, SteadyStateAdjoint
from ..root import Anderson, RootSolver
from ..root.api import checked_fixed_point

__all__ = ["import_framework", "check_options", "check_adjoint", "check_compact", "check_dtype", "solve"]

_ADJOINTS = (SteadyStateAdjoint, OneStepGradient, PhantomGradient)
SUPPORTED_DTYPES = ("float32", "float64")


def import_framework(name: str, extra: str):
    """Import an optional framework, or raise an ImportError that says how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"deqcore.interop.{extra} needs {name}: pip install deqcore[{extra}]") from exc


def check_options(solver, atol, rtol, max_steps):
    """Validated ``(solver, atol, rtol, max_steps)``; ``solver=None`` means ``dq.Anderson()``."""
    solver = Anderson() if solver is None else solver
    if not isinstance(solver, RootSolver):
        raise TypeError("solver must be a deqcore fixed-point solver (dq.Anderson(), dq.Broyden(), "
                        f"dq.FixedPointIteration(), ...); got {type(solver).__name__}")
    return solver, check_tolerance(atol, "atol"), check_tolerance(rtol, "rtol"), check_positive_int(
        max_steps, "max_steps")


def check_adjoint(adjoint, atol=None, rtol=None, max_steps=None):
    """``adjoint`` itself, or ``dq.SteadyStateAdjoint()`` for None; TypeError for anything else. Given the
    forward solve's ``atol``/``rtol``/``max_steps``, a SteadyStateAdjoint's unset tolerances follow them."""
    if adjoint is None:
        adjoint = SteadyStateAdjoint()
    if not isinstance(adjoint, _ADJOINTS):
        raise TypeError("adjoint must be dq.SteadyStateAdjoint(...), dq.OneStepGradient() or "
                        f"dq.PhantomGradient(...); got {type(adjoint).__name__}")
    if isinstance(adjoint, SteadyStateAdjoint) and max_steps is not None:
        adjoint = adjoint.with_forward(atol, rtol, max_steps)
    return adjoint


def check_compact(compact, batched: bool) -> bool:
    """``compact`` as a bool; True needs ``batched=True`` (ValueError naming both)."""
    if check_bool(compact, "compact") and not batched:
        raise ValueError("compact=True drops finished samples of a batch from f's evaluations: it needs "
                         "batched=True")
    return bool(compact)


def check_dtype(dtype_name: str, name: str, cast: str = ".float() or .double()") -> None:
    """float32 and float64 only; half precision gets an error that says what to do (``cast``: how to cast
    in the caller's framework, e.g. ``.astype(jnp.float32)`` for JAX arrays, which have no ``.float()``)."""
    if dtype_name not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {dtype_name}; deqcore solves in float32 or float64: cast it first "
                        f"(e.g. {cast})")


def solve(fn, z0, solver, *, atol, rtol, max_steps, batched, where="the forward solve", warn=True, args=(),
          compact=False, finite=False, conforming=False):
    """``dq.fixed_point`` without raising: failures are recorded in the returned Solution's ``result`` and
    (with ``warn``) reported by one RuntimeWarning per call site naming the code and the count. ``args`` and
    ``compact`` as in ``dq.fixed_point`` (per-sample arguments; finished samples dropped from f's rows);
    ``finite`` and ``conforming``: what the caller vouches for (z0 checked finite; fn's outputs checked by fn),
    see :func:`deqcore.root.api.checked_fixed_point`."""
    sol = checked_fixed_point(fn, z0, solver, args=args, atol=atol, rtol=rtol, max_steps=max_steps,
                              batched=batched, throw=False, compact=compact, finite=finite, conforming=conforming)
    if warn:
        warn_failed(where, sol.result, "The best iterate is returned and its gradient is not the implicit "
                    "gradient: raise max_steps or loosen atol/rtol")
    return sol


#: the last ``dq.SolveError`` raised inside a JAX host callback: JAX wraps it in a ``JaxRuntimeError``, and an eager
#: call re-raises it as itself (:func:`deqcore.interop.jax.fixed_point`)
RAISED_IN_CALLBACK: list = []


def raise_from_callback(error):
    """Raise ``error`` (a ``dq.SolveError``) inside a host callback, remembering it for :data:`RAISED_IN_CALLBACK`
    (every one since the list was cleared: under ``shard_map`` each device's callback may raise its own)."""
    if len(RAISED_IN_CALLBACK) >= 64:
        del RAISED_IN_CALLBACK[:32]
    RAISED_IN_CALLBACK.append(error)
    raise error


def writable(a):
    """``a``, or a copy when it is a read-only NumPy array (frameworks ignore NumPy's read-only flag)."""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        return a.copy()
    return a
