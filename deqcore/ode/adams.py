"""Variable-step Adams methods of order 3 in divided-difference form (Hairer–Nørsett–Wanner I, §III.5).

With ``h = t_{n+1} − t_n``, ``h₁ = t_n − t_{n−1}``, ``h₂ = t_{n−1} − t_{n−2}`` and Newton divided differences
``f[t_n, …]`` of the stored derivatives, the explicit formula integrates the quadratic through
``f_{n−2}, f_{n−1}, f_n`` over the new step::

    y_{n+1} = y_n + h f_n + h²/2 · f[t_n, t_{n−1}] + (h³/3 + h₁h²/2) · f[t_n, t_{n−1}, t_{n−2}]

The implicit (Moulton) corrector replaces the last divided difference by ``f[t_{n+1}, t_n, t_{n−1}]``. The
local error estimate is the next Newton term, with the third divided difference
``f[t_{n+1}, t_n, t_{n−1}, t_{n−2}]`` (evaluated at the prediction); for the PECE corrector it is doubled,
since the corrected state also carries the predictor's error multiplied by h·β₀·∂f/∂y, which that term does
not see (without it, steps near the pericentre of an eccentric orbit exceed the tolerance threefold).
Both methods start with two Bogacki–Shampine 3(2) steps, which fill the history.

>>> import numpy as np, deqcore as dq
>>> ode = dq.integrate(lambda t, y: -y, np.array([1.0]), (0.0, 2.0), dq.VCABM3(), atol=1e-9, rtol=1e-9)
>>> bool(abs(ode.ys[-1, 0] - np.exp(-2.0)) < 1e-7)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import to_host
from .base import Evaluator, ODEMethod, Trial, kernel_for
from .explicit import bs3_stepper

__all__ = ["VCAB3", "VCABM3", "AdamsStepper"]


class AdamsStepper:
    """Adams–Bashforth 3 (``corrector=False``, one f per step) or PECE Adams–Bashforth–Moulton 3 (two).

    The history is the last three derivatives and the last two step sizes (per sample when batched; before
    two steps are accepted, dummy unit steps keep the divided differences finite). A sample with fewer than
    two accepted steps takes a Bogacki–Shampine 3(2) step instead. That start-up is decided per sample: while
    some active samples start up and others do not, both kinds of step are attempted and each sample keeps
    its own, so a batched solve takes the steps each sample would take alone. The prediction is one
    ``adams_predict`` kernel; the correction, its error estimate, scaled norm and ``max|y_new|`` one
    ``adams_correct_error`` pass.
    """

    error_exponent = 4

    def __init__(self, ev: Evaluator, corrector: bool):
        self.ev, self.corrector = ev, corrector
        self.starter = bs3_stepper(ev)
        #: the first step is the starter's (error ∝ h³): the driver sizes it with this exponent, not the Adams
        #: steps' 4, which allowed a first step of 1/λ on y' = −λy, where Bogacki–Shampine's estimate is 0
        self.first_step_exponent = self.starter.error_exponent
        self._predict = kernel_for("adams_predict", ev)
        self._correct = kernel_for("adams_correct_error", ev)

    def start(self, t0, y0, f0):
        ev = self.ev
        self.fs = [f0, f0, f0]
        if ev.batched:
            self.h1, self.h2 = ev.row_values(1.0, 1.0)
            self.count = ev.xp.zeros(ev.num_rows, dtype=np.int64)
        else:
            self.h1 = self.h2 = 1.0
            self.count = 0
        self._starting = True  # some sample may still take start-up steps

    def attempt(self, t, y, fy, h, active=None, tol=None) -> Trial:
        self._h = h
        ev = self.ev
        if not ev.batched:
            if self.count < 2:
                return self.starter.attempt(t, y, fy, h, active, tol)
            return self._adams(t, y, fy, h, tol)
        if not self._starting:
            return self._adams(t, y, fy, h, tol)
        xp = ev.xp
        live = self.count < 2 if active is None else active & (self.count < 2)
        started = self.count >= 2 if active is None else active & (self.count >= 2)
        n_live, n_started = (int(v) for v in to_host(xp.stack([live.sum(), started.sum()])))
        if n_live == 0:
            self._starting = False  # a frozen sample never steps again
            return self._adams(t, y, fy, h, tol)
        first = self.starter.attempt(t, y, fy, h, active, tol)
        if n_started == 0:
            return first
        second = self._adams(t, y, fy, h, tol)
        pick = lambda a, b: xp.where(live, a, b)  # noqa: E731  (per-row numbers)
        return Trial(ev.select(live, first.y1, second.y1), ev.select(live, first.f1, second.f1), None,
                     pick(float(first.error_exponent), float(second.error_exponent)),
                     err_sq=pick(first.err_sq, second.err_sq), y_absmax=pick(first.y_absmax, second.y_absmax))

    def _adams(self, t, y, fy, h, tol) -> Trial:
        ev = self.ev
        atol, rtol = (1.0, 1.0) if tol is None else tol
        rows = ev.rows
        hr, h1, h2 = ev.row_values(h, self.h1, self.h2)
        f0, f1, f2 = (rows(f) for f in self.fs)
        yrows = rows(y)
        y_pred = self._predict(yrows, f0, f1, f2, hr, h1, h2)
        t_new = t + h if not ev.autonomous else 0.0
        f_pred = ev(t_new, y_pred.reshape(y.shape))
        new = ev.xp.empty_like(yrows) if self.corrector else y_pred
        y_new, err_sq, y_absmax = self._correct(yrows, y_pred, rows(f_pred), f0, f1, f2, hr, h1, h2, new,
                                                self.corrector, ev.row_atol(atol), rtol)
        y_new = y_new.reshape(y.shape)
        f_new = ev(t_new, y_new) if self.corrector else f_pred
        return Trial(y_new, f_new, None, self.error_exponent, err_sq=err_sq, y_absmax=y_absmax)

    def accept(self, trial, mask, t_new):
        """Shift the history in the samples that accepted (``mask`` a device bool array, None for all)."""
        ev, h = self.ev, self._h
        if mask is None:
            self.fs = [trial.f1] + self.fs[:2]
            self.h1, self.h2 = h, self.h1
            self.count = self.count + 1
            return
        xp = ev.xp
        self.fs = [ev.select(mask, new, old) for new, old in zip([trial.f1] + self.fs[:2], self.fs)]
        self.h1, self.h2 = xp.where(mask, h, self.h1), xp.where(mask, self.h1, self.h2)
        self.count = self.count + mask


@dataclass(frozen=True)
class VCAB3(ODEMethod):
    """Variable-coefficient Adams–Bashforth of order 3: one f per step (the cheapest per step; a smaller
    stability region than Tsit5). Error estimate from the next divided difference at the new point.

    >>> import numpy as np, deqcore as dq
    >>> sol = dq.integrate(lambda t, y: -y, np.array([1.0]), (0.0, 1.0), dq.VCAB3(), atol=1e-8, rtol=1e-8)
    >>> bool(abs(sol.ys[-1, 0] - np.exp(-1.0)) < 1e-6)
    True
    """

    order = 3

    def stepper(self, ev: Evaluator, jac=None):
        return AdamsStepper(ev, corrector=False)


@dataclass(frozen=True)
class VCABM3(ODEMethod):
    """Variable-coefficient Adams–Bashforth–Moulton of order 3 in PECE mode: two f per step, a larger
    stability region than VCAB3 and a Milne-type error estimate (twice AM4 − AM3). The default for steady states.

    >>> import numpy as np, deqcore as dq
    >>> sol = dq.integrate(lambda t, y: -y, np.array([1.0]), (0.0, 1.0), dq.VCABM3(), atol=1e-8, rtol=1e-8)
    >>> bool(abs(sol.ys[-1, 0] - np.exp(-1.0)) < 1e-6)
    True
    """

    order = 3

    def stepper(self, ev: Evaluator, jac=None):
        return AdamsStepper(ev, corrector=True)
