"""README promises about the stiff solvers, the ODE adjoints and the linear solvers, checked on cases the other
test files leave out: Rosenbrock methods on backward spans (every linear-solver path, odd and even sizes), the
ODE adjoints with an implicit adjoint solver and after a stiff forward solve (a failing BacksolveAdjoint names
itself and the remedy), Jacobian sparsity patterns that miss true nonzeros (never a wrong SUCCESS), a user
Jacobian given as a SciPy sparse matrix or in float32, a jac given to a method that never calls it (told, not
dropped), batched linear solves with singular and non-finite samples and LU factors passed back to
linear_solve, the default root-solver sequence on a non-finite residual, Newton and the trust region on problems
posed at 1e±20 (float32) and 1e±160 (float64), ODE states far from size 1 and the runaway bound relative to the
start (batched: per sample), the residual of an integration that accepts no step, a NumPy bool for steady_state's
batched. References: analytic solutions (matrix exponentials), SciPy's solve_ivp and fsolve, dense float64
solves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import deqcore as dq

# ------------------------------------------------------------------------- Rosenbrock methods run backwards

BACKWARD = [dq.Rodas5P(), dq.Rodas4(), dq.Rodas3(), dq.Rodas5P(linear_solver=dq.GMRES(rtol=1e-10)),
            dq.Rodas5P(jac_sparsity=np.eye(3))]
BACKWARD_IDS = ["rodas5p", "rodas4", "rodas3", "rodas5p-gmres", "rodas5p-sparsity"]


@pytest.mark.parametrize("solver", BACKWARD, ids=BACKWARD_IDS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_rosenbrock_integrates_a_backward_span(solver, n):
    # y' = y from t = 1 back to 0: y(0) = y(1)·e⁻¹ (each step of the stage matrix I/(hγ) − J has h < 0; its
    # determinant has the sign of hⁿ, negative for odd n, which is not a failure)
    if solver.jac_sparsity is not None and n != 3:
        solver = dq.Rodas5P(jac_sparsity=np.eye(n))
    sol = dq.integrate(lambda t, y: y, np.ones(n), (1.0, 0.0), solver, atol=1e-10, rtol=1e-8)
    assert sol.success
    np.testing.assert_allclose(sol.value, np.exp(-1.0), rtol=1e-7)
    assert sol.stats["nfailed_solves"] == 0


@pytest.mark.parametrize("sparse_jac", [False, True], ids=["dense-jac", "sparse-jac"])
def test_rosenbrock_backward_on_a_stiff_non_autonomous_system(sparse_jac):
    # y' = A y + cos(t) b, A with eigenvalues up to +500: stable in reverse time; reference solve_ivp backwards
    A = np.array([[500.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 0.5]])
    b = np.array([1.0, -1.0, 0.5])
    rhs = lambda t, y: A @ y + np.cos(t) * b                      # noqa: E731
    jac = (lambda t, y: sp.csr_matrix(A)) if sparse_jac else (lambda t, y: A)
    y1 = np.array([1.0, 2.0, -1.0])
    want = solve_ivp(rhs, (1.0, 0.0), y1, method="Radau", jac=A, rtol=1e-12, atol=1e-13).y[:, -1]
    sol = dq.integrate(rhs, y1, (1.0, 0.0), dq.Rodas5P(), jac=jac, atol=1e-10, rtol=1e-9)
    assert sol.success
    np.testing.assert_allclose(sol.value, want, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------- ODE adjoints

A3 = np.array([[-200.0, 1.0, 0.0], [1.0, -2.0, 0.5], [0.0, 0.3, -1.0]])     # stiff, stable
B3 = np.array([1.0, 0.5, -0.2])
W3 = np.array([0.3, 1.7, -0.4])
Y03 = np.array([1.0, -1.0, 0.5])


def _forced_vjp(t, y, args):
    """y' = A y + p sin(t) b; ∂f/∂p = sin(t) b."""
    p = args[0]
    f = A3 @ y + p * np.sin(t) * B3

    def pullback(a):
        return A3.T @ a, (np.atleast_1d(np.sin(t) * (a @ B3)),)
    return f, pullback


def _forced_reference(t0, t1, p):
    """L = w·y(t1): dL/dy0 = expm(A (t1 − t0))ᵀ w, and dL/dp = w·y(t1) of the solve from y0 = 0 at p = 1 (the
    solution is linear in p)."""
    dy0 = expm(A3 * (t1 - t0)).T @ W3
    forced = solve_ivp(lambda t, y: A3 @ y + np.sin(t) * B3, (t0, t1), np.zeros(3), method="Radau", jac=A3,
                       rtol=1e-12, atol=1e-14).y[:, -1]
    return dy0, W3 @ forced


@pytest.mark.parametrize("adjoint_solver", [dq.Radau(), dq.Rodas5P()], ids=["radau", "rodas5p"])
def test_gauss_adjoint_with_an_implicit_adjoint_solver_after_a_stiff_solve(adjoint_solver):
    # the adjoint is as stiff as the forward problem: an implicit method for λ; Rodas5P (not autonomous)
    # differentiates in t, which must stay inside the span where the forward solution is defined
    p = np.array([2.0])
    sol = dq.integrate(lambda t, y, p: A3 @ y + p * np.sin(t) * B3, Y03, (0.0, 2.0), dq.Radau(), args=(p,),
                       atol=1e-10, rtol=1e-10)
    dy0, (dp,) = dq.ode_gradients(_forced_vjp, sol, W3, dq.GaussAdjoint(solver=adjoint_solver))
    want_dy0, want_dp = _forced_reference(0.0, 2.0, p)
    np.testing.assert_allclose(dy0, want_dy0, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(dp, want_dp, rtol=1e-6)


def test_backsolve_adjoint_on_a_stiff_problem_names_itself_and_the_remedy():
    # y recomputed backwards from y(t1) grows like e^{200 t}: the reverse integration cannot succeed, and the
    # error must say that it was the adjoint's, not the forward solve's
    p = np.array([2.0])
    sol = dq.integrate(lambda t, y, p: A3 @ y + p * np.sin(t) * B3, Y03, (0.0, 2.0), dq.Radau(), args=(p,),
                       atol=1e-10, rtol=1e-10)
    with pytest.raises(dq.SolveError, match="BacksolveAdjoint.*dq.GaussAdjoint") as info:
        dq.ode_gradients(_forced_vjp, sol, W3, dq.BacksolveAdjoint())
    assert not info.value.solution.success


@pytest.mark.parametrize("forward", [dq.Rodas5P(), dq.Rodas3(), dq.Tsit5()], ids=["rodas5p", "rodas3", "tsit5"])
@pytest.mark.parametrize("adjoint", [dq.GaussAdjoint(), dq.BacksolveAdjoint()], ids=["gauss", "backsolve"])
def test_ode_gradients_of_a_backward_span(forward, adjoint):
    # y' = −A y + p sin(t) b from t = 1 back to 0.5 (stable in reverse time): the analytic y0-gradient and the
    # solve-based p-gradient of the reversed problem
    p = np.array([0.7])

    def vjp(t, y, args):
        f = -A3 @ y + args[0] * np.sin(t) * B3
        return f, lambda a: (-A3.T @ a, (np.atleast_1d(np.sin(t) * (a @ B3)),))

    sol = dq.integrate(lambda t, y, p: -A3 @ y + p * np.sin(t) * B3, Y03, (1.0, 0.5), forward, args=(p,),
                       atol=1e-11, rtol=1e-10)
    assert sol.success
    dy0, (dp,) = dq.ode_gradients(vjp, sol, W3, adjoint)
    np.testing.assert_allclose(dy0, expm(-A3 * (0.5 - 1.0)).T @ W3, rtol=1e-7)
    forced = solve_ivp(lambda t, y: -A3 @ y + np.sin(t) * B3, (1.0, 0.5), np.zeros(3), method="DOP853",
                       rtol=1e-13, atol=1e-14).y[:, -1]
    np.testing.assert_allclose(dp, W3 @ forced, rtol=1e-6)


# ------------------------------------------------------------------------- Jacobians and sparsity patterns

def _robertson(t, y):
    return np.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
                     0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                     3e7 * y[1] ** 2])


def _robertson_jac(t, y):
    return np.array([[-0.04, 1e4 * y[2], 1e4 * y[1]],
                     [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]],
                     [0.0, 6e7 * y[1], 0.0]])


ROB_Y0, ROB_SPAN = np.array([1.0, 0.0, 0.0]), (0.0, 40.0)


@pytest.fixture(scope="module")
def robertson_reference():
    return solve_ivp(_robertson, ROB_SPAN, ROB_Y0, method="Radau", jac=_robertson_jac, rtol=1e-12,
                     atol=1e-14).y[:, -1]


@pytest.mark.parametrize("solver", [dq.Radau, dq.BDF, dq.Rodas5P], ids=["radau", "bdf", "rodas5p"])
@pytest.mark.parametrize("pattern", [np.array([[1, 1, 1], [1, 1, 1], [0, 0, 0]]), np.eye(3)],
                         ids=["row-missing", "diagonal"])
def test_a_pattern_missing_true_nonzeros_never_gives_a_wrong_success(solver, pattern, robertson_reference):
    # the finite-difference Jacobian drops entries that are nonzero: the solve may slow down or fail, but a
    # SUCCESS must still meet the tolerance (the error control sees the true f)
    sol = dq.integrate(_robertson, ROB_Y0, ROB_SPAN, solver(jac_sparsity=pattern), atol=1e-10, rtol=1e-7,
                       max_steps=3000, throw=False)
    if sol.success:
        np.testing.assert_allclose(sol.value, robertson_reference, rtol=1e-4, atol=1e-9)
    else:
        assert sol.result in (dq.ReturnCode.MAX_STEPS, dq.ReturnCode.DT_TOO_SMALL,
                              dq.ReturnCode.LINEAR_SOLVE_FAILED)


@pytest.mark.parametrize("solver", [dq.Radau(), dq.BDF(), dq.Rodas5P(), dq.Rodas3()],
                         ids=["radau", "bdf", "rodas5p", "rodas3"])
def test_a_sparse_or_float32_user_jacobian_gives_the_dense_float64_result(solver, robertson_reference):
    # README: a jac of the other floating dtype is cast to the state's; a SciPy sparse matrix is accepted
    dense = dq.integrate(_robertson, ROB_Y0, ROB_SPAN, solver, jac=_robertson_jac, atol=1e-10, rtol=1e-7)
    np.testing.assert_allclose(dense.value, robertson_reference, rtol=1e-4, atol=1e-9)
    for jac in (lambda t, y: sp.csr_matrix(_robertson_jac(t, y)),
                lambda t, y: _robertson_jac(t, y).astype(np.float32)):
        other = dq.integrate(_robertson, ROB_Y0, ROB_SPAN, solver, jac=jac, atol=1e-10, rtol=1e-7)
        assert other.success and other.value.dtype == np.float64
        np.testing.assert_allclose(other.value, dense.value, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("solver", [dq.Radau(), dq.Rodas5P()], ids=["radau", "rodas5p"])
def test_a_non_finite_user_jacobian_is_linear_solve_failed_not_a_nan_state(solver):
    sol = dq.integrate(_robertson, ROB_Y0, ROB_SPAN, solver, jac=lambda t, y: _robertson_jac(t, y) * np.nan,
                       throw=False)
    assert sol.result == dq.ReturnCode.LINEAR_SOLVE_FAILED
    assert np.isfinite(sol.value).all()
    with pytest.raises(dq.SolveError, match="LINEAR_SOLVE_FAILED"):
        dq.integrate(_robertson, ROB_Y0, ROB_SPAN, solver, jac=lambda t, y: _robertson_jac(t, y) * np.nan)


# ----------------------------------------------------------------------------------------- linear solvers

@settings(max_examples=20)
@given(seed=st.integers(0, 2 ** 16), bad=st.integers(0, 3), kind=st.sampled_from(["singular", "nan-A", "inf-b"]),
       solver=st.sampled_from(["lu", "gmres"]))
def test_a_bad_sample_in_a_batched_linear_solve_never_moves_the_others(seed, bad, kind, solver):
    rng = np.random.default_rng(seed)
    B, n = 4, 5
    A = rng.standard_normal((B, n, n)) + 4.0 * np.eye(n)
    b = rng.standard_normal((B, n))
    if kind == "singular":
        A[bad, :, 0] = A[bad, :, 1]
    elif kind == "nan-A":
        A[bad, 2, 3] = np.nan
    else:
        b[bad, 1] = np.inf
    method = dq.LU() if solver == "lu" else dq.GMRES(rtol=1e-12)
    sol = dq.linear_solve(A, b, method, throw=False)
    good = np.arange(B) != bad
    assert (sol.result[good] == dq.ReturnCode.SUCCESS).all()
    assert sol.result[bad] != dq.ReturnCode.SUCCESS
    want = np.linalg.solve(A[good], b[good][..., None])[..., 0]
    np.testing.assert_allclose(sol.value[good], want, rtol=1e-9, atol=1e-12)
    for i in np.flatnonzero(good):             # and each equals its own unbatched solve
        alone = dq.linear_solve(A[i], b[i], method)
        np.testing.assert_allclose(sol.value[i], alone.value, rtol=1e-12, atol=1e-14)
    if solver == "lu" and kind != "inf-b":
        assert sol.result[bad] == dq.ReturnCode.LINEAR_SOLVE_FAILED
    if kind == "inf-b":
        assert sol.result[bad] == dq.ReturnCode.DIVERGED
    with pytest.raises(dq.SolveError):
        dq.linear_solve(A, b, method)


@pytest.mark.parametrize("method", [dq.LU(), dq.GMRES(rtol=1e-12)], ids=["lu", "gmres"])
def test_transpose_solves_of_a_stack_match_dense_solves(method):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((3, 4, 4)) + 3.0 * np.eye(4)
    b = rng.standard_normal((3, 4))
    sol = dq.linear_solve(A, b, method, transpose=True)
    want = np.linalg.solve(np.swapaxes(A, 1, 2), b[..., None])[..., 0]
    np.testing.assert_allclose(sol.value, want, rtol=1e-10, atol=1e-12)
    assert sol.success.all()


def test_gmres_budget_is_max_steps_and_its_iterate_is_honest():
    # a budget too small to converge: MAX_STEPS per sample, with the residual of the returned iterate
    rng = np.random.default_rng(4)
    A = rng.standard_normal((2, 8, 8)) + 2.0 * np.eye(8)
    b = rng.standard_normal((2, 8))
    sol = dq.linear_solve(A, b, dq.GMRES(rtol=1e-12, max_steps=3), throw=False)
    assert (sol.result == dq.ReturnCode.MAX_STEPS).all()
    true_residual = np.linalg.norm(b - np.einsum("bij,bj->bi", A, sol.value), axis=1)
    np.testing.assert_allclose(sol.residual, true_residual, rtol=1e-8)
    assert (true_residual > 1e-12 * np.linalg.norm(b, axis=1)).all()


@pytest.mark.parametrize("call", [
    lambda jac: dq.integrate(lambda t, y: -y, np.ones(2), (0.0, 1.0), dq.Tsit5(), jac=jac),
    lambda jac: dq.integrate(lambda t, y: -y, np.ones(2), (0.0, 1.0), dq.VCAB3(), jac=jac),
    lambda jac: dq.steady_state(lambda t, y: 1.0 - y, np.zeros(2), dq.VCABM3(), jac=jac),
], ids=["integrate-tsit5", "integrate-vcab3", "steady_state-vcabm3"])
def test_a_jac_given_to_an_explicit_method_is_not_silently_ignored(call):
    # as SciPy's solve_ivp warns for RK45: the explicit methods never call jac
    with pytest.warns(UserWarning, match="jac is ignored by the explicit method"):
        sol = call(lambda t, y: -np.eye(2))
    assert sol.success


@pytest.mark.parametrize("solver", [dq.Broyden(), dq.LimitedMemoryBroyden(), dq.Anderson(),
                                    dq.NewtonRaphson(linear_solver=dq.GMRES(rtol=1e-12))],
                         ids=["broyden", "lm-broyden", "anderson", "newton-krylov"])
def test_a_jac_given_to_a_jacobian_free_root_solver_is_not_silently_ignored(solver):
    with pytest.warns(UserWarning, match="jac is ignored by"):
        sol = dq.root_find(lambda y: y ** 3 - 2.0, np.ones(2), solver, jac=lambda y: np.diag(3 * y ** 2),
                           atol=1e-10, rtol=0.0)
    np.testing.assert_allclose(sol.value, 2.0 ** (1 / 3), rtol=1e-9)


def test_the_default_root_solver_calls_a_non_finite_residual_diverged_per_sample():
    # README: DIVERGED for non-finite iterates; every single solver says so, and so must the default sequence
    # (it said NOT_RUN, "the solve did not run"); the other samples are their own solves
    c = np.array([2.0, np.nan, -3.0])
    fn = lambda y, c: y ** 3 - c[:, None]                  # noqa: E731
    sol = dq.root_find(fn, np.ones((3, 2)), None, args=(c,), batched=True, atol=1e-12, rtol=0.0, throw=False)
    assert sol.result.tolist() == [dq.ReturnCode.SUCCESS, dq.ReturnCode.DIVERGED, dq.ReturnCode.SUCCESS]
    np.testing.assert_allclose(sol.value[[0, 2], 0], np.cbrt(c[[0, 2]]), rtol=1e-12)
    with pytest.raises(dq.SolveError, match="DIVERGED"):
        dq.root_find(lambda y: y ** 3 - np.nan, np.ones(2))


def test_linear_solve_reuses_the_lu_factors_it_returned():
    # linear_solve's docstring: A may be "the state a solver returned in sol.learned['state']" (it was refused)
    rng = np.random.default_rng(5)
    A = rng.standard_normal((3, 4, 4)) + 3.0 * np.eye(4)
    A[1] = 0.0                                                # one singular sample
    first = dq.linear_solve(A, rng.standard_normal((3, 4)), throw=False)
    b = rng.standard_normal((3, 4))
    for transpose in (False, True):
        again = dq.linear_solve(first.learned["state"], b, transpose=transpose, throw=False)
        assert again.stats["nfactor"] == 0
        assert again.result.tolist() == [0, int(dq.ReturnCode.LINEAR_SOLVE_FAILED), 0]
        M = np.swapaxes(A, 1, 2) if transpose else A
        want = np.linalg.solve(M[[0, 2]], b[[0, 2]][..., None])[..., 0]
        np.testing.assert_allclose(again.value[[0, 2]], want, rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="LUFactorization: solve it with solver=dq.LU"):
        dq.linear_solve(first.learned["state"], b, dq.GMRES())


# ------------------------------------------------------------------------- Newton and the trust region at any scale

_SCALED_W = np.array([[0.5, 0.8, 0.1], [-0.7, 0.3, 0.4], [0.2, -0.6, 0.5]])


@pytest.mark.parametrize("solver", [dq.NewtonRaphson(), dq.TrustRegion()], ids=["newton", "trust-region"])
@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e20), (np.float32, 1e-20), (np.float64, 1e160),
                                          (np.float64, 1e-160)])
def test_newton_and_trust_region_solve_a_problem_posed_at_an_extreme_scale(solver, dtype, scale):
    """F(y) = s·tanh(W y/s + 1) − y is the unit problem scaled by s: squares of its norms overflow (or underflow)
    at s = 1e20 in float32 and 1e160 in float64, which stalled the line search and the dogleg; the root is s
    times SciPy's root of the unit problem, reached in as many evaluations as at scale 1."""
    from scipy.optimize import fsolve

    W, s = _SCALED_W.astype(dtype), dtype(scale)
    unit = fsolve(lambda z: np.tanh(_SCALED_W @ z + 1.0) - z, np.zeros(3), xtol=1e-14)
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    sols = {}
    for k in (dtype(1), s):
        fn = lambda y, k=k: k * np.tanh(y / k @ W.T + dtype(1)) - y
        y0 = (k * np.array([0.1, -0.2, 0.3])).astype(dtype)
        sol = sols[k] = dq.root_find(fn, y0, solver, atol=0.0, rtol=rtol, throw=False)
        assert sol.result == dq.ReturnCode.SUCCESS and sol.value.dtype == dtype
        assert np.abs(fn(sol.value)).max() <= rtol * np.abs(fn(y0)).max()      # the documented test (rtol part)
        np.testing.assert_allclose(sol.value / k, unit, rtol=50 * rtol ** 0.5 if dtype == np.float32 else 1e-8)
    assert sols[s].stats["nfev"] <= sols[dtype(1)].stats["nfev"] + 8


# ------------------------------------------------------------------------- ODE states far from size 1

ODE_METHODS = [dq.Tsit5(), dq.VCAB3(), dq.VCABM3(), dq.Radau(), dq.BDF(), dq.Rodas5P(), dq.Rodas4(), dq.Rodas3()]
ODE_IDS = [type(m).__name__ for m in ODE_METHODS]


@pytest.mark.parametrize("solver", ODE_METHODS, ids=ODE_IDS)
@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e30), (np.float64, 1e250)])
def test_a_decaying_ode_whose_state_is_large_but_finite_is_solved_not_diverged(solver, dtype, scale):
    """A finite state above √max of its dtype (1.8e19 in float32, 1.3e154 in float64) was called DIVERGED after
    the first accepted step, for integrate and steady_state alike, though the solution decays: the problem is
    the unit problem scaled, and its solution is the scaled matrix exponential's."""
    from scipy.linalg import expm

    A = np.array([[-1.0, 2.0], [-2.0, -1.0]])
    Ad, y0 = A.astype(dtype), (scale * np.array([1.0, 0.5])).astype(dtype)
    rhs = lambda t, y: y @ Ad.T
    sol = dq.integrate(rhs, y0, (0.0, 1.0), solver, atol=scale * 1e-6, rtol=1e-4, throw=False)
    assert sol.result == dq.ReturnCode.SUCCESS and sol.value.dtype == dtype
    np.testing.assert_allclose(sol.value / scale, expm(A) @ [1.0, 0.5], atol=3e-4)
    steady = dq.steady_state(rhs, y0, solver, atol=0.0, rtol=1e-4, throw=False)
    assert steady.result == dq.ReturnCode.SUCCESS
    assert np.abs(rhs(0.0, steady.value)).max() <= 1e-4 * np.abs(rhs(0.0, y0)).max()


@pytest.mark.parametrize("solver", [dq.Tsit5(), dq.Radau(), dq.Rodas5P()], ids=["Tsit5", "Radau", "Rodas5P"])
def test_a_runaway_is_growth_past_the_square_root_of_the_largest_float_times_the_start(solver):
    # y' = y over [0, 40] from 1e140 reaches 2.4e157 (> √max = 1.3e154, called DIVERGED): a 2.4e17-fold growth,
    # integrated; over [0, 400] from 1 it grows e^400-fold, past √max: a runaway, DIVERGED as before
    sol = dq.integrate(lambda t, y: y, np.full(1, 1e140), (0.0, 40.0), solver, atol=1e130, rtol=1e-8, throw=False)
    assert sol.result == dq.ReturnCode.SUCCESS
    assert abs(sol.value[0] / (1e140 * math.exp(40.0)) - 1.0) < 1e-5
    sol = dq.integrate(lambda t, y: y, np.ones(1), (0.0, 400.0), solver, atol=1e-8, rtol=1e-8, throw=False)
    assert sol.result == dq.ReturnCode.DIVERGED and sol.t_final < 360.0


@pytest.mark.parametrize("solver", [dq.Tsit5(), dq.VCABM3(), dq.Rodas5P()], ids=["Tsit5", "VCABM3", "Rodas5P"])
def test_a_batched_steady_state_measures_each_sample_s_runaway_against_its_own_start(solver):
    # float32 samples at 1e30 (decaying) and at 1 (running away): each ends as its own solve (Rosenbrock's
    # finite-difference Jacobian, accurate to ~3e-4 in float32, may stop the decay at another accepted step)
    rhs = lambda t, u: u * np.array([[-1.0], [1.0]], np.float32)
    y0 = np.array([[1e30, 2e30], [1.0, 2.0]], np.float32)
    sol = dq.steady_state(rhs, y0, solver, batched=True, atol=0.0, rtol=1e-3, max_steps=5000, throw=False)
    assert sol.result[0] == dq.ReturnCode.SUCCESS and sol.result[1] == dq.ReturnCode.DIVERGED
    for i, sign in enumerate((-1.0, 1.0)):
        alone = dq.steady_state(lambda t, u: np.float32(sign) * u, y0[i], solver, atol=0.0, rtol=1e-3,
                                max_steps=5000, throw=False)
        assert int(alone.result) == int(sol.result[i])
        if not isinstance(solver, dq.Rodas5P):
            np.testing.assert_allclose(alone.value, sol.value[i], rtol=1e-6)
    assert np.abs(rhs(0.0, sol.value)[0]).max() <= 1e-3 * np.abs(rhs(0.0, y0)[0]).max()


def test_steady_state_takes_a_numpy_bool_for_batched_as_it_does_for_throw():
    # a NumPy bool was refused with "batched must be a bool, got bool" (NumPy 2 names its type bool)
    rhs = lambda t, u: 1.0 - u
    want = dq.steady_state(rhs, np.zeros((2, 3)), batched=True, throw=True)
    got = dq.steady_state(rhs, np.zeros((2, 3)), batched=np.True_, throw=np.True_)
    assert got.result.tolist() == [0, 0] and np.array_equal(got.value, want.value)
    assert np.abs(got.value - 1.0).max() <= 1e-4          # |f(u)| = |1 − u| ≤ rtol·|f(u0)| (atol 1e-6 + 1e-4)
    with pytest.raises(TypeError, match="batched must be a bool, got str"):
        dq.steady_state(rhs, np.zeros((2, 3)), batched="yes")


@pytest.mark.parametrize("solver", ODE_METHODS, ids=ODE_IDS)
def test_an_integration_that_accepts_no_step_reports_the_residual_at_its_start_not_nan(solver):
    # dt0 far too large and max_steps=1: the one attempt is rejected and the solve ends MAX_STEPS at t0, where
    # max|dy/dt| = 1000 (the residual read NaN, while steady_state reports max|f(u0)| in the same case)
    rhs = lambda t, y: -1000.0 * (y - np.cos(10.0 * t))
    sol = dq.integrate(rhs, np.zeros(2), (0.0, 10.0), solver, dt0=5.0, max_steps=1, atol=1e-12,
                       rtol=1e-10, throw=False)
    assert sol.result == dq.ReturnCode.MAX_STEPS and sol.stats["accepted"] == 0 and sol.t_final == 0.0
    assert sol.residual == np.abs(rhs(0.0, np.zeros(2))).max() == 1000.0
    np.testing.assert_array_equal(sol.value, np.zeros(2))


def test_numpy_bools_are_taken_for_throw_and_batched_by_the_root_entry_points():
    """NumPy 2's bool type is named 'bool' (was refused: 'must be True or False, got bool')."""
    import deqcore as dq

    sol = dq.fixed_point(lambda z: 0.5 * z + 1.0, np.zeros(2), throw=np.True_, batched=np.False_)
    np.testing.assert_allclose(sol.value, [2.0, 2.0], rtol=1e-5)
    with pytest.raises(TypeError, match="throw must be True or False, got int"):
        dq.fixed_point(lambda z: 0.5 * z, np.zeros(2), throw=1)


@pytest.mark.parametrize("solver", [dq.Broyden(), dq.LimitedMemoryBroyden()], ids=["broyden", "limited"])
@pytest.mark.parametrize("kernels", ["reference", "default"])
def test_broyden_solves_a_problem_posed_at_1e100(solver, kernels, monkeypatch):
    """The update's usability test compared |vᵀd| with sqrt(sᵀs·dᵀd), whose product overflows once s and d
    reach ~1e77 in float64 (the sample then ended DIVERGED); the scaled problem takes the unit problem's
    steps."""
    if kernels == "reference":
        monkeypatch.setenv("DEQCORE_KERNELS", "reference")
    W, s = _SCALED_W, 1e100
    sols = {}
    for k in (1.0, s):
        fn = lambda y, k=k: k * np.tanh(y / k @ W.T + 1.0) - y
        sols[k] = dq.root_find(fn, k * np.array([0.1, -0.2, 0.3]), solver, atol=0.0, rtol=1e-10, throw=False)
        assert sols[k].result == dq.ReturnCode.SUCCESS, (k, sols[k].result)
    np.testing.assert_allclose(sols[s].value / s, sols[1.0].value, rtol=1e-8)
    assert abs(sols[s].stats["nfev"] - sols[1.0].stats["nfev"]) <= 2
