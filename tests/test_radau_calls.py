"""dq.Radau's rhs calls against SciPy's Radau at no worse error, where a finite-difference Jacobian costs several
Newton iterations (HIRES: 8 columns; a 2-D Brusselator: 11 column groups), and the automatic ``newton_tol`` /
``jac_rate`` that make the difference: they follow what a Jacobian costs, and explicit values are honoured."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import deqcore as dq
from deqcore.demos.stiff_problems import HIRES_T1, HIRES_Y0, brusselator_2d, hires


class Counted:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.f(t, y)


def _runs(f, y0, t1, rtol, atol, floor, pattern=None, ref_rtol=1e-11):
    """(calls, error) of dq.Radau() and of SciPy's Radau at the same tolerances; the error is the largest
    |y(t1) − ref| / (|ref| + floor), ref from SciPy's Radau at ``ref_rtol``."""
    kw = {} if pattern is None else dict(jac_sparsity=pattern)
    ref = solve_ivp(f, (0.0, t1), y0, method="Radau", rtol=ref_rtol, atol=ref_rtol * atol / rtol, **kw).y[:, -1]
    err = lambda y: float(np.max(np.abs(y - ref) / (np.abs(ref) + floor)))   # noqa: E731
    ours, theirs = Counted(f), Counted(f)
    sol = dq.integrate(ours, y0, (0.0, t1), dq.Radau(**kw), rtol=rtol, atol=atol)
    assert sol.result == dq.ReturnCode.SUCCESS
    r = solve_ivp(theirs, (0.0, t1), y0, method="Radau", rtol=rtol, atol=atol, **kw)
    return (ours.calls, err(sol.ys[-1])), (theirs.calls, err(r.y[:, -1]))


@pytest.mark.parametrize("rtol", [1e-3, 1e-4])
def test_hires_costs_no_more_calls_than_scipy_radau_at_no_worse_error(rtol):
    (calls, error), (scipy_calls, scipy_error) = _runs(hires, HIRES_Y0, HIRES_T1, rtol, 1e-3 * rtol, 1e-6)
    assert calls <= scipy_calls and error <= scipy_error, (calls, error, scipy_calls, scipy_error)


def test_sparse_brusselator_costs_fewer_calls_than_scipy_radau_at_no_worse_error():
    f, y0, pattern = brusselator_2d()
    (calls, error), (scipy_calls, scipy_error) = _runs(f, y0, 11.5, 1e-6, 1e-6, 1e-3, pattern, ref_rtol=1e-9)
    assert calls <= 0.9 * scipy_calls and error <= scipy_error, (calls, error, scipy_calls, scipy_error)


def _stats(method, jac=None, rtol=1e-4):
    sol = dq.integrate(hires, HIRES_Y0, (0.0, HIRES_T1), method, jac=jac, rtol=rtol, atol=1e-3 * rtol)
    keys = ("accepted", "rejected", "nfev", "njev", "nlinsolve")
    return {k: sol.stats[k] for k in keys}, sol.ys[-1]


def _hires_jac(t, y):
    J = np.zeros((8, 8))
    h = 1e-7 * np.maximum(1.0, np.abs(y))
    f0 = hires(t, y)
    for j in range(8):          # HIRES is quadratic in y: central differences are exact up to rounding
        e = np.zeros(8)
        e[j] = h[j]
        J[:, j] = (hires(t, y + e) - hires(t, y - e)) / (2 * h[j])
    assert f0.shape == (8,)
    return J


def test_automatic_newton_settings_follow_the_jacobian_cost():
    # 8 finite-difference columns cost more than two Newton iterations (6 calls): newton_tol 1, jac_rate 0.001
    auto, y_auto = _stats(dq.Radau())
    expensive, y_exp = _stats(dq.Radau(newton_tol=1.0, jac_rate=1e-3))
    cheap, y_cheap = _stats(dq.Radau(newton_tol=0.03, jac_rate=1e-2))
    assert auto == expensive and auto != cheap
    np.testing.assert_array_equal(y_auto, y_exp)
    assert auto["nfev"] < cheap["nfev"]
    # a Jacobian of the user's costs no rhs call: the tight settings (0.03, 0.01)
    auto_jac, _ = _stats(dq.Radau(), jac=_hires_jac)
    cheap_jac, _ = _stats(dq.Radau(newton_tol=0.03, jac_rate=1e-2), jac=_hires_jac)
    assert auto_jac == cheap_jac
