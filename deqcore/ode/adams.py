"""Variable-step Adams methods of order 3 in divided-difference form (Hairer–Nørsett–Wanner I, §III.5).

With ``h = t_{n+1} − t_n``, ``h₁ = t_n − t_{n−1}``, ``h₂ = t_{n−1} − t_{n−2}`` and Newton divided differences
``f[t_n, …]`` of the stored derivatives, the explicit formula integrates the quadratic through
``f_{n−2}, f_{n−1}, f_n`` over the new step::

    y_{n+1} = y_n + h f_n + h²/2 · f[t_n, t_{n−1}] + (h³/3 + h₁h²/2) · f[t_n, t_{n−1}, t_{n−2}]

The implicit (Moulton) corrector replaces the last divided difference by ``f[t_{n+1}, t_n, t_{n−1}]`` and the
local error is the next Newton term, with the third divided difference ``f[t_{n+1}, t_n, t_{n−1}, t_{n−2}]``.
Both methods start with two Bogacki–Shampine 3(2) steps, which fill the history.

>>> import numpy as np, deqcore as dq
>>> ode = dq.integrate(lambda t, y: -y, np.array([1.0]), (0.0, 2.0), dq.VCABM3(), atol=1e-9, rtol=1e-9)
>>> bool(abs(ode.ys[-1, 0] - np.exp(-2.0)) < 1e-7)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Evaluator, ODEMethod, Trial
from .explicit import bs3_stepper

__all__ = ["VCAB3", "VCABM3", "AdamsStepper"]


class AdamsStepper:
    """Adams–Bashforth 3 (``corrector=False``, one f per step) or PECE Adams–Bashforth–Moulton 3 (two)."""

    error_exponent = 4

    def __init__(self, ev: Evaluator, corrector: bool):
        self.ev, self.corrector = ev, corrector
        self.starter = bs3_stepper(ev)

    def start(self, t0, y0, f0):
        B = np.asarray(t0).size
        # distinct dummy times keep the divided differences of samples frozen during start-up finite
        self.times = [np.asarray(t0, dtype=float).reshape(B) - k for k in range(3)]
        self.fs = [f0, f0, f0]
        self.count = np.zeros(B, dtype=int)

    def attempt(self, t, y, fy, h, active) -> Trial:
        if self.count[active].min(initial=2) < 2:
            return self.starter.attempt(t, y, fy, h)
        ev = self.ev
        t0, t1, t2 = self.times
        f0, f1, f2 = self.fs
        hb, h1, h2 = ev.steps(h, y), ev.steps(t0 - t1, y), ev.steps(t1 - t2, y)
        d1 = (f0 - f1) / h1
        d2 = (d1 - (f1 - f2) / h2) / (h1 + h2)
        w2 = hb * hb * (hb / 3.0 + h1 / 2.0)  # ∫_0^h s (s + h₁) ds
        y_pred = y + hb * (f0 + (0.5 * hb) * d1) + w2 * d2
        f_pred = ev(t + h, y_pred)
        e2 = ((f_pred - f0) / hb - d1) / (hb + h1)
        e3 = (e2 - d2) / (hb + h1 + h2)
        if not self.corrector:
            # next Newton term of the explicit formula: ∫_0^h s (s + h₁)(s + h₁ + h₂) ds
            a, b = h1, h1 + h2
            w3 = hb * hb * (hb * hb / 4.0 + (a + b) * hb / 3.0 + a * b / 2.0)
            return Trial(y_pred, f_pred, w3 * e3, self.error_exponent)
        y_corr = y_pred + w2 * (e2 - d2)
        # AM4 − AM3: ∫_0^h (s − h) s (s + h₁) ds = −h⁴/12 − h₁h³/6
        w3 = -hb * hb * hb * (hb / 12.0 + h1 / 6.0)
        return Trial(y_corr, ev(t + h, y_corr), w3 * e3, self.error_exponent)

    def accept(self, trial, mask, t_new):
        ev = self.ev
        shifted = [t_new] + self.times[:2]
        self.times = [np.where(mask, new, old) for new, old in zip(shifted, self.times)]
        self.fs = [ev.select(mask, new, old) for new, old in zip([trial.f1] + self.fs[:2], self.fs)]
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
    stability region than VCAB3 and a Milne-type error estimate (AM4 − AM3). The default for steady states.

    >>> import numpy as np, deqcore as dq
    >>> sol = dq.integrate(lambda t, y: -y, np.array([1.0]), (0.0, 1.0), dq.VCABM3(), atol=1e-8, rtol=1e-8)
    >>> bool(abs(sol.ys[-1, 0] - np.exp(-1.0)) < 1e-6)
    True
    """

    order = 3

    def stepper(self, ev: Evaluator, jac=None):
        return AdamsStepper(ev, corrector=True)
