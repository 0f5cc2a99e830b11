"""Public entry points: :func:`integrate` (initial value problems) and :func:`steady_state`.

SciML's ``abstol``/``reltol``/``maxiters`` are ``atol``/``rtol``/``max_steps`` here.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from .._checks import check_callable, check_positive_int, check_tolerance
from ..backend import check_finite, check_float_array, to_host
from ..results import ReturnCode, Solution, SolveError
from .adams import VCABM3
from .base import Evaluator, ODEMethod
from .driver import run
from .explicit import Tsit5
from .messages import ode_failure_message
from .solution import ODEProblem, ODESolution

__all__ = ["integrate", "steady_state"]


#: the state dtypes the ODE solvers support, and 100 eps of each (the smallest rtol they resolve)
_STATE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_RTOL_MIN = {dt: 100.0 * float(np.finfo(dt).eps) for dt in _STATE_DTYPES}
_TINY = {dt: float(np.finfo(dt).tiny) for dt in _STATE_DTYPES}


def _check_common(rhs, y0, solver, args, atol, rtol, max_steps, atol_array=False, raised=None):
    check_callable(rhs, "rhs")
    if type(y0) is np.ndarray and y0.dtype in _STATE_DTYPES:    # the common case, checked without dispatch
        xp, dtype = np, y0.dtype
    else:
        xp = check_float_array(y0, "y0")
        dtype = np.dtype(y0.dtype)
        if dtype not in _STATE_DTYPES:
            raise TypeError(f"y0 must be float32 or float64, got {dtype}")
    if y0.size == 0:
        raise ValueError(f"y0 must have at least one element, got shape {tuple(y0.shape)}")
    if xp is np:
        if not np.isfinite(y0).all():
            raise ValueError("y0 contains NaN or infinity")
    else:
        check_finite(y0, "y0")
    if not isinstance(solver, ODEMethod):
        raise TypeError(f"solver must be an ODE method such as dq.Tsit5(), dq.VCABM3(), dq.Radau(), dq.Rodas5P() or dq.BDF(); got "
                        f"{type(solver).__name__}")
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple of extra arguments for rhs, got {type(args).__name__}")
    atol = _check_atol(atol, y0) if atol_array else check_tolerance(atol, "atol")
    rtol = check_tolerance(rtol, "rtol")
    if rtol == 0.0 and (atol == 0.0 if type(atol) is float else bool(np.all(atol == 0.0))):
        raise ValueError("atol and rtol cannot both be 0")
    # a zero weight (atol 0 where the state is 0) would make the error norms 0/0: its floor is the dtype's
    # smallest normal number, so a component that stays exactly 0 passes and any other is unchanged
    atol = max(atol, _TINY[dtype]) if type(atol) is float else np.maximum(atol, _TINY[dtype])
    rtol_min = _RTOL_MIN[dtype]
    if raised is not None:
        raised["rtol"] = rtol       # the caller's rtol, before the step control's floor below
    if rtol < rtol_min:
        where = ("" if raised is None else      # steady_state: its stopping test keeps the caller's rtol
                 f" in the step control (the stopping test keeps rtol={rtol!r})")
        warnings.warn(f"rtol={rtol!r} is below what {dtype.name} resolves; using rtol = "
                      f"{rtol_min:.3g} (100 eps){where}", UserWarning, stacklevel=3)
        rtol = rtol_min
    return xp, atol, rtol, check_positive_int(max_steps, "max_steps")


def _check_atol(atol, y0):
    """A number, or an array of per-component absolute tolerances broadcastable to ``y0`` (kept on the host
    as a float64 NumPy array of y0's shape; a constant array becomes a number)."""
    if type(atol) is float or np.ndim(atol) == 0:
        return check_tolerance(atol, "atol")
    values = np.asarray(to_host(atol) if hasattr(atol, "__cuda_array_interface__") else atol)
    if values.dtype.kind not in "iuf":
        raise TypeError(f"atol must be a real number or an array of them, got dtype {values.dtype}")
    values = values.astype(np.float64)
    try:
        values = np.broadcast_to(values, y0.shape)
    except ValueError:
        raise ValueError(f"atol must broadcast to the shape of y0 {tuple(y0.shape)}, got shape "
                         f"{values.shape}") from None
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("atol must hold finite numbers >= 0")
    if np.all(values == values.flat[0]):
        return float(values.flat[0])
    return values


def _check_time(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def _check_saveat(saveat, t0, t1):
    if saveat is None:
        return None
    raw = np.asarray(to_host(saveat) if hasattr(saveat, "shape") else saveat)
    if raw.dtype.kind not in "iuf":       # (strings and bools would convert to times silently)
        raise TypeError(f"saveat must hold real times, got dtype {raw.dtype}")
    times = raw.astype(float)
    if times.ndim != 1 or times.size == 0 or not np.all(np.isfinite(times)):
        raise ValueError("saveat must be a non-empty 1-D sequence of finite times")
    direction = 1.0 if t1 > t0 else -1.0
    if np.any(np.diff(times) * direction <= 0):
        raise ValueError("saveat must be strictly increasing (strictly decreasing when t1 < t0)")
    lo, hi = min(t0, t1), max(t0, t1)
    if times.min() < lo or times.max() > hi:
        raise ValueError(f"saveat must lie inside t_span [{lo}, {hi}], got {times.min()}..{times.max()}")
    return times


def _warn_unused_jac(solver: ODEMethod) -> None:
    """An explicit method has no use for ``jac``: say so (as SciPy's solve_ivp does) instead of ignoring it."""
    from .bdf import BDF
    from .radau import Radau
    from .rosenbrock import _Rosenbrock

    if not isinstance(solver, (Radau, BDF, _Rosenbrock)):
        warnings.warn(f"jac is ignored by the explicit method {type(solver).__name__}(): only the implicit "
                      "methods (dq.Radau(), dq.BDF(), dq.Rodas5P(), dq.Rodas4(), dq.Rodas3()) use a Jacobian",
                      UserWarning, stacklevel=3)


def integrate(rhs: Callable, y0: Any, t_span: Sequence[float] | np.ndarray, solver: ODEMethod | None = None,
              *, args: tuple = (), atol: Any = 1e-6, rtol: float = 1e-3,
              saveat: Sequence[float] | np.ndarray | None = None, dt0: float | None = None,
              max_steps: int = 100_000, jac: Callable | None = None, throw: bool = True) -> ODESolution:
    """Solve ``dy/dt = rhs(t, y, *args)``, ``y(t0) = y0`` from ``t0`` to ``t1`` with adaptive steps.

    Args:
        rhs: ``rhs(t, y, *args) -> dy/dt`` (an array of the shape of ``y0``; ``t`` a Python float).
        y0: initial state (any shape, float32/float64, NumPy or CuPy).
        t_span: ``(t0, t1)`` (a tuple, list or NumPy array); ``t1 < t0`` integrates backwards.
        solver: ``dq.Tsit5()`` (default), ``dq.VCAB3()``, ``dq.VCABM3()``; for stiff problems ``dq.Radau()``
            (order 5: the choice at tight tolerances), ``dq.BDF()`` (few Jacobians: loose tolerances, or when
            each Jacobian costs many rhs calls) or ``dq.Rodas5P()`` (also batched/CuPy; ``dq.Rodas3()``,
            ``dq.Rodas4()`` too).
        atol, rtol: local error tolerances: every accepted step's error estimate has an RMS norm ≤ 1 in units
            of ``atol + rtol·max(|y_old|, |y_new|)``, per component. ``atol`` may be an array broadcastable to
            ``y0`` (one absolute tolerance per component). ``rtol`` below 100 eps of y0's dtype is raised to
            that with a warning. The global error is not controlled; it is usually a small multiple of the
            tolerance on non-chaotic problems.
        saveat: times at which to return the solution (default: every accepted step).
        dt0: first step size (its sign must match the direction of integration); default automatic.
        max_steps: cap on attempted steps (MAX_STEPS when hit).
        jac: optional ``jac(t, y, *args) -> (n, n)`` for implicit methods (default: finite differences).
        throw: raise :class:`~deqcore.results.SolveError` when the integration fails.

    Returns:
        :class:`ODESolution` (``ts``, ``ys``, ``value``, ``result``, ``success``, ``stats``, ``residual``,
        dense output ``sol(t)``).

    >>> import numpy as np, deqcore as dq
    >>> sol = dq.integrate(lambda t, y: np.array([y[1], -y[0]]), np.array([0.0, 1.0]), (0.0, np.pi / 2),
    ...                    atol=1e-10, rtol=1e-10, saveat=[0.0, np.pi / 4, np.pi / 2])
    >>> np.round(sol.ys[:, 0], 6)
    array([0.      , 0.707107, 1.      ])
    >>> round(float(sol(np.pi / 6)[0]), 6)
    0.5
    """
    solver = Tsit5() if solver is None else solver
    xp, atol, rtol, max_steps = _check_common(rhs, y0, solver, args, atol, rtol, max_steps, atol_array=True)
    t0, t1 = _check_span(t_span)
    direction = 1.0 if t1 > t0 else -1.0
    if dt0 is not None:
        dt0 = _check_time(dt0, "dt0")
        if dt0 * direction <= 0:
            raise ValueError(f"dt0 must be nonzero with the sign of t1 - t0, got {dt0}")
    times = _check_saveat(saveat, t0, t1)
    if jac is not None:
        check_callable(jac, "jac")
        _warn_unused_jac(solver)
    check_bool(throw, "throw")
    y0 = y0.copy()  # the solution's records never alias the caller's array
    per_component = np.ndim(atol) > 0
    ev = Evaluator(xp, rhs, args, batched=False, autonomous=False, shape=y0.shape, dtype=y0.dtype,
                   atol_per_component=per_component)
    stepper = solver.stepper(ev, jac)
    run_atol = xp.asarray(atol) if per_component and xp is not np else atol
    out = run(ev, stepper, y0, t0, t1, direction, atol=run_atol, rtol=rtol, max_steps=max_steps, dt0=dt0,
              record=True)
    code = ReturnCode(int(out.codes[0]))
    stats = {"nfev": ev.nfev, "num_steps": out.num_steps, "accepted": int(out.accepted[0]),
             "rejected": int(out.rejected[0])}
    stats.update(getattr(stepper, "stats", {}))
    problem = ODEProblem(rhs, args, t0, t1, solver, atol, rtol, max_steps)
    tableau = getattr(solver, "tableau", None)
    if times is None:
        ts = np.array([t0] + [s.t + s.h for s in out.steps])
        ys = xp.stack([y0] + [s.y1 for s in out.steps])
    else:
        reached = times[direction * (times - out.t[0]) <= 0] if code != ReturnCode.SUCCESS else times
        sol = ODESolution(reached, None, code, stats, problem, out.steps, y0, tableau, xp.stack)
        ts, ys = reached, (sol(reached) if reached.size else xp.empty((0,) + y0.shape, dtype=y0.dtype))
    sol = ODESolution(ts, ys, code, stats, problem, out.steps, y0, tableau, xp.stack,
                      _f_start=None if out.steps else out.f)
    if throw and code != ReturnCode.SUCCESS:
        sol.raise_if_failed()
    return sol


def _check_span(t_span):
    """``(t0, t1)`` from a pair: a tuple, list or 1-D array of two finite, different real numbers."""
    if hasattr(t_span, "__cuda_array_interface__"):
        t_span = to_host(t_span)
    if isinstance(t_span, np.ndarray):
        if t_span.shape != (2,) or t_span.dtype.kind not in "iuf":
            raise ValueError(f"t_span must be a pair (t0, t1), got an array of shape {t_span.shape} and dtype "
                             f"{t_span.dtype}")
        t_span = tuple(t_span.tolist())
    if not isinstance(t_span, (tuple, list)) or len(t_span) != 2:
        raise ValueError(f"t_span must be a pair (t0, t1), got {t_span!r}")
    t0, t1 = _check_time(t_span[0], "t_span[0]"), _check_time(t_span[1], "t_span[1]")
    if t0 == t1:
        raise ValueError("t_span must have t1 != t0 (an empty span)")
    length = abs(t1 - t0)
    if not _TINY[np.dtype(np.float64)] <= length < math.inf:
        # a subnormal length has no step size 1/h can be formed from (the implicit methods' 1/(γh) overflowed:
        # a ZeroDivisionError or LINEAR_SOLVE_FAILED), an infinite one no finite step count
        raise ValueError(f"t_span must have a length |t1 - t0| that is a normal float64 number, got "
                         f"t1 - t0 = {t1 - t0!r}")
    return t0, t1


def steady_state(rhs: Callable, y0: Any, solver: ODEMethod | None = None, *, args: tuple = (),
                 atol: float = 1e-6, rtol: float = 1e-4, max_steps: int = 1000, batched: bool = False,
                 jac: Callable | None = None, throw: bool = True) -> Solution:
    """Integrate ``du/dt = rhs(t, u, *args)`` towards ``t = ∞`` until ``max|du/dt| ≤ atol + rtol·max|f(u0)|``.

    ``atol`` and ``rtol`` mean two things here. The stopping test: a state is steady when the residual
    ``max|f(u)|`` is at most ``atol``, or has fallen by the factor ``rtol`` from its value at the start
    (``max|f(u0)|``), at an accepted step. And the step control, as in :func:`integrate`. Because the test
    asks the residual to decrease, a state that runs away (``|u|`` growing without bound while ``|f|`` does
    not shrink, e.g. ``du/dt = 1``) never passes it and ends with MAX_STEPS or DIVERGED.

    The right-hand side is treated as autonomous (it is called with ``t = 0.0``). With ``batched=True`` the
    leading axis holds independent problems: each sample has its own step size, controller, convergence test
    and return code, and samples that converge are frozen (``rhs`` still sees the whole batch, so ``args``
    may carry per-sample data).

    On stiff problems explicit methods (VCABM3, VCAB3, Tsit5) run at their stability limit, where the error
    control leaves stiff components at the tolerance level: ``max|du/dt|`` then stalls near
    (stiffness × tolerance) and the solve ends with MAX_STEPS. Use ``dq.Rodas5P()`` there (or ``dq.Radau()`` /
    ``dq.BDF()`` unbatched).

    Args:
        rhs, y0, args, atol, rtol, max_steps, jac: as in :func:`integrate`, but ``atol`` is one number here
            (the stopping test's bound); ``max_steps`` counts attempted steps (DEQ training typically uses
            ``atol = rtol = 1e-3`` and ``max_steps = 32``).
        solver: default ``dq.VCABM3()``.
        batched: whether the leading axis of ``y0`` holds independent problems.
        throw: raise :class:`~deqcore.results.SolveError` when any sample failed.

    Returns:
        :class:`~deqcore.results.Solution`: ``value`` the steady state (the last iterate on failure),
        ``result`` (an int array ``(B,)`` when batched), ``residual`` = ``max|du/dt|`` per sample, ``stats``
        with ``nfev``, ``num_steps`` (attempted), ``accepted``, ``rejected`` and, when batched,
        ``nfev_per_sample`` (the evaluations done when each sample finished) and ``accepted_per_sample``.

    >>> import numpy as np, deqcore as dq
    >>> A = np.array([[-2.0, 1.0], [0.0, -1.0]]); b = np.array([1.0, 1.0])
    >>> sol = dq.steady_state(lambda t, u: A @ u + b, np.zeros(2), atol=1e-10, rtol=1e-10)
    >>> np.allclose(sol.value, np.linalg.solve(A, -b), atol=1e-8)
    True
    """
    solver = VCABM3() if solver is None else solver
    given = {}
    xp, atol, rtol, max_steps = _check_common(rhs, y0, solver, args, atol, rtol, max_steps, raised=given)
    batched = check_bool(batched, "batched")
    if batched and (y0.ndim < 1 or y0.shape[0] == 0 or y0.size == 0):
        raise ValueError(f"batched=True needs y0 with a leading batch axis and elements, got shape "
                         f"{tuple(y0.shape)}")
    if jac is not None:
        check_callable(jac, "jac")
        _warn_unused_jac(solver)
    check_bool(throw, "throw")
    y0 = y0.copy()
    ev = Evaluator(xp, rhs, args, batched=batched, autonomous=True, shape=y0.shape, dtype=y0.dtype)
    stepper = solver.stepper(ev, jac)
    # the stopping test takes the caller's rtol (rtol=0: the absolute test max|f(u)| <= atol); only the step
    # control needs the floor of 100 eps
    out = run(ev, stepper, y0, 0.0, math.inf, 1.0, atol=atol, rtol=rtol, max_steps=max_steps, dt0=None,
              steady=True, steady_rtol=given["rtol"])
    residual = xp.max(xp.abs(ev.rows(out.f)), axis=1)
    stats = {"nfev": ev.nfev, "num_steps": out.num_steps, "accepted": int(out.accepted.max()),
             "rejected": int(out.rejected.max())}
    stats.update(getattr(stepper, "stats", {}))
    if batched:
        stats["nfev_per_sample"] = out.nfev
        stats["accepted_per_sample"] = out.accepted
        result = xp.asarray(out.codes)
        res = residual
    else:
        result = ReturnCode(int(out.codes[0]))
        res = float(residual[0])
    sol = Solution(out.y, result, stats, res, batched)
    message = ode_failure_message(out.codes, batched)
    if throw and message is not None:
        raise SolveError(message, sol)
    return sol


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)
