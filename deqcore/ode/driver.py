"""The one adaptive time-stepping loop behind :func:`~deqcore.ode.integrate` and
:func:`~deqcore.ode.steady_state`.

Step control lives on the host (times, step sizes, error norms: a few floats per sample, one small transfer
per step on CuPy); states and derivatives stay on the device. Batched problems (steady states) get one step
size, controller history and return code per sample; samples that finish are frozen.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..backend import to_host
from ..results import ReturnCode
from .base import Evaluator
from .controller import PIController, error_norm, initial_step


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
    y: Any
    f: Any
    t: np.ndarray
    codes: np.ndarray
    steps: list = field(default_factory=list)
    num_steps: int = 0
    accepted: np.ndarray | None = None
    rejected: np.ndarray | None = None
    nfe: np.ndarray | None = None


@np.errstate(all="ignore")  # non-finite values are detected and reported below, never warned about
def run(ev: Evaluator, stepper, y0, t0: float, t_end: float, direction: float, *, atol: float, rtol: float,
        max_steps: int, dt0, converged: Callable | None = None, record: bool = False) -> LoopResult:
    """Step from ``t0`` towards ``t_end`` (``inf`` for steady states, which stop when ``converged(y, f)``,
    a host bool per sample, holds)."""
    xp, batched = ev.xp, ev.batched
    B = y0.shape[0] if batched else 1
    f0 = ev(np.full(B, t0), y0)
    span = abs(t_end - t0)
    if dt0 is None:
        h = initial_step(xp, lambda t, y, dh: ev(t + dh, y), np.full(B, t0), y0, f0, direction, atol, rtol,
                         stepper.error_exponent, batched, span)
    else:
        h = np.full(B, min(abs(float(dt0)), span))
    t = np.full(B, float(t0))
    stepper.start(t, y0, f0)
    y, fy = y0, f0
    codes = np.full(B, int(ReturnCode.SUCCESS))
    active = np.ones(B, dtype=bool)
    err_prev = np.ones(B)
    after_reject = np.zeros(B, dtype=bool)
    accepted = np.zeros(B, dtype=int)
    rejected = np.zeros(B, dtype=int)
    nfe = np.zeros(B, dtype=int)
    steps: list[StepRecord] = []
    big = float(np.sqrt(np.finfo(y0.dtype).max))
    eps = float(np.finfo(y0.dtype).eps)
    if converged is not None:
        active &= ~converged(y, fy)
    nfe[:] = ev.nfev
    num_steps = 0
    while active.any():
        if num_steps >= max_steps:
            codes[active] = ReturnCode.MAX_STEPS
            break
        remaining = np.abs(t_end - t)
        last = h >= remaining * (1.0 - 1e-12)
        h = np.where(last, remaining, h)
        trial = stepper.attempt(t, y, fy, direction * h, active)
        num_steps += 1
        err = error_norm(xp, trial.err, y, trial.y1, atol, rtol, batched)
        ok = active & (err <= 1.0)
        finite = np.isfinite(err)
        if ok.any():
            t_new = np.where(last, t_end, t + direction * h)
            if record:
                steps.append(StepRecord(float(t[0]), float(t_new[0] - t[0]), y, trial.y1, fy, trial.f1,
                                        trial.stages))
            y = ev.select(ok, trial.y1, y)
            fy = ev.select(ok, trial.f1, fy)
            stepper.accept(trial, ok, t_new)
            t = np.where(ok, t_new, t)
            err_prev = np.where(ok, np.maximum(err, 1e-4), err_prev)
        fac = PIController(trial.error_exponent).factor(err, err_prev, after_reject)
        h = np.where(active, h * fac, h)
        after_reject = active & ~ok
        accepted += ok
        rejected += active & ~ok
        nfe[active] = ev.nfev
        done = ok & (t == t_end)
        if converged is not None:
            done |= ok & converged(y, fy)
        active &= ~done
        if ok.any():
            blown = ok & ~_below(xp, y, big, batched)
            codes[blown] = ReturnCode.DIVERGED
            active &= ~blown
        tiny = active & (h <= 8.0 * eps * np.maximum(np.abs(t), 1.0))
        codes[tiny] = np.where(finite[tiny], int(ReturnCode.DT_TOO_SMALL), int(ReturnCode.DIVERGED))
        active &= ~tiny
    return LoopResult(y, fy, t, codes, steps, num_steps, accepted, rejected, nfe)


@functools.lru_cache(maxsize=None)
def _controller(error_exponent: int) -> PIController:
    return PIController(error_exponent)


def _below(xp, y, bound, batched):
    """Host bool per sample: every entry of y is finite and below ``bound`` in magnitude."""
    axis = tuple(range(1, y.ndim)) if batched else None
    ok = xp.all(xp.abs(y) < bound, axis=axis)
    return np.atleast_1d(to_host(ok))
