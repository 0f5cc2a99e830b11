"""Explicit embedded Runge–Kutta methods: :class:`Tsit5` (and the Bogacki–Shampine 3(2) pair used to
start the Adams methods).

>>> import numpy as np, deqcore as dq
>>> ode = dq.integrate(lambda t, y: -y, np.array([1.0]), (0.0, 1.0), dq.Tsit5(), atol=1e-10, rtol=1e-10)
>>> bool(abs(ode.ys[-1, 0] - np.exp(-1.0)) < 1e-9)
True
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Evaluator, ODEMethod, Trial
from .tableaus import BS3, TSIT5, ButcherTableau

__all__ = ["Tsit5", "ExplicitRKStepper"]


class ExplicitRKStepper:
    """Takes steps with an FSAL embedded pair; ``stages`` are returned for dense output and adjoints."""

    def __init__(self, ev: Evaluator, tableau: ButcherTableau):
        self.ev, self.tab = ev, tableau
        self.error_exponent = tableau.error_order + 1
        self._a = ev.xp.asarray(tableau.a, dtype=ev.dtype)
        self._b_err = ev.xp.asarray(tableau.b_err, dtype=ev.dtype)

    def start(self, t0, y0, f0):
        pass

    def attempt(self, t, y, fy, h, active=None) -> Trial:
        tab, ev, xp = self.tab, self.ev, self.ev.xp
        hb = ev.steps(h, y)
        # all stage derivatives in one buffer: each stage input is then one small matrix product
        ks = xp.empty((tab.stages,) + tuple(y.shape), dtype=y.dtype)
        ks[0] = fy
        flat = ks.reshape(tab.stages, -1)
        for i in range(1, tab.stages):
            stage_y = y + hb * (self._a[i, :i] @ flat[:i]).reshape(y.shape)
            ks[i] = ev(t + tab.c[i] * h, stage_y)
        err = hb * (self._b_err @ flat).reshape(y.shape)
        # FSAL: the last stage is evaluated at y_new, so it is f1
        return Trial(stage_y, ks[-1], err, self.error_exponent, ks)

    def accept(self, trial, mask, t_new):
        pass


@dataclass(frozen=True)
class Tsit5(ODEMethod):
    """Tsitouras' 5(4) Runge–Kutta pair (2011): 7 stages, first-same-as-last (6 f per step), an embedded
    4th-order error estimate and a free 4th-order dense interpolant. The default non-stiff method.

    >>> import numpy as np, deqcore as dq
    >>> sol = dq.integrate(lambda t, y: -y, np.array([1.0]), (0.0, 1.0), dq.Tsit5(), atol=1e-10, rtol=1e-10)
    >>> bool(abs(sol.ys[-1, 0] - np.exp(-1.0)) < 1e-9)
    True
    """

    order = 5

    def stepper(self, ev: Evaluator, jac=None):
        return ExplicitRKStepper(ev, TSIT5)

    @property
    def tableau(self) -> ButcherTableau:
        return TSIT5


def bs3_stepper(ev: Evaluator) -> ExplicitRKStepper:
    """The Bogacki–Shampine 3(2) stepper (3 f per step, FSAL)."""
    return ExplicitRKStepper(ev, BS3)
