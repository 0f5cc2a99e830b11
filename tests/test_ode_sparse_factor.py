"""The sparse factors of the implicit steppers' Newton matrices (deqcore.ode.sparse_lu.ShiftedSparseLU):
solutions against dense LAPACK solves on random patterns (real and complex shifts, patterns that are not
symmetric), the partial-pivoting fallback, singular and non-finite matrices refused; and dq.BDF with a
sparsity pattern on the 2-D Brusselator against the dense path and SciPy."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

import deqcore as dq
from deqcore.demos.stiff_problems import brusselator_2d
from deqcore.ode.sparse_lu import ShiftedSparseLU


def _random_jacobian(rng, n, density, symmetric):
    mask = rng.random((n, n)) < density
    if symmetric:
        mask |= mask.T
    J = np.where(mask, rng.normal(size=(n, n)), 0.0)
    return sp.csc_matrix(J), mask


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.integers(1, 40), density=st.floats(0.02, 0.4),
       symmetric=st.booleans(), complex_shift=st.booleans(), b=st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
def test_solutions_match_a_dense_solve(seed, n, density, symmetric, complex_shift, b):
    rng = np.random.default_rng(seed)
    J, mask = _random_jacobian(rng, n, density, symmetric)
    lu = ShiftedSparseLU(mask)
    data = lu.values(J)
    assert data is not None
    a = 2.0 + 0.5j if complex_shift else 1.0
    M = a * np.eye(n) - b * J.toarray()
    rhs = rng.normal(size=n) + (1j * rng.normal(size=n) if complex_shift else 0.0)
    cond = np.linalg.cond(M)
    ok = lu.factor(data, a, b)
    if cond < 1e10:
        assert ok
        np.testing.assert_allclose(lu.solve(rhs), np.linalg.solve(M, rhs), rtol=0,
                                   atol=1e-12 * cond * np.abs(np.linalg.solve(M, rhs)).max())
    if ok:                          # a matrix accepted is solved accurately (residual at rounding level)
        x = lu.solve(rhs)
        assert np.abs(M @ x - rhs).max() <= 1e-9 * cond * np.abs(rhs).max()


def test_the_factors_of_a_second_matrix_replace_the_first():
    rng = np.random.default_rng(3)
    J, mask = _random_jacobian(rng, 30, 0.1, False)
    lu = ShiftedSparseLU(mask)
    rhs = rng.normal(size=30)
    for b in (0.01, 1.0, 0.01):
        assert lu.factor(lu.values(J), 1.0, b)
        expected = np.linalg.solve(np.eye(30) - b * J.toarray(), rhs)
        np.testing.assert_allclose(lu.solve(rhs), expected, rtol=1e-10)
    twin = lu.twin()               # the same symbolic work, factors of its own
    assert twin.factor(lu.values(J), 3.0j, 1.0)
    np.testing.assert_allclose(lu.solve(rhs), expected, rtol=1e-10)
    np.testing.assert_allclose(twin.solve(rhs), np.linalg.solve(3.0j * np.eye(30) - J.toarray(), rhs),
                               rtol=1e-10)


def test_a_stepper_s_factors_real_and_complex_slots_and_a_pattern_widened():
    from deqcore.ode.sparse_lu import SparseFactors

    rng = np.random.default_rng(5)
    J, mask = _random_jacobian(rng, 20, 0.1, False)
    factors = SparseFactors(mask)
    rhs = rng.normal(size=20)
    real = factors.solver(J, 4.0, 1.0, np.float64)
    cplx = factors.solver(sp.csr_matrix(J), 4.0 + 2.0j, 1.0, np.complex128, slot=1)
    np.testing.assert_allclose(real(rhs), np.linalg.solve(4.0 * np.eye(20) - J.toarray(), rhs), rtol=1e-10)
    np.testing.assert_allclose(cplx(rhs), np.linalg.solve((4.0 + 2.0j) * np.eye(20) - J.toarray(), rhs),
                               rtol=1e-10)
    assert factors.slots[1].l_idx is factors.slots[0].l_idx          # one symbolic factorisation
    K = J.toarray()
    K[np.argwhere(~mask)[0][0], np.argwhere(~mask)[0][1]] = 0.5      # an entry outside the pattern
    wide = factors.solver(sp.csr_matrix(K), 4.0, 1.0, np.float32)
    x = wide(rhs.astype(np.float32))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, np.linalg.solve(4.0 * np.eye(20) - K, rhs), rtol=1e-4)


def test_a_small_diagonal_pivot_falls_back_to_partial_pivoting():
    # 0·I − J with J a cyclic shift: every diagonal entry is zero, the matrix is a permutation (well posed)
    n = 6
    P = np.roll(np.eye(n), 1, axis=1) * np.arange(1.0, n + 1)
    J = sp.csc_matrix(P)
    lu = ShiftedSparseLU(J != 0)
    assert lu.factor(lu.values(J), 1e-14, 1.0)
    assert lu.fallbacks == 1
    rhs = np.arange(1.0, n + 1)
    np.testing.assert_allclose(lu.solve(rhs), np.linalg.solve(1e-14 * np.eye(n) - P, rhs), rtol=1e-12)
    # a second such matrix in a row: the next ones go to partial pivoting directly, and stay right; a
    # matrix with a good diagonal afterwards is factored on the diagonal again
    from deqcore.ode.sparse_lu import SKIP_AFTER_FALLBACKS
    for a in [2e-14] + [1e-13] * SKIP_AFTER_FALLBACKS + [10.0]:
        assert lu.factor(lu.values(J), a, 1.0)
        np.testing.assert_allclose(lu.solve(rhs), np.linalg.solve(a * np.eye(n) - P, rhs), rtol=1e-12)
    assert lu.fallbacks == 2 + SKIP_AFTER_FALLBACKS and lu._splu is None


@pytest.mark.parametrize("case", ["zero", "nearly", "nan", "inf", "zero_after_fallback"])
def test_singular_and_non_finite_matrices_are_refused(case):
    n = 5
    diagonal = np.array([2.0, -9.0, -9.0, -9.0, -9.0])
    J = sp.csc_matrix(np.diag(diagonal) + np.diag(np.ones(n - 1), 1))
    lu = ShiftedSparseLU(J != 0)
    data = lu.values(J).copy()
    a, b = 2.0, 1.0                     # 2I − J: a zero pivot (exactly singular)
    if case == "nearly":                # a pivot 4e-16 beside pivots of 11: singular to working precision
        a = 2.0 * (1 + 2.0 ** -52)       # the next float after 2
    if case == "nan":
        a, data[0] = 3.0, np.nan
    if case == "inf":
        a, data[-1] = 3.0, np.inf
    if case == "zero_after_fallback":   # no usable diagonal pivot, and rank-deficient: the fallback sees it
        J = sp.csc_matrix(np.roll(np.eye(n), 1, axis=1))
        lu = ShiftedSparseLU(J != 0)
        data = lu.values(J).copy()
        a, data[0] = 0.0, 0.0
    assert not lu.factor(data, a, b)


def test_values_are_taken_from_any_sparse_layout_and_outside_entries_are_seen():
    rng = np.random.default_rng(0)
    J, mask = _random_jacobian(rng, 12, 0.2, False)
    lu = ShiftedSparseLU(mask)
    for other in (sp.csr_matrix(J), sp.coo_matrix(J), J):
        np.testing.assert_array_equal(lu.values(other), lu.values(J))
    outside = np.argwhere(~mask & ~np.eye(12, dtype=bool))[0]
    K = J.toarray()
    K[tuple(outside)] = 1.0
    assert lu.values(sp.csr_matrix(K)) is None


# ---- dq.BDF with a sparsity pattern ----
@pytest.fixture(scope="module")
def brusselator():
    f, y0, pattern = brusselator_2d(4)
    ref = solve_ivp(f, (0.0, 2.0), y0, method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]     # mildly stiff
    return f, y0, pattern, ref


def test_bdf_with_a_pattern_matches_the_dense_path_and_scipy(brusselator):
    f, y0, pattern, ref = brusselator
    for rtol in (1e-4, 1e-7):
        sparse = dq.integrate(f, y0, (0.0, 2.0), dq.BDF(jac_sparsity=pattern), rtol=rtol, atol=rtol)
        dense = dq.integrate(f, y0, (0.0, 2.0), dq.BDF(), rtol=rtol, atol=rtol)
        assert sparse.result == dense.result == dq.ReturnCode.SUCCESS
        assert np.abs(sparse.ys[-1] - ref).max() < 30 * rtol * np.abs(ref).max()
        assert np.abs(sparse.ys[-1] - dense.ys[-1]).max() < 30 * rtol * np.abs(ref).max()
        # the same method: the same number of steps within a few (the Jacobians differ in rounding only)
        assert abs(sparse.stats["accepted"] - dense.stats["accepted"]) <= 0.1 * dense.stats["accepted"] + 3
        assert sparse.stats["nfev_jac"] < dense.stats["nfev_jac"]


def test_bdf_with_a_pattern_in_float32(brusselator):
    f, y0, pattern, ref = brusselator
    f32 = lambda t, y: f(t, y.astype(np.float64)).astype(np.float32)      # noqa: E731
    sol = dq.integrate(f32, y0.astype(np.float32), (0.0, 2.0), dq.BDF(jac_sparsity=pattern), rtol=1e-4,
                       atol=1e-4)
    assert sol.result == dq.ReturnCode.SUCCESS and sol.ys.dtype == np.float32
    assert np.abs(sol.ys[-1] - ref).max() < 3e-3 * np.abs(ref).max()


def test_bdf_with_a_user_sparse_jacobian_of_another_layout(brusselator):
    f, y0, pattern, ref = brusselator
    n = y0.size

    def jac(t, y):                 # central differences on the pattern, as a CSR matrix with explicit zeros
        J = np.zeros((n, n))
        for j in range(n):
            e = np.zeros(n)
            e[j] = 1e-6
            J[:, j] = (f(t, y + e) - f(t, y - e)) / 2e-6
        return sp.csr_matrix(np.where(pattern.toarray(), J, 0.0))
    sol = dq.integrate(f, y0, (0.0, 2.0), dq.BDF(), rtol=1e-6, atol=1e-6, jac=jac)
    assert sol.result == dq.ReturnCode.SUCCESS and sol.stats["nfev_jac"] == 0
    assert np.abs(sol.ys[-1] - ref).max() < 3e-5 * np.abs(ref).max()


def test_bdf_with_a_sparse_matrix_that_cannot_be_factored_fails_with_linear_solve_failed():
    n = 4
    nan_jac = lambda t, y: sp.csr_matrix(np.diag(np.full(n, np.nan)))          # noqa: E731
    sol = dq.integrate(lambda t, y: -y, np.ones(n), (0.0, 1.0), dq.BDF(jac_sparsity=np.eye(n)), jac=nan_jac,
                       throw=False)
    assert sol.result == dq.ReturnCode.LINEAR_SOLVE_FAILED
    inf_jac = lambda t, y: sp.csr_matrix(np.diag([np.inf, 1.0, 1.0, 1.0]))   # noqa: E731
    sol = dq.integrate(lambda t, y: -y, np.ones(n), (0.0, 1.0), dq.BDF(jac_sparsity=np.eye(n)), jac=inf_jac,
                       throw=False)
    assert sol.result == dq.ReturnCode.LINEAR_SOLVE_FAILED


# ---- the column colouring of the finite-difference Jacobian (compiled) ----
def _first_fit_reference(pattern):
    """Greedy colouring in Python: columns by decreasing count (stable), each to the first group whose
    columns cover none of its rows."""
    n = pattern.shape[1]
    order = sorted(range(n), key=lambda j: -pattern[:, j].sum())
    groups, covered = np.full(n, -1), []
    for j in order:
        rows = pattern[:, j]
        g = next((g for g, c in enumerate(covered) if not (c & rows).any()), len(covered))
        if g == len(covered):
            covered.append(np.zeros(pattern.shape[0], dtype=bool))
        covered[g] |= rows
        groups[j] = g
    return groups


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), m=st.integers(1, 30), n=st.integers(1, 30),
       density=st.floats(0.0, 0.5))
def test_column_groups_are_the_greedy_first_fit_colouring(seed, m, n, density):
    from deqcore.linalg.finite_diff import column_groups

    pattern = np.random.default_rng(seed).random((m, n)) < density
    np.testing.assert_array_equal(column_groups(pattern), _first_fit_reference(pattern))
    np.testing.assert_array_equal(column_groups(sp.csr_matrix(pattern)), _first_fit_reference(pattern))


# ---- the dense trailing block (LAPACK getrf/getrs on the Schur complement) ----
def _block_diagonal(rng, n_diag, n_dense, singular=False):
    """J = diag(first n_diag) ⊕ a dense n_dense × n_dense block (two equal rows when ``singular``)."""
    n = n_diag + n_dense
    J = np.zeros((n, n))
    J[:n_diag, :n_diag] = np.diag(rng.normal(size=n_diag))
    D = rng.normal(size=(n_dense, n_dense))
    if singular:
        D[1] = D[0]
    J[n_diag:, n_diag:] = D
    return J


@pytest.mark.parametrize("complex_shift", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_brusselator_factors_have_a_dense_block_and_solve_like_a_dense_solve(complex_shift, dtype):
    from deqcore.ode.sparse_lu import SparseFactors

    f, y0, pattern = brusselator_2d(8)
    n = y0.size
    rng = np.random.default_rng(1)
    P = sp.csc_matrix(pattern)
    J = sp.csc_matrix((rng.normal(size=P.nnz), P.indices, P.indptr), shape=P.shape)
    factors = SparseFactors(pattern)
    a = 3.0 + 2.0j if complex_shift else 3.0
    out = np.complex64 if complex_shift and dtype == np.float32 else np.complex128 if complex_shift else dtype
    solve = factors.solver(J, a, 1.0, out)
    lu = factors.slots[0]
    assert lu.block_start < n and lu.fallbacks == 0                # the dense-block path was taken
    M = a * np.eye(n) - J.toarray()
    rhs = rng.normal(size=n)
    x = solve(rhs.astype(out))
    assert x.dtype == out
    expected = np.linalg.solve(M, rhs)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.abs(x - expected).max() <= tol * np.linalg.cond(M) * np.abs(expected).max()


def test_any_block_start_gives_the_same_solution():
    # the start of the dense block is a choice of speed only: every start solves alike (to round-off), also
    # one where the block's columns are sparse
    f, y0, pattern = brusselator_2d(4)
    n = y0.size
    rng = np.random.default_rng(2)
    P = sp.csc_matrix(pattern)
    J = sp.csc_matrix((rng.normal(size=P.nnz), P.indices, P.indptr), shape=P.shape)
    rhs = rng.normal(size=n) + 1j * rng.normal(size=n)
    lu = ShiftedSparseLU(pattern)
    for a in (2.0, 2.0 - 1.0j):
        expected = np.linalg.solve(a * np.eye(n) - J.toarray(), rhs if isinstance(a, complex) else rhs.real)
        for start in (n, n - 16, n // 2, 0):
            lu._set_block(start)
            lu._dtype = None
            lu.block_starts = (lu.block_start, lu.block_start)
            assert lu.factor(lu.values(J), a, 1.0)
            np.testing.assert_allclose(lu.solve(rhs if isinstance(a, complex) else rhs.real), expected,
                                       rtol=1e-10, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("complex_shift", [False, True])
def test_the_dense_block_pivots_where_the_diagonal_cannot(complex_shift):
    # a zero diagonal inside the dense block: the sparse elimination would need the fallback, LAPACK's
    # partial pivoting inside the block does not
    rng = np.random.default_rng(4)
    J = _block_diagonal(rng, 10, 40)
    J[10:, 10:] = np.roll(np.eye(40), 1, axis=1) * rng.uniform(1.0, 2.0, size=40) + 0.01 * rng.normal(size=(40, 40))
    np.fill_diagonal(J[10:, 10:], 0.0)
    lu = ShiftedSparseLU(J != 0)
    assert lu.block_start < 50
    a = 1e-3j if complex_shift else 0.0
    M = a * np.eye(50) - J
    rhs = rng.normal(size=50)
    assert lu.factor(lu.values(sp.csc_matrix(J)), a, 1.0)
    assert lu.fallbacks == 0
    np.testing.assert_allclose(lu.solve(rhs), np.linalg.solve(M, rhs), rtol=1e-9,
                               atol=1e-12 * np.abs(np.linalg.solve(M, rhs)).max())


@pytest.mark.parametrize("case", ["singular", "nan", "overflow"])
@pytest.mark.parametrize("complex_shift", [False, True])
def test_a_singular_or_non_finite_dense_block_is_refused(case, complex_shift):
    rng = np.random.default_rng(6)
    J = _block_diagonal(rng, 10, 40, singular=case == "singular")
    lu = ShiftedSparseLU(J != 0)
    assert lu.block_start < 50
    data = lu.values(sp.csc_matrix(J)).copy()
    dense = np.flatnonzero(lu.pattern.indices >= 10)           # entries of the dense block
    if case == "nan":
        data[dense[len(dense) // 2]] = np.nan
    if case == "overflow":                                         # finite entries whose block overflows
        data[dense] *= 1e300
    if complex_shift:                                              # complex factors (a complex zero shift)
        data = data * (1.0 - 0.5j)
    assert not lu.factor(data, 0.0j if complex_shift else 0.0, 1.0 if case != "overflow" else 1e10)
    # the same factors object takes a regular matrix afterwards
    J2 = _block_diagonal(rng, 10, 40)
    assert lu.factor(lu.values(sp.csc_matrix(J2)), 5.0, 1.0)
    rhs = rng.normal(size=50)
    np.testing.assert_allclose(lu.solve(rhs), np.linalg.solve(5.0 * np.eye(50) - J2, rhs), rtol=1e-9)
