"""Probes from outside the modules: the stiff solvers' sparse factorisation (messy user matrices, changing and
incomplete patterns, pivoting, non-finite and non-floating J), Radau at loose tolerances, the fixed-cost ODE
paths (exceptions, nesting, NumPy spans) and the implicit adjoint's GMRES near spectral radius 1, against
references computed another way (SciPy's solve_ivp at tight tolerances, dense solves, analytic solutions)."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.integrate import solve_ivp

import deqcore as dq
from tests.test_stiff import _robertson_jac, _robertson_ref


def _robertson(t, y):
    return np.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
                     0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                     3e7 * y[1] ** 2], dtype=y.dtype)


def _robertson_messy_coo(t, y):
    """J as COO with every entry split into two duplicates, shuffled, plus explicit zeros on the diagonal."""
    J = _robertson_jac(t, y)
    r, c = np.nonzero(np.ones((3, 3)))
    rows = np.concatenate([r, r, [0, 2]])
    cols = np.concatenate([c, c, [0, 2]])
    vals = np.concatenate([J[r, c] / 2, J[r, c] / 2, [0.0, 0.0]])
    p = np.random.default_rng(0).permutation(rows.size)
    return sp.coo_matrix((vals[p], (rows[p], cols[p])), shape=(3, 3))


@pytest.mark.parametrize("solver", [dq.BDF, dq.Radau])
@pytest.mark.parametrize("fmt", ["coo", "csc", "csr"])
def test_user_sparse_jac_with_duplicates_unsorted_indices_and_explicit_zeros(solver, fmt):
    sol = dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e3), solver(),
                       jac=lambda t, y: _robertson_messy_coo(t, y).asformat(fmt), rtol=1e-6, atol=1e-10)
    ref = _robertson_ref(1e3)
    assert sol.success
    assert np.all(np.abs(sol.value - ref) <= 100 * (1e-6 * np.abs(ref) + 1e-10))


@pytest.mark.parametrize("solver", [dq.BDF, dq.Radau])
def test_user_sparse_jac_whose_pattern_changes_between_calls(solver):
    # zeros dropped by csr_matrix: y1 = y2 = 0 at the start, so the first J lacks entries later ones have
    sol = dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e3), solver(),
                       jac=lambda t, y: sp.csr_matrix(_robertson_jac(t, y)), rtol=1e-6, atol=1e-10)
    ref = _robertson_ref(1e3)
    assert sol.success
    assert np.all(np.abs(sol.value - ref) <= 100 * (1e-6 * np.abs(ref) + 1e-10))


@pytest.mark.parametrize("solver", [dq.BDF, dq.Radau])
def test_zero_diagonal_pattern_needs_pivoting_second_order_oscillator(solver):
    # y'' = -100 y as a first-order system: J = [[0, 1], [-100, 0]], zero diagonal, large off-diagonals
    sol = dq.integrate(lambda t, y: np.array([y[1], -100.0 * y[0]]), np.array([1.0, 0.0]), (0.0, 1.0),
                       solver(jac_sparsity=np.array([[0, 1], [1, 0]])), rtol=1e-6, atol=1e-9)
    exact = np.array([np.cos(10.0), -10.0 * np.sin(10.0)])
    assert sol.success
    assert np.abs(sol.value - exact).max() <= 100 * 1e-6 * 10.0


@pytest.mark.parametrize("solver", [dq.BDF, dq.Radau])
def test_pattern_missing_entries_of_j_and_empty_rows_still_accurate(solver):
    # the pattern is the diagonal only, J has (0, 1) and (2, 0) too; component 3 has an empty row
    lam = np.array([-1.0, -2.0, -1000.0])

    def rhs(t, y):
        return np.array([lam[0] * y[0] + 50.0 * y[1], lam[1] * y[1], lam[2] * y[2] + y[0], 0.0 * y[3]])

    pattern = np.diag([1, 1, 1, 0])
    sol = dq.integrate(rhs, np.ones(4), (0.0, 2.0), solver(jac_sparsity=pattern), rtol=1e-6, atol=1e-9)
    ref = solve_ivp(rhs, (0.0, 2.0), np.ones(4), method="Radau", rtol=1e-12, atol=1e-14).y[:, -1]
    assert sol.success
    assert np.all(np.abs(sol.value - ref) <= 100 * (1e-6 * np.abs(ref) + 1e-9))


@pytest.mark.parametrize("solver", [dq.BDF, dq.Radau])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_sparse_jac_is_a_code_not_a_success(solver, bad):
    sol = dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e3), solver(),
                       jac=lambda t, y: sp.csr_matrix(np.diag([bad, 1.0, 1.0])), throw=False)
    assert not sol.success
    assert sol.result == dq.ReturnCode.LINEAR_SOLVE_FAILED


@pytest.mark.parametrize("dtype", [np.complex128, np.int64])
@pytest.mark.parametrize("solver", [dq.BDF, dq.Radau, dq.Rodas5P])
def test_sparse_jac_of_a_non_floating_dtype_is_refused_like_a_dense_one(solver, dtype):
    """A complex sparse J was cast to real (its imaginary part dropped) and an integer one accepted."""
    J = sp.csr_matrix((-np.eye(2) + (1j * np.eye(2) if dtype is np.complex128 else 0)).astype(dtype))
    with pytest.raises(TypeError, match="jac must return a floating-point matrix"):
        dq.integrate(lambda t, y: -y, np.ones(2), (0.0, 1.0), solver(), jac=lambda t, y: J, throw=False)


@pytest.mark.parametrize("rtol", [1e-1, 1e-2, 1e-3])
def test_radau_loose_tolerances_on_robertson(rtol):
    sol = dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), dq.Radau(), rtol=rtol, atol=1e-8,
                       max_steps=2000)
    ref = _robertson_ref(1e5)
    assert sol.success
    assert np.all(np.abs(sol.value - ref) <= 100 * (rtol * np.abs(ref) + 1e-8))
    assert sol.stats["num_steps"] < 200


class _Boom(Exception):
    pass


@pytest.mark.parametrize("solver", [dq.BDF, dq.Radau])
@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
def test_rhs_exception_propagates_unchanged_and_the_next_solve_works(solver, exc):
    calls = [0]

    def rhs(t, y):
        calls[0] += 1
        if calls[0] == 15:
            raise exc("from rhs")
        return np.array([y[1], 10.0 * ((1 - y[0] ** 2) * y[1] - y[0])])

    with pytest.raises(exc):
        dq.integrate(rhs, np.array([2.0, 0.0]), (0.0, 1.0), solver())
    sol = dq.integrate(lambda t, y: np.array([y[1], -y[0]]), np.array([0.0, 1.0]), (0.0, np.pi / 2), solver(),
                       rtol=1e-9, atol=1e-12)
    assert np.abs(sol.value - [1.0, 0.0]).max() < 1e-6


@pytest.mark.parametrize("solver", [dq.BDF, dq.Radau])
def test_nested_stiff_solve_inside_rhs_and_backward_numpy_span(solver):
    def outer(t, y):
        inner = solver()
        z = dq.integrate(lambda s, u: -u, np.array([y[0]]), (0.0, 0.1), inner, rtol=1e-10, atol=1e-13)
        return np.array([(z.value[0] - y[0]) / 0.1])

    c = (1 - np.exp(-0.1)) / 0.1
    sol = dq.integrate(outer, np.array([1.0]), np.array([1, 0]), solver(), rtol=1e-9, atol=1e-13)
    assert sol.success
    assert abs(sol.value[0] - np.exp(c)) < 1e-6


def _linear_map(rng, n, rho, nonnormal):
    """A = Q T Qᵀ: eigenvalues in [−ρ, ρ] (two at ρ and 0.999ρ), upper part of T scaled by ``nonnormal``."""
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    T = np.diag(rng.uniform(-rho, rho, n))
    T[0, 0], T[1, 1] = rho, 0.999 * rho
    T += np.triu(rng.standard_normal((n, n)), 1) * nonnormal / np.sqrt(n)
    return Q @ T @ Q.T


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nonnormal", [0.0, 1.0, 3.0])
def test_gmres_adjoint_near_unit_spectral_radius_is_right_or_says_so(dtype, nonnormal):
    # f(z) = z Aᵀ + x, λ solves (I − A)ᵀ λ = g; n = 80 > 50 takes the default's iterative path
    from deqcore.adjoint.steady_state import FixedPointVJP, SteadyStateAdjoint

    rng = np.random.default_rng(0)
    n = 80
    A = _linear_map(rng, n, 0.99, nonnormal)
    x, g = rng.standard_normal((3, n)), rng.standard_normal((3, n))
    z = np.linalg.solve(np.eye(n) - A, x.T).T
    M = (np.eye(n) - A).T
    exact = np.linalg.solve(M, g.T).T
    Ad = A.astype(dtype)

    def vjp(zz):
        return zz @ Ad.T + x.astype(dtype), (lambda v: (v @ Ad, (v,)))

    tol = 1e-10 if dtype == np.float64 else 1e-5
    cond = np.linalg.cond(M)
    for adjoint in (SteadyStateAdjoint(), SteadyStateAdjoint(linear_solver=dq.GMRES(rtol=tol, atol=0.0,
                                                                                      max_steps=400))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # a failed adjoint warns; its code is what is checked
            _, info = adjoint.gradient(FixedPointVJP(z.astype(dtype), vjp, batched=True), g.astype(dtype))
        rel = np.linalg.norm(info.lam - exact, axis=1) / np.linalg.norm(exact, axis=1)
        ok = np.asarray(info.result) == 0
        # SUCCESS means the residual test passed: the error is at most cond · (tolerance + rounding)
        eps = np.finfo(dtype).eps
        assert np.all(rel[ok] <= cond * (1e-5 + 100 * eps)), (rel, info.result)
        assert np.all(np.isfinite(info.lam))
    if nonnormal == 0.0:
        assert ok.all()


def test_full_krylov_gmres_adjoint_solves_a_nonnormal_map_restarted_gmres_stalls_on():
    from deqcore.adjoint.steady_state import FixedPointVJP, SteadyStateAdjoint

    rng = np.random.default_rng(3)
    n = 80
    A = _linear_map(rng, n, 0.99, 1.0)
    x, g = rng.standard_normal((2, n)), rng.standard_normal((2, n))
    z = np.linalg.solve(np.eye(n) - A, x.T).T
    exact = np.linalg.solve((np.eye(n) - A).T, g.T).T
    # cond(I − A) ≈ 2.4e6: GMRES(20) (the default restart) ends STALLED on both samples, as SciPy's gmres does
    _, info = SteadyStateAdjoint(linear_solver=dq.GMRES(rtol=1e-10, atol=0.0, max_steps=400, restart=n)).gradient(
        FixedPointVJP(z, lambda zz: (zz @ A.T + x, lambda v: (v @ A, (v,))), batched=True), g)
    np.testing.assert_array_equal(info.result, 0)
    np.testing.assert_allclose(info.lam, exact, rtol=1e-6, atol=1e-8 * np.abs(exact).max())


def test_shifted_sparse_lu_refuses_singular_shifts_and_pivots_a_tiny_diagonal():
    from deqcore.ode.sparse_lu import ShiftedSparseLU

    J = sp.csc_matrix(np.diag([2.0, -1.0, -3.0]))
    lu = ShiftedSparseLU(J != 0)
    assert lu.factor(lu.values(J), 1.0, 0.5) is False            # I − J/2 has a zero pivot
    P = sp.csc_matrix(np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    lu = ShiftedSparseLU(P != 0)
    assert lu.factor(lu.values(P), 1.0, 1.0) is False            # I − P is singular (P has eigenvalue 1)
    lu = ShiftedSparseLU(P != 0)
    assert lu.factor(lu.values(P), 1e-12, 1.0)                   # 1e-12·I − P: diagonal pivots would lose it
    x = lu.solve(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose((1e-12 * np.eye(3) - P.toarray()) @ x, [1.0, 2.0, 3.0], atol=1e-12)
