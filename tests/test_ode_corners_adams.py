"""The Adams methods (VCAB3, VCABM3) on very stiff linear decay, where the Bogacki–Shampine starter's error
estimate vanishes at hλ = −1.
References: analytic solutions (and SciPy's RK23/RK45, quoted for comparison).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import deqcore as dq


def _name(solver):
    return type(solver).__name__


def _decay(lam):
    return lambda t, y: -lam * y


# ------------------------------------------------------------------- Adams methods on very stiff decay
# The two Bogacki–Shampine 3(2) steps that start VCAB3/VCABM3 estimate their error as −z³(z + 1)/48 with
# z = hλ on y' = λy: 0 at z = −1, where the step's error is e⁻¹ − 1/3 = 0.035·|y|. Hairer's starting step is
# exactly 1/λ there once λ² > 100/rtol, and the solve returned SUCCESS with these errors (in units of
# atol + rtol·|y|, the worst over the saved points), next to SciPy's RK23 (the same pair, the same estimate,
# the same first step) and RK45 at the same tolerances, measured on SciPy 1.x:
#
#   λ, rtol (atol 1e-6, span 0..1e-3)   VCAB3 before → now   VCABM3 before → now   RK23     RK45
#   1e5, 1e-3                           96 → 8.1             95 → 4.5              98       2.4
#   1e7, 1e-5                           7.4e3 → 7.4          7.4e3 → 2.7           7.4e3    1.1
#   1e9, 1e-8                           3.4e4 → 5.0          3.4e4 → 2.3           3.4e4    1.1
#
# The starter now takes the larger of that estimate and (y_new − y_midpoint)/8, equal to leading order
# (z³/48) and never 0 there. Over many steps the Adams methods' global error is the sum of local errors held
# to the tolerance (measured: true/estimated local error ≤ 1.0 on every accepted step), up to about 100×
# the tolerance after 1000 steps where RK23, which propagates its higher-order solution, stays near 13×.
ADAMS = [dq.VCAB3(), dq.VCABM3()]


def _worst_error(sol, lam, atol, rtol):
    want = np.exp(-lam * sol.ts)
    return float(np.max(np.abs(sol.ys[:, 0] - want) / (atol + rtol * want)))


@pytest.mark.parametrize("solver", ADAMS, ids=_name)
@pytest.mark.parametrize("lam, rtol", [(1e5, 1e-3), (1e7, 1e-5), (1e9, 1e-8)])
def test_adams_methods_hold_a_very_stiff_decay_to_the_tolerance(solver, lam, rtol):
    atol = 1e-6
    sol = dq.integrate(_decay(lam), np.ones(1), (0.0, 1e-3), solver, atol=atol, rtol=rtol, max_steps=3000,
                       throw=False)
    # every saved point, whatever the code (λ = 1e9 needs 1e6 steps: MAX_STEPS, with correct points)
    assert _worst_error(sol, lam, atol, rtol) <= 20.0
    assert sol.steps[0].h * lam < 0.9


@pytest.mark.parametrize("solver", ADAMS, ids=_name)
@settings(max_examples=30)
@given(log_lam=st.floats(2.0, 9.0), log_rtol=st.floats(-8.0, -3.0), decays=st.floats(1.0, 40.0))
def test_adams_methods_on_stiff_decay_return_points_within_the_tolerance(solver, log_lam, log_rtol, decays):
    # a span of `decays` time constants, or at most 150 steps into (0, 1): every saved point within 50× the
    # tolerance of e^(−λt), and SUCCESS only where the span was reached (before: up to 3.4e4×)
    lam, rtol, atol = 10.0 ** log_lam, 10.0 ** log_rtol, 1e-6
    t1 = min(1.0, decays / lam)
    sol = dq.integrate(_decay(lam), np.ones(1), (0.0, t1), solver, atol=atol, rtol=rtol, max_steps=150,
                       throw=False)
    assert _worst_error(sol, lam, atol, rtol) <= 50.0
    assert sol.success == (sol.ts[-1] == t1)
