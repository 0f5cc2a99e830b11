"""Pieces every ODE method shares: the right-hand-side evaluator that counts calls, row views and per-sample
step sizes for the step kernels, masked updates, and the record of one attempted step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Evaluator", "Trial", "ODEMethod"]


class Evaluator:
    """Calls ``rhs(t, y, *args)`` and counts calls; views states as rows for the step kernels.

    Unbatched problems keep times and step sizes as Python floats; batched problems (steady states, which
    are autonomous) keep them per sample as float64 arrays ``(B,)`` on the device. ``autonomous`` problems
    always receive ``t = 0.0``.
    """

    def __init__(self, xp, rhs: Callable, args: tuple, batched: bool, autonomous: bool, shape, dtype):
        self.xp, self.rhs, self.args = xp, rhs, args
        self.batched, self.autonomous = batched, autonomous
        self.shape, self.dtype = tuple(shape), dtype
        self.num_rows = self.shape[0] if batched else 1
        self.nfev = 0

    def __call__(self, t, y):
        self.nfev += 1
        out = self.rhs(0.0 if self.autonomous else host_float(t), y, *self.args)
        if getattr(out, "shape", None) is None or tuple(out.shape) != self.shape:
            raise ValueError(f"rhs must return an array of shape {self.shape} (the shape of y0), got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        return out if out.dtype == self.dtype else out.astype(self.dtype)

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


def host_float(t) -> float:
    """A Python float from a float or a one-element host array."""
    return t if type(t) is float else float(np.asarray(t).reshape(-1)[0])


@dataclass
class Trial:
    """One attempted step from ``y0`` (f0 = f(t, y0)) to ``y1`` with ``f1 = f(t + h, y1)``.

    ``error_exponent`` is the power of h the local error scales with and ``stages`` the Runge–Kutta stage
    derivatives when the method has its own dense output. Methods with fused kernels report the error as
    ``err_sq``, the per-row sums of the squared scaled error (``(rows,)``, float64), with ``y_absmax`` =
    ``max|y1|`` per row; others give the error array ``err`` and the driver reduces it.
    """

    y1: Any
    f1: Any
    err: Any
    error_exponent: int
    stages: list | None = None
    err_sq: Any = None
    y_absmax: Any = None


class ODEMethod:
    """Base class of the solver settings objects (``Tsit5``, ``VCAB3``, ``VCABM3``, ``Rodas3``)."""

    #: order of the propagated solution
    order: int = 0

    def stepper(self, ev: Evaluator, jac=None):  # pragma: no cover - every method overrides it
        raise NotImplementedError

