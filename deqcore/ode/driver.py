"""The one adaptive time-stepping loop behind :func:`~deqcore.ode.integrate` and
:func:`~deqcore.ode.steady_state`.

States and derivatives stay on the device. The steppers return the error of an attempt as per-row sums of
the squared scaled error (and ``max|y_new|``), formed by fused kernels in the pass that combines the stages.

- Unbatched problems keep time, step size and controller state as Python floats: one transfer of two
  numbers per step on CuPy (the RHS takes ``t`` as a float, and the accepted steps are recorded on the host).
- Batched problems (steady states) keep one step size, controller history and return code per sample on the
  device; the ``ode_control`` kernel updates them, freezes finished samples, and leaves two counts (accepted
  and still active samples) that are the step's only transfer to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import get_kernel, to_host
from ..results import ReturnCode
from .base import Evaluator
from .controller import initial_step, pi_factor

__all__ = ["run", "StepRecord", "LoopResult"]


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
    """The final state; ``t``, ``codes``, ``accepted``, ``rejected`` and ``nfe`` are host arrays ``(B,)``."""

    y: Any
    f: Any
    t: np.ndarray
    codes: np.ndarray
    steps: list = field(default_factory=list)
    num_steps: int = 0
    accepted: np.ndarray | None = None
    rejected: np.ndarray | None = None
    nfe: np.ndarray | None = None


def error_sums(ev: Evaluator, trial, y, tol):
    """Fill ``trial.err_sq`` and ``trial.y_absmax`` from an error array ``trial.err`` (methods without their
    own fused error kernel): the ``rk_combine_error`` kernel with the error as its only stage."""
    xp = ev.xp
    combine = get_kernel("rk_combine_error", xp)
    ones = xp.ones(ev.num_rows)
    _, trial.err_sq, trial.y_absmax = combine(ev.rows(y), ev.rows(trial.err)[None], ones[:1], ones[:1], ones,
                                              ev.rows(trial.y1), False, tol[0], tol[1])
    return trial


@np.errstate(all="ignore")  # non-finite values are detected and reported below, never warned about
def run(ev: Evaluator, stepper, y0, t0: float, t_end: float, direction: float, *, atol: float, rtol: float,
        max_steps: int, dt0, steady: bool = False, record: bool = False) -> LoopResult:
    """Step from ``t0`` towards ``t_end`` (``inf`` for steady states, ``steady=True``, which stop where
    ``max|f| ≤ atol + rtol·max|y|``, per sample when batched)."""
    B = y0.shape[0] if ev.batched else 1
    f0 = ev(t0, y0)
    span = abs(t_end - t0)
    if dt0 is None:
        h = initial_step(ev.xp, lambda t, y, dh: ev(t + dh, y), np.full(B, t0), y0, f0, direction, atol, rtol,
                         stepper.error_exponent, ev.batched, span)
    else:
        h = np.full(B, min(abs(float(dt0)), span))
    stepper.start(float(t0), y0, f0)
    run_loop = _run_batched if ev.batched else _run_single
    return run_loop(ev, stepper, y0, f0, float(t0), t_end, direction, h, atol=atol, rtol=rtol,
                    max_steps=max_steps, steady=steady, record=record)


def _run_single(ev, stepper, y, fy, t, t_end, direction, h, *, atol, rtol, max_steps, steady, record):
    """The loop of an unbatched problem: step control on Python floats."""
    xp, n = ev.xp, y.size
    h = float(h[0])
    tol = (atol, rtol)
    big = float(np.sqrt(np.finfo(y.dtype).max))
    eps = float(np.finfo(y.dtype).eps)
    on_host = xp is np
    code = ReturnCode.SUCCESS
    err_prev, after_reject = 1.0, False
    accepted = rejected = num_steps = 0
    steps: list[StepRecord] = []
    active = not (steady and _converged(xp, y, fy, atol, rtol))
    while active:
        if num_steps >= max_steps:
            code = ReturnCode.MAX_STEPS
            break
        remaining = abs(t_end - t)
        last = h >= remaining * (1.0 - 1e-12)
        if last:
            h = remaining
        trial = stepper.attempt(t, y, fy, direction * h, None, tol)
        num_steps += 1
        if trial.err_sq is None:
            error_sums(ev, trial, y, tol)
        if on_host:
            err_sq, y_max = float(trial.err_sq[0]), float(trial.y_absmax[0])
        else:
            err_sq, y_max = (float(v) for v in to_host(xp.concatenate([trial.err_sq, trial.y_absmax])))
        err = math.sqrt(err_sq / n)
        ok = err <= 1.0
        if ok:
            t_new = t_end if last else t + direction * h
            if record:
                steps.append(StepRecord(t, t_new - t, y, trial.y1, fy, trial.f1, trial.stages))
            y, fy = trial.y1, trial.f1
            stepper.accept(trial, None, t_new)
            t = t_new
            err_prev = max(err, 1e-4)
            accepted += 1
        else:
            rejected += 1
        h *= pi_factor(err, err_prev, after_reject, trial.error_exponent)
        after_reject = not ok
        if ok:
            if not (y_max < big):
                code = ReturnCode.DIVERGED
                break
            if t == t_end or (steady and _converged(xp, y, fy, atol, rtol, y_max)):
                break
        if h <= 8.0 * eps * max(abs(t), 1.0):
            code = ReturnCode.DT_TOO_SMALL if math.isfinite(err) else ReturnCode.DIVERGED
            break
    return LoopResult(y, fy, np.array([t]), np.array([int(code)]), steps, num_steps, np.array([accepted]),
                      np.array([rejected]), np.array([ev.nfev]))


def _converged(xp, y, f, atol, rtol, y_max=None):
    """The steady-state test of an unbatched problem: max|f| ≤ atol + rtol·max|y| (False for NaN)."""
    res = xp.max(xp.abs(f))
    if y_max is None:
        y_max = xp.max(xp.abs(y))
    return bool(res <= atol + rtol * y_max)


def _run_batched(ev, stepper, y, fy, t0, t_end, direction, h_host, *, atol, rtol, max_steps, steady, record):
    """The loop of a batched problem: per-sample step control on the device (``ode_control``)."""
    xp, R = ev.xp, ev.num_rows
    control = get_kernel("ode_control", xp)
    tol = (atol, rtol)
    big = float(np.sqrt(np.finfo(y.dtype).max))
    eps = float(np.finfo(y.dtype).eps)
    t = xp.full(R, t0, dtype=np.float64)
    h = xp.asarray(h_host, dtype=np.float64)
    err_prev = xp.ones(R)
    after_reject = xp.zeros(R, dtype=bool)
    codes = xp.full(R, int(ReturnCode.SUCCESS), dtype=np.int64)
    accepted, rejected = xp.zeros(R, dtype=np.int64), xp.zeros(R, dtype=np.int64)
    nfe = xp.full(R, ev.nfev, dtype=np.int64)
    if steady:
        rows_f, rows_y = ev.rows(fy), ev.rows(y)
        active = ~(xp.max(xp.abs(rows_f), axis=1) <= atol + rtol * xp.max(xp.abs(rows_y), axis=1))
    else:
        active = xp.ones(R, dtype=bool)
    summary = xp.zeros(2, dtype=np.int64)
    n_active = int(active.sum())
    finite_end = math.isfinite(t_end)
    num_steps = 0
    while n_active:
        if num_steps >= max_steps:
            xp.copyto(codes, int(ReturnCode.MAX_STEPS), where=active)
            break
        if finite_end:
            remaining = xp.abs(t_end - t)
            h = xp.where(h >= remaining * (1.0 - 1e-12), remaining, h)
        trial = stepper.attempt(t, y, fy, h if direction == 1.0 else direction * h, active, tol)
        num_steps += 1
        if trial.err_sq is None:
            error_sums(ev, trial, y, tol)
        ok = xp.empty(R, dtype=bool)
        t, h, err_prev, after_reject, active, codes, accepted, rejected, nfe, ok, summary = control(
            trial.err_sq, trial.y_absmax, ev.rows(trial.f1), t, h, xp.empty(R), err_prev, after_reject,
            active, codes, accepted, rejected, nfe, ok, summary, t_end, direction, trial.error_exponent,
            steady, atol, rtol, big, eps, ev.nfev)
        n_ok, n_active = (int(v) for v in to_host(summary))  # the step's one transfer to the host
        if n_ok:
            mask = None if n_ok == R else ok
            y = ev.select(mask, trial.y1, y)
            fy = ev.select(mask, trial.f1, fy)
            stepper.accept(trial, mask, t)
    return LoopResult(y, fy, to_host(t), to_host(codes), [], num_steps, to_host(accepted), to_host(rejected),
                      to_host(nfe))
