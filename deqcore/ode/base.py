"""Pieces every ODE method shares: the right-hand-side evaluator that counts calls, row views and per-sample
step sizes for the step kernels, masked updates, the record of one attempted step and the stepper protocol.

A stepper (what ``ODEMethod.stepper(ev, jac)`` returns) has ``error_exponent`` (the power of h its local
error estimate scales with, used for the first step) and three methods, called by the one loop in
:mod:`deqcore.ode.driver`:

- ``start(t0, y0, f0)``: once, before the first attempt;
- ``attempt(t, y, f, h, active, tol) -> Trial``: a step of size ``h`` from ``(t, y)`` with ``f = f(t, y)``
  (``t``, ``h`` Python floats for an unbatched problem, per-row float64 device arrays for a batched one;
  ``active`` the device mask of rows still running, None when unbatched; ``tol = (atol, rtol)``);
- ``accept(trial, mask, t_new)``: after the rows in ``mask`` (a device bool array; None for all rows)
  accepted ``trial``.

The error of an attempt has one form: per-row sums of the squared scaled error ``Trial.err_sq`` with
``Trial.y_absmax`` = max|y_new| per row (arrays ``(rows,)``; for an unbatched problem Python floats will do);
a stepper without a fused error kernel may leave ``err_sq`` None and give the error array ``Trial.err``, which
:func:`ensure_error_sums` reduces.

Two optional fields of :class:`Trial` let a stepper steer the loop: ``h_next`` (a method with its own
step-size and order selection, such as BDF, proposes the next step size; unbatched problems) and ``code``
(the return code to report, e.g. LINEAR_SOLVE_FAILED, when a row ends on that failed attempt).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..backend import get_kernel

__all__ = ["Evaluator", "Trial", "ODEMethod", "ensure_error_sums", "kernel_for"]


class Evaluator:
    """Calls ``rhs(t, y, *args)`` and counts calls; views states as rows for the step kernels.

    Unbatched problems keep times and step sizes as Python floats; batched problems (steady states, which
    are autonomous) keep them per sample as float64 arrays ``(B,)`` on the device. ``autonomous`` problems
    always receive ``t = 0.0``.
    """

    def __init__(self, xp, rhs: Callable, args: tuple, batched: bool, autonomous: bool, shape, dtype,
                 atol_per_component: bool = False):
        self.xp, self.rhs, self.args = xp, rhs, args
        self.batched, self.autonomous = batched, autonomous
        self.shape, self.dtype = tuple(shape), dtype
        self.num_rows = self.shape[0] if batched else 1
        self.nfev = 0
        #: an array atol: the error norms are formed by the reference kernels (which broadcast it)
        self.atol_per_component = atol_per_component

    def __call__(self, t, y):
        self.nfev += 1
        out = self.rhs(0.0 if self.autonomous else t if type(t) is float else host_float(t), y, *self.args)
        shape = getattr(out, "shape", None)
        if shape != self.shape and (shape is None or tuple(shape) != self.shape):
            raise ValueError(f"rhs must return an array of shape {self.shape} (the shape of y0), got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        dtype = out.dtype
        if dtype is not self.dtype and dtype != self.dtype:
            kind, size = np.dtype(out.dtype).kind, np.dtype(out.dtype).itemsize
            if kind != "f" or size < np.dtype(self.dtype).itemsize:
                raise TypeError(f"rhs must return a real floating array of y0's dtype {np.dtype(self.dtype)}, "
                                f"got {np.dtype(out.dtype)}")
            return out.astype(self.dtype)
        return out.copy() if _maybe_shared(out) else out

    def full_atol(self, atol):
        """``atol`` as the error weights broadcast against a state (a float stays a float)."""
        if np.ndim(atol) == 0:
            return atol
        return self.xp.broadcast_to(self.xp.asarray(atol, dtype=self.dtype), self.shape)

    def row_atol(self, atol):
        """``atol`` for the row kernels: a float, or an array broadcasting against ``(rows, elements)``."""
        if np.ndim(atol) == 0:
            return atol
        return self.rows(self.full_atol(atol))

    def rows(self, a):
        """``a`` (of the state's shape) as a ``(rows, elements)`` view: one row per sample, or one row."""
        return a.reshape(self.num_rows, -1)

    def row_values(self, *values):
        """Per-row float64 device arrays ``(rows,)`` from Python floats (unbatched: one host transfer for all)
        or per-sample arrays (batched)."""
        xp = self.xp
        if self.batched:
            return tuple(xp.full(self.num_rows, v, dtype=np.float64) if np.ndim(v) == 0
                         else xp.asarray(v, dtype=np.float64) for v in values)
        host = np.array([host_float(v) for v in values])
        dev = host if xp is np else xp.asarray(host)
        return (dev,) if len(values) == 1 else tuple(dev[i:i + 1] for i in range(len(values)))

    def steps(self, h, like):
        """Per-sample step sizes broadcasting against ``like`` in its dtype (a float when unbatched)."""
        if not self.batched:
            return host_float(h)
        return self.xp.asarray(h, dtype=like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))

    def select(self, mask, a, b):
        """``a`` in the samples where the device ``mask`` holds, else ``b``; ``mask=None`` means all."""
        if mask is None:
            return a
        m = mask.reshape((-1,) + (1,) * (a.ndim - 1))
        return self.xp.where(m, a, b)


def _maybe_shared(out) -> bool:
    """Whether an array returned by ``rhs`` may be written again by a later call: a view of other memory, or
    an array something else still refers to (a preallocated buffer). A fresh result is referenced only by
    the caller's variable and ``getrefcount``'s argument; such results are kept without a copy."""
    return getattr(out, "base", None) is not None or sys.getrefcount(out) > 3


def kernel_for(name: str, ev: "Evaluator"):
    """The kernel ``name`` for the evaluator's namespace (the reference one for per-component ``atol``)."""
    return get_kernel(name, ev.xp, "reference" if ev.atol_per_component else None)


def ensure_error_sums(ev: "Evaluator", trial: "Trial", y, tol):
    """Fill ``trial.err_sq`` and ``trial.y_absmax`` from the error array ``trial.err`` (steppers without a
    fused error kernel): the ``rk_combine_error`` kernel with the error as its only stage."""
    if trial.err_sq is not None:
        return trial
    xp = ev.xp
    combine = kernel_for("rk_combine_error", ev)
    ones = xp.ones(ev.num_rows)
    _, trial.err_sq, trial.y_absmax = combine(ev.rows(y), ev.rows(trial.err)[None], ones[:1], ones[:1], ones,
                                              ev.rows(trial.y1), False, ev.row_atol(tol[0]), tol[1])
    return trial


def host_float(t) -> float:
    """A Python float from a float or a one-element host array."""
    return t if type(t) is float else float(np.asarray(t).reshape(-1)[0])


@dataclass
class Trial:
    """One attempted step from ``y0`` (f0 = f(t, y0)) to ``y1`` with ``f1 = f(t + h, y1)``.

    ``error_exponent`` is the power of h the local error scales with (a number, or per row an array ``(rows,)``
    when rows took different kinds of steps) and ``stages`` the Runge–Kutta stage derivatives when the method
    has its own dense output. Methods with fused kernels report the error as ``err_sq``, the per-row sums of
    the squared scaled error (``(rows,)``, float64, or a Python float for an unbatched problem), with
    ``y_absmax`` = ``max|y1|`` per row; others give the error array ``err`` and :func:`ensure_error_sums`
    reduces it.
    """

    y1: Any
    f1: Any
    err: Any
    error_exponent: int
    stages: list | None = None
    err_sq: Any = None
    y_absmax: Any = None
    #: the step size the method wants next (a positive float), for methods with their own step-size (and
    #: order) selection; the driver uses it instead of the PI factor (unbatched problems only)
    h_next: float | None = None
    #: a return code for the rows of a failed attempt (e.g. LINEAR_SOLVE_FAILED: an int, or per row an int
    #: array, 0 = none): reported instead of DIVERGED/DT_TOO_SMALL when those rows end on this attempt
    code: Any = None


class ODEMethod:
    """Base class of the solver settings objects (``Tsit5``, ``VCAB3``, ``VCABM3``, ``Rodas3``)."""

    #: order of the propagated solution
    order: int = 0

    def stepper(self, ev: Evaluator, jac=None):  # pragma: no cover - every method overrides it
        raise NotImplementedError

