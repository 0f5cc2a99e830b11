"""Dense output of Rodas4 and Rodas5P: their continuous extensions' order conditions, the step's ends, the
error between steps against analytic solutions (the cubic Hermite interpolant misses these bounds), the
compiled single-system path against the array path, backward spans, float32, and no extra rhs calls."""

import numpy as np
import pytest
from scipy.linalg import expm

import deqcore as dq
import deqcore.ode.rosenbrock as rosenbrock
from deqcore.ode.rosenbrock import RosenbrockDense
from deqcore.ode.rosenbrock_tableaus import RODAS3, RODAS4, RODAS5P
from deqcore.ode.solution import hermite
from tests.test_stiff import _density, _phi, _trees

THETAS = np.linspace(0.05, 0.95, 10)


# ---- order conditions of the continuous extension: Σ b_i(θ) Φ_i(t) = θ^ρ(t) / γ(t) (trees as in test_stiff) ----
def _worst_residual(tab, order, thetas):
    alpha, Gamma, _, _ = tab.standard()
    beta = alpha + Gamma
    return max(abs(tab.dense_weights(th) @ Gamma @ _phi(t, alpha, beta) - th ** order / _density(t))
               for th in thetas for t in _trees(order))


@pytest.mark.parametrize("tab", [RODAS4, RODAS5P], ids=lambda t: t.name)
def test_continuous_extension_meets_its_order_conditions_and_no_more(tab):
    thetas = [0.1, 0.25, 1 / 3, 0.5, 0.7, 0.9]
    for order in range(1, tab.dense_order + 1):
        assert _worst_residual(tab, order, thetas) < 1e-12, (tab.name, order)
    assert _worst_residual(tab, tab.dense_order + 1, thetas) > 1e-4           # the order claimed, not more
    # the ends: θ = 0 is the step's start, θ = 1 its result
    np.testing.assert_array_equal(tab.dense_weights(0.0), np.zeros(tab.stages))
    np.testing.assert_allclose(tab.dense_weights(1.0), tab.m, rtol=0, atol=1e-15)
    assert RODAS3.dense is None and (RODAS4.dense_order, RODAS5P.dense_order) == (3, 4)
    assert tab.dense.shape == (tab.dense_order - 1, tab.stages)               # q vectors per step


# ---- solves with a known solution ----
EIGVECS, EIGVALS = np.array([[1.0, 2.0], [0.0, 1.0]]), np.array([-1.0, -1e4])
STIFF = EIGVECS @ np.diag(EIGVALS) @ np.linalg.inv(EIGVECS)
Y0_STIFF = np.array([1.0, 1.0])


def _stiff_flow(t, y, tau):
    """expm(STIFF (tau − t)) y through the eigen-decomposition."""
    return EIGVECS @ (np.exp(EIGVALS * (tau - t)) * np.linalg.solve(EIGVECS, y))


def _decay(t, y):
    return -y


def _decay_flow(t, y, tau):
    return np.exp(t - tau) * y


def _stiff(t, y):
    return STIFF @ y


def _interior_error(sol, flow, atol, rtol, interpolant=None):
    """max over the steps and 10 points inside each of |ỹ(t) − y(t)| / (atol + rtol |y(t)|), y the exact solution
    through the step's start (the step's own error, not the one carried from earlier steps) and ỹ the dense
    output ``sol(t)`` (or ``interpolant(step, θ)``)."""
    worst = 0.0
    for s in sol.steps:
        times = s.t + THETAS * s.h
        values = sol(times) if interpolant is None else np.stack([interpolant(s, th) for th in THETAS])
        ref = np.stack([flow(s.t, np.asarray(s.y0, np.float64), tau) for tau in times])
        worst = max(worst, float(np.max(np.abs(values.astype(np.float64) - ref) / (atol + rtol * np.abs(ref)))))
    return worst


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_rodas5p_values_between_steps_meet_the_tolerance_where_hermite_does_not(backward):
    """y' = −y at rtol 1e-10 (forward from 0 to 5, or back from 5 to 0): the step ends are < 1e-4 of the
    tolerance off and the continuous extension ≤ 0.07 (measured); the cubic Hermite interpolant on the same
    steps is ~85× the tolerance off."""
    atol, rtol = 1e-12, 1e-10
    span, y0 = ((5.0, 0.0), np.array([np.exp(-5.0)])) if backward else ((0.0, 5.0), np.ones(1))
    sol = dq.integrate(_decay, y0, span, dq.Rodas5P(), atol=atol, rtol=rtol)
    assert _interior_error(sol, _decay_flow, atol, rtol) < 0.25
    assert _interior_error(sol, _decay_flow, atol, rtol, hermite) > 10.0


@pytest.mark.parametrize("method,bound", [(dq.Rodas4, 0.35), (dq.Rodas5P, 1.0)], ids=["Rodas4", "Rodas5P"])
def test_stiff_linear_problem_between_steps(method, bound):
    """y' = A y with eigenvalues −1 and −10⁴ (non-normal), against expm: measured 0.27 (Rodas4) and 0.61
    (Rodas5P) of the tolerance at rtol 1e-10; Hermite gives 0.46 and ~1600."""
    atol, rtol = 1e-12, 1e-10
    sol = dq.integrate(_stiff, Y0_STIFF, (0.0, 3.0), method(autonomous=True), atol=atol, rtol=rtol)
    np.testing.assert_allclose(_stiff_flow(0.2, Y0_STIFF, 0.9), expm(STIFF * 0.7) @ Y0_STIFF, rtol=1e-12)
    assert _interior_error(sol, _stiff_flow, atol, rtol) < bound
    if method is dq.Rodas5P:
        assert _interior_error(sol, _stiff_flow, atol, rtol, hermite) > 100.0


def test_float32_state_keeps_its_dtype_and_accuracy_between_steps():
    atol, rtol = 1e-6, 1e-4
    sol = dq.integrate(_decay, np.ones(1, dtype=np.float32), (0.0, 5.0), dq.Rodas5P(), atol=atol, rtol=rtol)
    assert sol(0.123).dtype == np.float32 and sol(np.array([0.1, 0.2])).dtype == np.float32
    assert all(s.stages.w.dtype == np.float32 for s in sol.steps)
    assert _interior_error(sol, _decay_flow, atol, rtol) < 0.3                 # measured 0.04
    assert _interior_error(sol, _decay_flow, atol, rtol, hermite) > 1.0        # measured 2.8


@pytest.mark.parametrize("method", [dq.Rodas4, dq.Rodas5P], ids=["Rodas4", "Rodas5P"])
def test_step_ends_are_exact_and_records_keep_only_the_dense_vectors(method):
    sol = dq.integrate(_stiff, Y0_STIFF, (0.0, 1.0), method(), atol=1e-9, rtol=1e-7)
    q = method.tableau.dense.shape[0]
    for s in sol.steps:
        assert isinstance(s.stages, RosenbrockDense) and s.stages.w.shape == (q,) + Y0_STIFF.shape
        assert s.stages._pending is None                                   # the increments are not kept
        np.testing.assert_array_equal(s.stages(0.0), s.y0)
        np.testing.assert_array_equal(s.stages(1.0), s.y1)
    np.testing.assert_array_equal(sol(sol.ts), sol.ys)


def test_rodas3_keeps_the_hermite_interpolant():
    sol = dq.integrate(_decay, np.ones(1), (0.0, 1.0), dq.Rodas3(), atol=1e-8, rtol=1e-6)
    assert all(s.stages is None for s in sol.steps)
    s = sol.steps[1]
    np.testing.assert_array_equal(sol(s.t + 0.3 * s.h), hermite(s, 0.3))


@pytest.mark.parametrize("method", [dq.Rodas4, dq.Rodas5P], ids=["Rodas4", "Rodas5P"])
def test_dense_output_costs_no_rhs_call(method):
    calls = [0]

    def rhs(t, y):
        calls[0] += 1
        return _stiff(t, y)
    sol = dq.integrate(rhs, Y0_STIFF, (0.0, 1.0), method(), atol=1e-9, rtol=1e-7)
    assert calls[0] == sol.stats["nfev"]                        # (finite-difference Jacobian columns included)
    before = calls[0]
    sol(np.linspace(0.0, 1.0, 101))
    assert calls[0] == before
    saved = dq.integrate(_stiff, Y0_STIFF, (0.0, 1.0), method(), atol=1e-9, rtol=1e-7,
                         saveat=np.linspace(0.0, 1.0, 101))
    assert saved.stats == sol.stats
    np.testing.assert_array_equal(saved.ys, sol(np.linspace(0.0, 1.0, 101)))


# ---- the compiled single-system path, the array path (batched and CuPy problems) and a stacked state ----
@pytest.mark.parametrize("method", [dq.Rodas4, dq.Rodas5P], ids=["Rodas4", "Rodas5P"])
def test_array_path_gives_the_same_dense_output(method, monkeypatch):
    """The array code that batched and CuPy problems run against the compiled single-system path: the same
    dense output bit for bit where the steps agree bit for bit (a stiff problem), and on a backward span
    (where Rodas5P's two paths already differ in the last bits of the step sizes) within the tolerance and
    as accurate between steps."""
    times = np.linspace(0.0, 5.0, 37)

    def solve():
        return (dq.integrate(_stiff, Y0_STIFF, (0.0, 5.0), method(), atol=1e-10, rtol=1e-8),
                dq.integrate(_decay, np.ones(1), (5.0, 0.0), method(), atol=1e-10, rtol=1e-8))
    host, host_back = solve()
    monkeypatch.setattr(rosenbrock, "HOST_SYSTEM_LIMIT", 0)
    arrays, arrays_back = solve()
    assert host.stats == arrays.stats and host_back.stats == arrays_back.stats
    np.testing.assert_array_equal(host(times), arrays(times))
    np.testing.assert_allclose(host_back(times), arrays_back(times), rtol=1e-7)
    assert _interior_error(arrays_back, _decay_flow, 1e-10, 1e-8) < 0.25


@pytest.mark.parametrize("linear_solver", [dq.LU(), dq.GMRES(rtol=1e-12)], ids=["lu", "gmres"])
def test_stacked_state_through_the_array_path(linear_solver, monkeypatch):
    """A (3, 2) state of three stiff linear systems (rates scaled by 0.5, 1, 2) on the array path: every row
    between steps against the exact solution through the step's start; measured 3.5 (LU) and 0.1 (GMRES)
    of the tolerance at rtol 1e-6, where Hermite is 265 and 44 (the largest errors fall in the stiff
    transient's first steps)."""
    monkeypatch.setattr(rosenbrock, "HOST_SYSTEM_LIMIT", 0)
    scale = np.array([[0.5], [1.0], [2.0]])
    to_modes = np.linalg.inv(EIGVECS)

    def rhs(t, y):
        return scale * (y @ STIFF.T)

    def flow(t, y, tau):
        return (np.exp(scale * EIGVALS * (tau - t)) * (y @ to_modes.T)) @ EIGVECS.T
    atol, rtol = 1e-8, 1e-6
    sol = dq.integrate(rhs, np.tile(Y0_STIFF, (3, 1)), (0.0, 1.0), dq.Rodas5P(linear_solver=linear_solver),
                       atol=atol, rtol=rtol)
    assert sol.success and sol(0.5).shape == (3, 2)
    own = _interior_error(sol, flow, atol, rtol)
    assert own < 5.0
    assert _interior_error(sol, flow, atol, rtol, hermite) > 10.0 * own


# ---- the adjoint reads the dense output ----
def test_gauss_adjoint_after_rodas5p_against_finite_differences():
    """GaussAdjoint integrates λ along the forward dense output: after a stiff nonlinear Rodas5P solve at
    tolerance 1e-7 its dL/dp is within 3e-7 (relative) of central differences of tight SciPy solves (measured
    8e-8; 1.1e-6 on the cubic Hermite interpolant)."""
    from scipy.integrate import solve_ivp

    A = np.array([[-200.0, 1.0, 0.0], [1.0, -2.0, 0.5], [0.0, 0.3, -1.0]])
    b, w, y0 = np.array([1.0, 0.5, -0.2]), np.array([0.3, 1.7, -0.4]), np.array([1.0, -1.0, 0.5])

    def rhs(t, y, p):
        return A @ y - p * y ** 3 + np.sin(t) * b

    def vjp(t, y, args):
        return rhs(t, y, args[0]), lambda a: (A.T @ a - 3 * args[0] * y ** 2 * a, (np.atleast_1d(-(a @ y ** 3)),))

    def loss(p):
        return w @ solve_ivp(rhs, (0.0, 2.0), y0, args=(p,), method="LSODA", rtol=1e-13, atol=1e-15).y[:, -1]
    p, eps = np.array([2.0]), 1e-5
    want = (loss(p[0] + eps) - loss(p[0] - eps)) / (2 * eps)
    sol = dq.integrate(rhs, y0, (0.0, 2.0), dq.Rodas5P(), args=(p,), atol=1e-7, rtol=1e-7)
    _, (dp,) = dq.ode_gradients(vjp, sol, w, dq.GaussAdjoint(solver=dq.Radau(), atol=1e-9, rtol=1e-9))
    assert abs(dp[0] - want) < 3e-7 * abs(want)
