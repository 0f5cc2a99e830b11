"""dq.BDF (variable-order NDF with Jacobian and LU reuse): stiff problems against SciPy's Radau at rtol 1e-12,
accuracy following the tolerance, failures reported as codes, bad input named."""

from functools import lru_cache

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import deqcore as dq
from deqcore.ode.bdf import rescale_differences
from deqcore.ode.messages import ode_message
from tests.test_stiff import (STIFF_TEST_CASES, _robertson, _robertson_jac, _robertson_ref,
                              scipy_radau_solution, solve_every_compile_case, stiff_test_case)



@pytest.mark.parametrize("name", STIFF_TEST_CASES)
def test_stiff_problems_against_radau(name):
    rhs, y0, span, tolerances, method = stiff_test_case(name)
    sol = dq.integrate(rhs, y0, span, dq.BDF(**method), **tolerances)
    rtol, atol = {"robertson": (1e-4, 1e-11), "vdp": (1e-3, 1e-3), "hires": (1e-4, 1e-8),
                  "brusselator": (1e-7, 1e-4)}[name]
    np.testing.assert_allclose(sol.ys[-1], scipy_radau_solution(name), rtol=rtol, atol=atol)
    if name == "brusselator":
        # 5 colour groups of a band of half-width 2 per Jacobian (plus rare refinements), not 64 columns
        assert sol.stats["nfev_jac"] <= 7 * sol.stats["njev"]
    assert sol.result == dq.ReturnCode.SUCCESS
    # the point of BDF: few Jacobians and factorisations for many steps
    assert sol.stats["njev"] < 0.2 * sol.stats["accepted"]
    assert sol.stats["nfactor"] < 0.6 * sol.stats["accepted"]


def test_analytic_and_sparse_jacobians_give_the_same_answer():
    y0 = np.array([1.0, 0, 0])
    fd = dq.integrate(_robertson, y0, (0, 1e5), dq.BDF(), rtol=1e-7, atol=1e-12)
    exact = dq.integrate(_robertson, y0, (0, 1e5), dq.BDF(), rtol=1e-7, atol=1e-12, jac=_robertson_jac)
    sparse = dq.integrate(_robertson, y0, (0, 1e5), dq.BDF(), rtol=1e-7, atol=1e-12,
                          jac=lambda t, y: sp.csr_matrix(_robertson_jac(t, y)))
    for sol in (exact, sparse):
        np.testing.assert_allclose(sol.ys[-1], scipy_radau_solution("robertson"), rtol=1e-4, atol=1e-11)
        assert sol.stats["nfev_jac"] == 0
    np.testing.assert_allclose(fd.ys[-1], exact.ys[-1], rtol=1e-4, atol=1e-11)


@settings(max_examples=8)
@given(lam=st.floats(1.0, 1e6), rtol=st.sampled_from([1e-4, 1e-6, 1e-8]))
def test_error_follows_the_tolerance_on_a_stiff_linear_problem(lam, rtol):
    """y' = −λ(y − cos t): global error a small multiple of the tolerance, and falling with it."""
    exact = lambda t: (lam ** 2 * np.cos(t) + lam * np.sin(t)) / (lam ** 2 + 1) \
        + (1.0 - lam ** 2 / (lam ** 2 + 1)) * np.exp(-lam * t)          # noqa: E731
    sol = dq.integrate(lambda t, y: -lam * (y - np.cos(t)), np.ones(1), (0.0, 2.0), dq.BDF(), rtol=rtol,
                       atol=rtol)
    assert sol.result == dq.ReturnCode.SUCCESS
    assert abs(sol.ys[-1, 0] - exact(2.0)) < 50 * rtol
    mid = float(sol(1.0)[0])                                           # dense output
    assert abs(mid - exact(1.0)) < 200 * rtol


def _carried_rate_rhs(t, y, lam=1e4):
    return np.array([-lam * (y[0] - np.cos(t)), -2.0 * (y[1] - y[0])])


@lru_cache(None)
def _carried_rate_reference():
    """y(10) from SciPy's Radau at rtol 1e-12, solved once for both tolerances (2 s a solve)."""
    from scipy.integrate import solve_ivp

    return solve_ivp(_carried_rate_rhs, (0.0, 10.0), [0.0, 1.0], method="Radau", rtol=1e-12,
                     atol=1e-14).y[:, -1]


@pytest.mark.parametrize("rtol", [1e-3, 1e-5])
def test_newton_converges_in_one_iteration_on_the_carried_rate(rtol):
    """A linear problem with its Jacobian exact: Newton's second increment is ~0, so the rate carried to the
    next step lets it converge after one iteration (the test of the step alone needs two, so fewer than two
    linear solves per accepted step are impossible without it); the error stays that of the tolerance."""
    f = _carried_rate_rhs
    y0, atol = np.array([0.0, 1.0]), rtol * 1e-2
    sol = dq.integrate(f, y0, (0.0, 10.0), dq.BDF(), rtol=rtol, atol=atol)
    assert sol.result == dq.ReturnCode.SUCCESS
    assert sol.stats["nlinsolve"] < 1.9 * sol.stats["accepted"]
    ref = _carried_rate_reference()
    assert np.max(np.abs(sol.ys[-1] - ref) / (atol + rtol * np.abs(ref))) < 10.0


@pytest.mark.parametrize("rtol", [1e-2, 1e-3, 1e-4])
def test_robertson_error_follows_loose_tolerances(rtol):
    """Robertson to t = 1e5 at loose tolerances, where Newton often stops after one iteration on the carried
    rate: the error in the solver's own weights stays a small multiple of one (against SciPy's Radau at rtol
    1e-12), with fewer than 2.7 linear solves per accepted step (2.75 at rtol 1e-2 when every Newton solve
    needs two iterations)."""
    atol = rtol * 1e-4
    sol = dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), dq.BDF(), rtol=rtol, atol=atol)
    assert sol.result == dq.ReturnCode.SUCCESS
    ref = _robertson_ref(1e5)
    assert np.max(np.abs(sol.ys[-1] - ref) / (atol + rtol * np.abs(ref))) < 10.0
    assert sol.stats["nlinsolve"] < 2.7 * sol.stats["accepted"]


def test_order_selection_reaches_high_order_and_classic_bdf_works():
    """A smooth non-stiff solution at tight tolerance: orders up to 5 make it cheap; max_order=1
    (implicit Euler) needs far more steps for the same tolerance."""
    f = lambda t, y: np.array([y[1], -y[0]])   # noqa: E731
    y0 = np.array([0.0, 1.0])
    cost = {}
    for method in (dq.BDF(), dq.BDF(ndf=False), dq.BDF(max_order=2)):
        sol = dq.integrate(f, y0, (0.0, 10.0), method, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(sol.ys[-1], [np.sin(10.0), np.cos(10.0)], atol=1e-4)
        cost[(method.max_order, method.ndf)] = sol.stats["accepted"]
    assert cost[(5, True)] < 0.3 * cost[(2, True)]


def test_rescaling_the_differences_keeps_the_interpolating_polynomial():
    """Differences of a cubic at step h, rescaled to step h/3, equal the differences taken at h/3."""
    p = lambda t: 1.0 + 2.0 * t - t ** 2 + 0.5 * t ** 3     # noqa: E731

    def diffs(h, order=3):
        vals = np.array([p(-k * h) for k in range(order + 1)])
        D = [vals]
        for _ in range(order):
            D.append(D[-1][:-1] - D[-1][1:])
        return np.array([[d[0]] for d in D] + [[0.0], [0.0]])
    D = diffs(0.3)
    rescale_differences(D, 3, 1.0 / 3.0)
    np.testing.assert_allclose(D[:4], diffs(0.1)[:4], atol=1e-13)


# ---- failures are codes, never SUCCESS, never an exception with throw=False ----
def test_nan_rhs_is_not_success_and_does_not_raise():
    sol = dq.integrate(lambda t, y: y * np.nan, np.ones(2), (0.0, 1.0), dq.BDF(), throw=False)
    assert sol.result != dq.ReturnCode.SUCCESS
    later = dq.integrate(lambda t, y: -y if t < 0.5 else np.full(2, np.inf), np.ones(2), (0.0, 1.0), dq.BDF(),
                         throw=False)
    assert later.result != dq.ReturnCode.SUCCESS and later.t_final < 0.5
    with pytest.raises(dq.SolveError):
        dq.integrate(lambda t, y: y * np.nan, np.ones(2), (0.0, 1.0), dq.BDF())


def test_a_matrix_that_cannot_be_factored_ends_with_linear_solve_failed():
    sol = dq.integrate(lambda t, y: -y, np.ones(2), (0.0, 1.0), dq.BDF(),
                       jac=lambda t, y: np.full((2, 2), np.nan), throw=False)
    assert sol.result == dq.ReturnCode.LINEAR_SOLVE_FAILED
    assert "linear solve" in ode_message(sol.result)


# ---- bad input ----
def test_bad_settings_and_unsupported_problems_are_named():
    with pytest.raises(ValueError, match="max_order"):
        dq.BDF(max_order=6)
    with pytest.raises(TypeError, match="max_order"):
        dq.BDF(max_order=2.0)
    with pytest.raises(TypeError, match="ndf"):
        dq.BDF(ndf="yes")
    with pytest.raises(ValueError, match="jac_sparsity"):
        dq.BDF(jac_sparsity=np.ones((2, 3)))
    with pytest.raises(ValueError, match="jac_sparsity"):
        dq.integrate(_robertson, np.array([1.0, 0, 0]), (0, 1.0), dq.BDF(jac_sparsity=np.eye(2)))
    with pytest.raises(ValueError, match="dq.BDF\\(\\) solves unbatched problems only"):
        dq.steady_state(lambda t, u: -u, np.ones((2, 3)), dq.BDF(), batched=True)
    with pytest.raises(ValueError, match="jac must return an array of shape \\(3, 3\\)"):
        dq.integrate(_robertson, np.array([1.0, 0, 0]), (0.0, 1.0), dq.BDF(), jac=lambda t, y: np.eye(2))


# ---- the compiled host kernels against the NumPy formulas ----
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_compiled_rescaling_equals_the_numpy_formula(order):
    from deqcore.ode.kernels_host import bdf_rescale

    rng = np.random.default_rng(order)
    for factor in (0.2, 0.5, 1.7, 10.0):
        D = rng.standard_normal((8, 4))
        expected = D.copy()
        rescale_differences(expected, order, factor)
        bdf_rescale(D, order, factor)
        np.testing.assert_allclose(D, expected, rtol=1e-13, atol=1e-13 * np.abs(expected).max())


def test_float32_state_keeps_its_dtype_and_follows_float64():
    y64 = dq.integrate(_robertson, np.array([1.0, 0, 0]), (0, 40.0), dq.BDF(), rtol=1e-4, atol=1e-8)
    y32 = dq.integrate(_robertson, np.array([1.0, 0, 0], dtype=np.float32), (0, 40.0), dq.BDF(), rtol=1e-4,
                       atol=1e-8)
    assert y32.ys.dtype == np.float32
    np.testing.assert_allclose(y32.ys[-1], y64.ys[-1], rtol=1e-3, atol=1e-7)


def test_the_compiled_loop_is_one_machine_code_for_every_problem():
    """As Radau's (tests.test_radau): BDF's compiled loop and its helpers are compiled once whatever the
    system's size, Jacobian, tolerances or direction (Numba compiles once per argument types, read-only arrays
    included, and per constant argument)."""
    from deqcore.ode import bdf_machine
    solve_every_compile_case(dq.BDF())
    assert len(bdf_machine.bdf_run.signatures) == 1
    for helper in (bdf_machine._jacobian, bdf_machine._differences):    # compiled here unless cached on disk
        assert len(helper.signatures) <= 1, helper.__name__
