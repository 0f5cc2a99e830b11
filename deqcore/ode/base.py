"""Pieces every ODE method shares: the right-hand-side evaluator that counts calls, per-sample step sizes on
the device, masked updates, and the record of one attempted step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Evaluator", "Trial", "ODEMethod"]


class Evaluator:
    """Calls ``rhs(t, y, *args)`` and counts calls.

    Times are host arrays of shape ``(B,)``; unbatched problems get a Python float. ``autonomous`` problems
    (steady states, the only batched problems) always receive ``t = 0.0``.
    """

    def __init__(self, xp, rhs: Callable, args: tuple, batched: bool, autonomous: bool, shape, dtype):
        self.xp, self.rhs, self.args = xp, rhs, args
        self.batched, self.autonomous = batched, autonomous
        self.shape, self.dtype = tuple(shape), dtype
        self.nfev = 0

    def __call__(self, t, y):
        self.nfev += 1
        tt = 0.0 if self.autonomous else float(np.asarray(t).reshape(-1)[0])
        out = self.rhs(tt, y, *self.args)
        if getattr(out, "shape", None) is None or tuple(out.shape) != self.shape:
            raise ValueError(f"rhs must return an array of shape {self.shape} (the shape of y0), got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        return out if out.dtype == self.dtype else out.astype(self.dtype)

    def steps(self, h, like):
        """Host per-sample step sizes: a float (unbatched) or a device array broadcasting against ``like``."""
        if not self.batched:
            return float(np.asarray(h).reshape(-1)[0])
        return self.xp.asarray(h, dtype=like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))

    def select(self, mask, a, b):
        """``a`` where the host per-sample ``mask`` holds, else ``b`` (a or b may be None: then the other)."""
        if not self.batched:
            return a if bool(mask[0]) else b
        if mask.all():
            return a
        if not mask.any():
            return b
        m = self.xp.asarray(mask).reshape((-1,) + (1,) * (a.ndim - 1))
        return self.xp.where(m, a, b)


@dataclass
class Trial:
    """One attempted step from ``y0`` (f0 = f(t, y0)) to ``y1`` with ``f1 = f(t + h, y1)``.

    ``err`` is the local error estimate, ``error_exponent`` the power of h it scales with, and ``stages``
    the Runge–Kutta stage derivatives when the method has its own dense output.
    """

    y1: Any
    f1: Any
    err: Any
    error_exponent: int
    stages: list | None = None


class ODEMethod:
    """Base class of the solver settings objects (``Tsit5``, ``VCAB3``, ``VCABM3``, ``Rodas3``)."""

    #: order of the propagated solution
    order: int = 0

    def stepper(self, ev: Evaluator, jac=None):  # pragma: no cover - every method overrides it
        raise NotImplementedError

