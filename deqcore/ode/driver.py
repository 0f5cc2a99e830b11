"""The one adaptive time-stepping loop behind :func:`~deqcore.ode.integrate` and
:func:`~deqcore.ode.steady_state`, batched or not.

Every problem is a set of rows (one row per sample of a batched problem, a single row otherwise) with its own
time, step size, controller history, counters and return code. After each attempt the ``ode_control`` kernel
(:mod:`deqcore.ode.kernels`) decides for every row: accept or reject, the PI step-size factor, the end of the
span, the steady-state test, divergence and step-size failure. That kernel is the only copy of the control
logic. Batched problems keep the rows on the device, and the step's only transfer to the host is two counts
(accepted and still active rows); an unbatched problem keeps its one row on the host, so the right-hand side
receives ``t`` as a Python float and the accepted steps are recorded for dense output.

The stepper protocol (:class:`~deqcore.ode.base.Stepper`): ``start(t0, y0, f0)`` once, then
``attempt(t, y, f, h, active, tol) -> Trial`` and, for the rows that accepted, ``accept(trial, mask, t_new)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import get_kernel, to_host
from ..results import ReturnCode
from .base import Evaluator, ensure_error_sums
from .controller import initial_step

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


def _propose_step(trial, t, h, active, codes, summary, t_end):
    """The host override for a stepper with its own step-size selection (unbatched: one host row): its
    proposed ``trial.h_next`` replaces the PI controller's, clipped to the rest of the span; a proposal below
    the resolution of t ends the row like the controller's own test (DT_TOO_SMALL, or DIVERGED when the
    attempt's error was not finite)."""
    if not active[0]:
        return
    h_next = min(abs(float(trial.h_next)), abs(t_end - float(t[0])))
    if not h_next > 8.0 * T_EPS * max(abs(float(t[0])), 1.0):
        codes[0] = DT_TOO_SMALL if np.isfinite(np.asarray(trial.err_sq, dtype=float)).all() else DIVERGED
        active[0] = False
        summary[1] = 0
        return
    h[0] = h_next


def row_absmax(ev: Evaluator, a):
    """max|a| of every row as float64 (NaN-propagating), in ``a``'s namespace."""
    return ev.xp.max(ev.xp.abs(ev.rows(a)), axis=1).astype(np.float64)


@np.errstate(all="ignore")  # non-finite values are detected and reported as codes, never warned about
def run(ev: Evaluator, stepper, y0, t0: float, t_end: float, direction: float, *, atol, rtol: float,
        max_steps: int, dt0, steady: bool = False, record: bool = False) -> LoopResult:
    """Step from ``t0`` towards ``t_end`` (``inf`` for steady states, ``steady=True``).

    A steady-state row stops at an accepted state where ``max|f| ≤ atol + rtol·max|f(y0)|`` (the residual
    fell below ``atol`` or by the factor ``rtol`` from its start). ``atol`` may be an array broadcastable to a
    row's elements (per-component error weights; then the reference kernels form the error norms).
    """
    xp, R = ev.xp, ev.num_rows
    cx = xp if ev.batched else np  # where the per-row control state lives
    tol = (atol, rtol)
    f0 = ev(t0, y0)     # the evaluator copies a result that lives in a buffer the rhs reuses
    span = abs(t_end - t0)
    if dt0 is None:
        h0 = initial_step(xp, lambda t, y, dh: ev(t + dh, y), np.full(R, t0), y0, f0, direction,
                          ev.full_atol(atol), rtol, stepper.error_exponent, ev.batched, span)
    else:
        floor = 100.0 * T_EPS * max(abs(float(t0)), 1.0)  # a dt0 below t's resolution is raised to it
        h0 = np.full(R, min(max(abs(float(dt0)), floor), span))
    stepper.start(float(t0), y0, f0)
    control = get_kernel("ode_control", cx)
    big = float(np.sqrt(np.finfo(y0.dtype).max))
    m = y0.size // R
    t = cx.full(R, float(t0), dtype=np.float64)
    h = cx.asarray(h0, dtype=np.float64)
    err_prev = cx.ones(R)
    after_reject, ok = cx.zeros(R, dtype=bool), cx.zeros(R, dtype=bool)
    codes = cx.full(R, int(ReturnCode.SUCCESS), dtype=np.int64)
    accepted, rejected = cx.zeros(R, dtype=np.int64), cx.zeros(R, dtype=np.int64)
    nfev = cx.full(R, ev.nfev, dtype=np.int64)
    summary = cx.zeros(2, dtype=np.int64)
    if steady:
        res0 = row_absmax(ev, f0)
        res0 = res0 if cx is xp else to_host(res0)
        threshold = float(np.max(atol)) + rtol * res0
        active = ~(res0 <= threshold)
    else:
        threshold = cx.zeros(R)
        active = cx.ones(R, dtype=bool)
    y, fy = y0, f0
    steps: list[StepRecord] = []
    exponent, h_spare = cx.empty(R), cx.empty(R)
    n_active, num_steps = int(active.sum()), 0
    while n_active:
        if num_steps >= max_steps:
            cx.copyto(codes, int(ReturnCode.MAX_STEPS), where=active)
            break
        if ev.batched:
            t_arg, h_arg = t, (h if direction == 1.0 else direction * h)
        else:
            t_arg, h_arg = float(t[0]), direction * float(h[0])
        trial = stepper.attempt(t_arg, y, fy, h_arg, active if ev.batched else None, tol)
        ensure_error_sums(ev, trial, y, tol)
        num_steps += 1
        res = row_absmax(ev, trial.f1) if steady else trial.err_sq
        if cx is not xp:  # an unbatched problem on a device: its row's numbers in one transfer
            err_sq, y_absmax, res = to_host(xp.stack([trial.err_sq, trial.y_absmax, res]))
        else:
            err_sq, y_absmax = trial.err_sq, trial.y_absmax
        if isinstance(trial.error_exponent, (int, float, np.number)):
            exponent.fill(trial.error_exponent)
        else:
            exponent = cx.asarray(trial.error_exponent, dtype=np.float64)
        h_old = h
        was_active = active.copy() if trial.code is not None else None
        t, h, err_prev, after_reject, active, codes, accepted, rejected, nfev, ok, summary = control(
            err_sq, y_absmax, res, threshold, exponent, t, h, h_spare, err_prev, after_reject, active, codes,
            accepted, rejected, nfev, ok, summary, m, t_end, direction, steady, big, T_EPS, ev.nfev)
        if trial.h_next is not None and not ev.batched:
            _propose_step(trial, t, h, active, codes, summary, t_end)
        if trial.code is not None:
            ended = was_active & ~active & ((codes == DIVERGED) | (codes == DT_TOO_SMALL)) & (trial.code != 0)
            cx.copyto(codes, cx.asarray(trial.code, dtype=np.int64), where=ended)
        # an unbatched stepper got h as a float, so its buffer can be reused; a batched one may keep the array
        h_spare = cx.empty(R) if ev.batched else h_old
        n_ok, n_active = to_host(summary).tolist()  # the step's one transfer to the host
        if n_ok:
            mask = None if n_ok == R else xp.asarray(ok)
            if record:
                steps.append(StepRecord(t_arg, float(t[0]) - t_arg, y, trial.y1, fy, trial.f1, trial.stages))
            y = ev.select(mask, trial.y1, y)
            fy = ev.select(mask, trial.f1, fy)
            stepper.accept(trial, mask, t if ev.batched else float(t[0]))
    host = (to_host(a) for a in (t, codes, accepted, rejected, nfev))
    t, codes, accepted, rejected, nfev = host
    return LoopResult(y, fy, t, codes, steps, num_steps, accepted, rejected, nfev)
