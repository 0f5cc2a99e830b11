"""The one adaptive time-stepping loop behind :func:`~deqcore.ode.integrate` and
:func:`~deqcore.ode.steady_state`, batched or not.

Every problem is a set of rows (one row per sample of a batched problem, a single row otherwise) with its own
time, step size, controller history, counters and return code. After each attempt the step control decides for
every row: accept or reject, the PI step-size factor, the end of the span, the steady-state test, divergence
and step-size failure. Its logic is written once, as the scalar function of
:func:`~deqcore.ode.controller.make_control_step`: batched problems keep the rows on the device and run it
through the ``ode_control`` kernel (:mod:`deqcore.ode.kernels`, which compiles it for the CPU and the GPU), and
the step's only transfer to the host is two counts (accepted and still active rows); an unbatched problem
keeps its one row on the host as Python numbers and calls the function directly (no arrays, no kernel call
per step), so the right-hand side receives ``t`` as a Python float and the accepted steps are recorded for
dense output.

The stepper protocol (:class:`~deqcore.ode.base.Stepper`): ``start(t0, y0, f0)`` once, then
``attempt(t, y, f, h, active, tol) -> Trial`` and, for the rows that accepted, ``accept(trial, mask, t_new)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import get_kernel, to_host
from ..results import ReturnCode
from .base import Evaluator, ensure_error_sums
from .controller import control_step, initial_step, initial_step_host, step_limit, step_limit_array

__all__ = ["run", "StepRecord", "LoopResult"]

#: the time variable is float64 whatever the state's dtype: the step-size floor uses its resolution
T_EPS = float(np.finfo(np.float64).eps)


@dataclass
class StepRecord:
    """An accepted step: enough to evaluate the dense output and to recompute the step."""

    t: float
    h: float
    y0: Any
    y1: Any
    f0: Any
    f1: Any
    stages: list | None


@dataclass
class LoopResult:
    """The final state; ``t``, ``codes``, ``accepted``, ``rejected`` and ``nfev`` are host arrays ``(rows,)``
    (``nfev``: the evaluations done when each row finished)."""

    y: Any
    f: Any
    t: np.ndarray
    codes: np.ndarray
    steps: list = field(default_factory=list)
    num_steps: int = 0
    accepted: np.ndarray | None = None
    rejected: np.ndarray | None = None
    nfev: np.ndarray | None = None


DIVERGED, DT_TOO_SMALL = int(ReturnCode.DIVERGED), int(ReturnCode.DT_TOO_SMALL)
#: √max of each state dtype (1.3e154 in float64, 1.8e19 in float32): an accepted state that has grown to this
#: many times max(1, max|y0|) (per row) has run away (DIVERGED). Relative to the start, so a problem posed at
#: any scale (a decaying system at 1e30 in float32) is integrated; a fixed bound of √max called those DIVERGED
_BIG = {np.dtype(dt): float(np.sqrt(np.finfo(dt).max)) for dt in (np.float32, np.float64)}


def row_absmax(ev: Evaluator, a):
    """max|a| of every row as float64 (NaN-propagating), in ``a``'s namespace."""
    return ev.xp.max(ev.xp.abs(ev.rows(a)), axis=1).astype(np.float64)


def _scalar(a) -> float:
    """A Python float from a float, a NumPy scalar or a one-element host array."""
    return a if type(a) is float else float(a.reshape(-1)[0]) if hasattr(a, "reshape") else float(a)


class _HostRow:
    """The control state of an unbatched problem: its one row as Python numbers on the host, stepped by
    :data:`~deqcore.ode.controller.control_step` (the scalar form of the ``ode_control`` kernel: no array
    and no kernel launch per step, the step's numbers stay Python floats)."""

    batched = False

    def __init__(self, ev, t0, h0, t_end, direction, steady, big, threshold, active):
        self.ev, self.t_end, self.direction, self.steady, self.big = ev, float(t_end), direction, steady, big
        self.threshold = float(threshold) if type(threshold) is float else (
            float(np.max(threshold)) if np.ndim(threshold) else float(threshold))
        self.m = math.prod(ev.shape)
        self.t, self.h = float(t0), _scalar(h0)
        self.err_prev, self.after_reject = 1.0, False
        self.active = active if type(active) is bool else bool(np.all(active))
        self.code = int(ReturnCode.SUCCESS)
        self.accepted = self.rejected = 0
        self.nfev = ev.nfev
        self.mask = None

    def arguments(self):
        return self.t, self.direction * self.h

    def t_new(self):
        return self.t

    def max_steps(self):
        self.code, self.active = int(ReturnCode.MAX_STEPS), False

    def control(self, trial, y, tol):
        """Accept or reject ``trial``; returns (accepted rows, active rows)."""
        ev = self.ev
        if trial.err_sq is None:
            ensure_error_sums(ev, trial, y, tol)
        res = self.threshold
        if ev.xp is np:
            err_sq, y_absmax = _scalar(trial.err_sq), _scalar(trial.y_absmax)
            if self.steady:
                res = float(np.max(np.abs(trial.f1)))
        else:  # an unbatched problem on a device: its row's numbers in one transfer
            xp = ev.xp
            parts = [xp.asarray(trial.err_sq, dtype=np.float64).reshape(-1)[:1],
                     xp.asarray(trial.y_absmax, dtype=np.float64).reshape(-1)[:1]]
            if self.steady:
                parts.append(row_absmax(ev, trial.f1)[:1])
            values = to_host(xp.concatenate(parts)).tolist()
            err_sq, y_absmax = values[0], values[1]
            res = values[2] if self.steady else res
        exponent = trial.error_exponent
        exponent = float(exponent) if isinstance(exponent, (int, float, np.number)) else _scalar(exponent)
        good, active, code, t, h, self.err_prev, self.after_reject = control_step(
            err_sq, y_absmax, res, self.threshold, exponent, self.t, self.h, self.err_prev, self.after_reject,
            self.m, self.t_end, self.direction, self.steady, self.big, T_EPS)
        self.t = t
        if good:
            self.accepted += 1
        else:
            self.rejected += 1
        self.nfev = ev.nfev
        if active and trial.h_next is not None:
            # a stepper with its own step-size selection: its proposal replaces the PI controller's, limited
            # as the controller's (the floor, the rest of the span, t's grid)
            limited = step_limit(good, self.h, abs(float(trial.h_next)), t, self.t_end, self.direction, T_EPS)
            if limited > 0.0:
                h = limited
            else:
                code = DT_TOO_SMALL if math.isfinite(err_sq) else DIVERGED
                active = False
        if not active and trial.code is not None and code in (DIVERGED, DT_TOO_SMALL):
            stepper_code = int(_scalar(np.asarray(trial.code)))
            code = stepper_code if stepper_code != 0 else code
        if code:
            self.code = code
        self.h, self.active = h, active
        return int(good), int(active)

    def results(self):
        return (np.array([self.t]), np.array([self.code], dtype=np.int64), np.array([self.accepted]),
                np.array([self.rejected]), np.array([self.nfev]))


class _DeviceRows:
    """The control state of a batched problem: per-row arrays on the device, stepped by the ``ode_control``
    kernel; the step's only transfer to the host is two counts (accepted and still active rows)."""

    batched = True

    def __init__(self, ev, t0, h0, t_end, direction, steady, big, threshold, active):
        xp, R = ev.xp, ev.num_rows
        self.ev, self.t_end, self.direction, self.steady, self.big = ev, t_end, direction, steady, big
        self.threshold, self.active = threshold, active
        self.control_kernel = get_kernel("ode_control", xp)
        self.m = int(np.prod(ev.shape, dtype=np.int64)) // R
        self.t = xp.full(R, float(t0), dtype=np.float64)
        self.h = xp.asarray(h0, dtype=np.float64)
        self.err_prev = xp.ones(R)
        self.after_reject, self.ok = xp.zeros(R, dtype=bool), xp.zeros(R, dtype=bool)
        self.codes = xp.full(R, int(ReturnCode.SUCCESS), dtype=np.int64)
        self.accepted, self.rejected = xp.zeros(R, dtype=np.int64), xp.zeros(R, dtype=np.int64)
        self.nfev = xp.full(R, ev.nfev, dtype=np.int64)
        self.summary = xp.zeros(2, dtype=np.int64)
        self.exponent = xp.empty(R)
        self.mask = None
        self.inv_scale = None       # 1 / max(1, max|y0|) per row where some start exceeds 1 (the runaway test
                                    # reads y_absmax in those units), else None: nothing to scale

    def arguments(self):
        return self.t, (self.h if self.direction == 1.0 else self.direction * self.h)

    def t_new(self):
        return self.t

    def max_steps(self):
        self.ev.xp.copyto(self.codes, int(ReturnCode.MAX_STEPS), where=self.active)

    def control(self, trial, y, tol):
        ev, xp = self.ev, self.ev.xp
        ensure_error_sums(ev, trial, y, tol)
        res = row_absmax(ev, trial.f1) if self.steady else trial.err_sq
        if isinstance(trial.error_exponent, (int, float, np.number)):
            self.exponent.fill(trial.error_exponent)
        else:
            self.exponent = xp.asarray(trial.error_exponent, dtype=np.float64)
        was_active = self.active.copy() if trial.code is not None else None
        # the stepper may keep the array it got as h: a new one for the next step size
        (self.t, self.h, self.err_prev, self.after_reject, self.active, self.codes, self.accepted, self.rejected,
         self.nfev, self.ok, self.summary) = self.control_kernel(
            trial.err_sq, trial.y_absmax if self.inv_scale is None else trial.y_absmax * self.inv_scale, res,
            self.threshold, self.exponent, self.t, self.h, xp.empty(ev.num_rows), self.err_prev, self.after_reject,
            self.active, self.codes, self.accepted, self.rejected, self.nfev, self.ok, self.summary, self.m,
            self.t_end, self.direction, self.steady, self.big, T_EPS, ev.nfev)
        if trial.code is not None:
            codes = self.codes
            ended = was_active & ~self.active & ((codes == DIVERGED) | (codes == DT_TOO_SMALL)) & (trial.code != 0)
            xp.copyto(codes, xp.asarray(trial.code, dtype=np.int64), where=ended)
        n_ok, n_active = to_host(self.summary).tolist()  # the step's one transfer to the host
        self.mask = None if n_ok == ev.num_rows else self.ok
        return n_ok, n_active

    def results(self):
        return tuple(to_host(a) for a in (self.t, self.codes, self.accepted, self.rejected, self.nfev))


@np.errstate(all="ignore")  # non-finite values are detected and reported as codes, never warned about
def run(ev: Evaluator, stepper, y0, t0: float, t_end: float, direction: float, *, atol, rtol: float,
        max_steps: int, dt0, steady: bool = False, record: bool = False, steady_rtol: float | None = None
        ) -> LoopResult:
    """Step from ``t0`` towards ``t_end`` (``inf`` for steady states, ``steady=True``).

    A steady-state row stops at an accepted state where ``max|f| ≤ atol + rtol·max|f(y0)|`` (the residual
    fell below ``atol`` or by the factor ``rtol`` from its start). ``atol`` may be an array broadcastable to a
    row's elements (per-component error weights; then the reference kernels form the error norms).
    ``steady_rtol`` (default ``rtol``) is the stopping test's ``rtol`` when it differs from the step control's
    (which the entry points raise to 100 eps; the stopping test keeps the caller's, 0 included).
    """
    xp, R = ev.xp, ev.num_rows
    tol = (atol, rtol)
    f0 = ev(t0, y0)     # the evaluator copies a result that lives in a buffer the rhs reuses
    span = abs(t_end - t0)
    host = not ev.batched and xp is np
    exponent = getattr(stepper, "first_step_exponent", stepper.error_exponent)    # of the step taken first
    if dt0 is None:
        if host and y0.dtype == np.float64:     # the same step, its scalar arithmetic on Python floats
            h0 = initial_step_host(ev, float(t0), y0, f0, direction, ev.full_atol(atol), rtol,
                                   exponent, span)
        else:
            h0 = initial_step(xp, lambda t, y, dh: ev(t + dh, y), np.full(R, t0), y0, f0, direction,
                              ev.full_atol(atol), rtol, exponent, ev.batched, span)
    else:
        h0 = abs(float(dt0)) if not ev.batched else np.full(R, abs(float(dt0)))
    # the first step as every later one: at least the floor, at most the span, on t's grid
    if ev.batched:
        h0 = step_limit_array(np, np.ones(R, dtype=bool), 0.0, np.asarray(h0, dtype=np.float64), float(t0),
                              t_end, direction, T_EPS)
    else:
        h0 = step_limit(True, 0.0, _scalar(h0), float(t0), t_end, direction, T_EPS)
    stepper.start(float(t0), y0, f0)
    big = _BIG[np.dtype(y0.dtype)]                       # (the entry points accept float32 and float64 only)
    cx = xp if ev.batched else np  # where the per-row control state lives
    scale = xp.maximum(row_absmax(ev, y0), 1.0)          # the runaway bound is big·max(1, max|y0|) per row
    if not ev.batched:
        big *= float(scale[0])          # (a Python float: inf where it overflows, so no finite state runs away)
    if steady:
        res0 = row_absmax(ev, f0)
        res0 = res0 if cx is xp else to_host(res0)
        threshold = float(np.max(atol)) + (rtol if steady_rtol is None else steady_rtol) * res0
        active = ~(res0 <= threshold)
        n_active = int(active.sum())
    elif not ev.batched:            # one row on the host: plain Python values
        threshold, active, n_active = 0.0, True, 1
    else:
        threshold = cx.zeros(R)
        active = cx.ones(R, dtype=bool)
        n_active = R
    rows = (_DeviceRows if ev.batched else _HostRow)(ev, t0, h0, t_end, direction, steady, big, threshold, active)
    if ev.batched and bool((scale > 1.0).any()):      # (one host read a solve)
        rows.inv_scale = 1.0 / scale
    y, fy = y0, f0
    steps: list[StepRecord] = []
    num_steps = 0
    compiled = getattr(stepper, "run_rows", None) if n_active else None
    done = compiled(rows, y, fy, tol, max_steps, record) if compiled is not None else None
    if done is not None:        # the stepper ran this loop in compiled code (Radau on a small dense system)
        y, fy, steps, num_steps = done
        n_active = 0
    while n_active:
        if num_steps >= max_steps:
            rows.max_steps()
            break
        t_arg, h_arg = rows.arguments()
        trial = stepper.attempt(t_arg, y, fy, h_arg, rows.active if ev.batched else None, tol)
        num_steps += 1
        n_ok, n_active = rows.control(trial, y, tol)
        if n_ok:
            mask = rows.mask
            if record:
                steps.append(StepRecord(t_arg, rows.t - t_arg, y, trial.y1, fy, trial.f1, trial.stages))
            y = ev.select(mask, trial.y1, y)
            fy = ev.select(mask, trial.f1, fy)
            stepper.accept(trial, mask, rows.t_new())
    t, codes, accepted, rejected, nfev = rows.results()
    return LoopResult(y, fy, t, codes, steps, num_steps, accepted, rejected, nfev)
