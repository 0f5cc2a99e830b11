"""Explicit embedded Runge–Kutta methods: :class:`Tsit5` (and the Bogacki–Shampine 3(2) pair used to
start the Adams methods).

>>> import numpy as np, deqcore as dq
>>> ode = dq.integrate(lambda t, y: -y, np.array([1.0]), (0.0, 1.0), dq.Tsit5(), atol=1e-10, rtol=1e-10)
>>> bool(abs(ode.ys[-1, 0] - np.exp(-1.0)) < 1e-9)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import get_kernel
from .base import Evaluator, ODEMethod, Trial, kernel_for
from .tableaus import BS3, TSIT5, ButcherTableau

__all__ = ["Tsit5", "ExplicitRKStepper"]


class ExplicitRKStepper:
    """Takes steps with an embedded pair; ``stages`` are returned for dense output and adjoints.

    Each stage input is one ``rk_stage`` kernel over the stage buffer; the error estimate, its scaled norm
    and ``max|y_new|`` come from one ``rk_combine_error`` pass (``tol=(atol, rtol)``; without ``tol`` no
    error is computed, as when a step is replayed).
    """

    def __init__(self, ev: Evaluator, tableau: ButcherTableau):
        self.ev, self.tab = ev, tableau
        self.error_exponent = tableau.error_order + 1
        xp = ev.xp
        self._a = [xp.asarray(tableau.a[i, :i]) for i in range(tableau.stages)]
        self._b = xp.asarray(tableau.b)
        self._e = xp.asarray(tableau.b_err)
        self._c = [float(c) for c in tableau.c]
        self._stage = get_kernel("rk_stage", xp)
        self._combine = kernel_for("rk_combine_error", ev)

    def start(self, t0, y0, f0):
        pass

    def attempt(self, t, y, fy, h, active=None, tol=None) -> Trial:
        tab, ev = self.tab, self.ev
        (hr,) = ev.row_values(h)
        # all stage derivatives in one buffer, seen as (stages, rows, elements) by the kernels
        ks = ev.xp.empty((tab.stages,) + tuple(y.shape), dtype=y.dtype)
        ks[0] = fy
        krows, yrows = ks.reshape(tab.stages, ev.num_rows, -1), ev.rows(y)
        timed = not ev.autonomous
        for i in range(1, tab.stages):
            stage_y = self._stage(yrows, krows, self._a[i], hr).reshape(y.shape)
            ks[i] = ev(t + self._c[i] * h if timed else 0.0, stage_y)
        if tab.fsal:  # the last stage is evaluated at y_new, so it is f1
            y1, f1 = stage_y, ks[-1]
            if tol is None:
                return Trial(y1, f1, None, self.error_exponent, ks)
            new_rows = ev.rows(y1)
        else:
            new_rows = ev.xp.empty_like(yrows)
        atol, rtol = (1.0, 1.0) if tol is None else tol
        new_rows, err_sq, y_absmax = self._combine(yrows, krows, self._b, self._e, hr, new_rows, not tab.fsal,
                                                   ev.row_atol(atol), rtol)
        if not tab.fsal:
            y1 = new_rows.reshape(y.shape)
            f1 = ev(t + h if timed else 0.0, y1)
        if tol is None:
            return Trial(y1, f1, None, self.error_exponent, ks)
        return Trial(y1, f1, None, self.error_exponent, ks, err_sq=err_sq, y_absmax=y_absmax)

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


#: a second error estimate for the Bogacki–Shampine pair: (y_new − y_mid) / 8, with y_mid = y + h k₂ the
#: midpoint rule's solution (order 2). On y' = λy with z = hλ it is z³/48, the leading term of the pair's own
#: estimate −z³(z + 1)/48, which vanishes at z = −1 where the step's true error is e⁻¹ − 1/3 ≈ 0.035·|y|
BS3_GUARD = np.array([1.0 / 36.0, -1.0 / 12.0, 1.0 / 18.0, 0.0])


class GuardedBS3Stepper(ExplicitRKStepper):
    """The Bogacki–Shampine 3(2) stepper with the larger of two error estimates per row: the pair's own, and
    :data:`BS3_GUARD` (the same to leading order, but never 0 where the step is wrong). The pair's estimate
    alone accepts a step of hλ ≈ −1 on y' = λy with a 3.5 % error at any tolerance (SciPy's RK23 does: on
    y' = −10⁷y at rtol 10⁻⁵ its first step's error is 7·10³ times the tolerance)."""

    def __init__(self, ev: Evaluator, tableau: ButcherTableau = BS3):
        super().__init__(ev, tableau)
        self._guard = ev.xp.asarray(BS3_GUARD)

    def attempt(self, t, y, fy, h, active=None, tol=None) -> Trial:
        trial = super().attempt(t, y, fy, h, active, tol)
        if tol is None:
            return trial
        ev = self.ev
        (hr,) = ev.row_values(h)
        krows = trial.stages.reshape(self.tab.stages, ev.num_rows, -1)
        _, err_sq, _ = self._combine(ev.rows(y), krows, self._b, self._guard, hr, ev.rows(trial.y1), False,
                                     ev.row_atol(tol[0]), tol[1])
        trial.err_sq = ev.xp.maximum(trial.err_sq, err_sq)     # (NaN-propagating)
        return trial


def bs3_stepper(ev: Evaluator) -> ExplicitRKStepper:
    """The Bogacki–Shampine 3(2) stepper (3 f per step, FSAL) with the guarded error estimate of
    :class:`GuardedBS3Stepper`.

    >>> import numpy as np, deqcore as dq
    >>> from deqcore.ode.base import Evaluator
    >>> lam = 1e7
    >>> ev = Evaluator(np, lambda t, y: -lam * y, (), False, False, (1,), np.float64)
    >>> y0 = np.ones(1); trial = bs3_stepper(ev).attempt(0.0, y0, -lam * y0, 1.0 / lam, None, (1e-6, 1e-5))
    >>> float(trial.y1[0]), bool(np.sqrt(trial.err_sq[0]) > 1)     # 1/3 where e⁻¹ = 0.368: rejected
    (0.33333333333333337, True)
    """
    return GuardedBS3Stepper(ev, BS3)
