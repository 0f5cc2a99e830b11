"""Finite-difference derivatives (deqcore.linalg.finite_diff; also deqcore.ode.finite_diff) against analytic Jacobians."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from deqcore.linalg.finite_diff import FiniteDiffJacobian, column_groups, increments, jvp_step


def _robertson_rows(Y):
    y1, y2, y3 = Y[:, 0], Y[:, 1], Y[:, 2]
    return np.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2 ** 2, 3e7 * y2 ** 2], 1)


def _robertson_jac(y):
    y1, y2, y3 = y
    return np.array([[-0.04, 1e4 * y3, 1e4 * y2], [0.04, -1e4 * y3 - 6e7 * y2, -1e4 * y2], [0.0, 6e7 * y2, 0.0]])


@pytest.mark.parametrize("state", [[1.0, 0.0, 0.0], [0.9, 3.6e-5, 0.1], [2.1e-8, 8.3e-14, 1.0]],
                         ids=["start", "transient", "t=1e11"])
def test_robertson_jacobian_matches_the_analytic_one(state):
    y = np.array([state])
    J = FiniteDiffJacobian(3, threshold=1e-20).dense(_robertson_rows, y, _robertson_rows(y))[0]
    exact = _robertson_jac(y[0])
    # every entry to a relative 1e-5 of the largest entry of its row (rounding level of the row's f)
    scale = np.maximum(np.abs(exact).max(axis=1, keepdims=True), 1e-12 * np.abs(exact).max())
    assert np.all(np.abs(J - exact) <= 1e-5 * scale), (J, exact)
    if state[1] == 8.3e-14:   # ∂f3/∂y2 = 6e7·y2 = 5e-6; a fixed sqrt(eps)·max(|y|, 1) step gives 0.45
        assert abs(J[2, 1] / exact[2, 1] - 1) < 1e-6


def test_increments_scale_with_small_components_and_are_exact():
    y = np.array([1e-12, -1e-12, 0.0, 5.0])
    h = increments(np, y, 1e-15, 1e-8)
    np.testing.assert_allclose(np.abs(h), [1e-20, 1e-20, 1e-23, 5e-8], rtol=1e-6)
    assert np.all((y + h) - y == h) and h[1] < 0


def test_rounding_dominated_column_is_recomputed_and_its_factor_grows():
    F = lambda Y: np.stack([1e12 + Y[:, 0] * 1e-3, Y[:, 1]], 1)      # column 0 lost in f's rounding
    y = np.array([[1.0, 1.0]])
    fd = FiniteDiffJacobian(2)
    fd.dense(F, y, F(y))
    assert fd.evaluations == 3                       # two columns + one retry of column 0
    assert fd.factor[0, 0] > fd.factor[0, 1]


def _banded_f(Y):
    """A nonlinear tridiagonal system (discrete Burgers-like) with an analytic Jacobian."""
    left = np.roll(Y, 1, axis=1); left[:, 0] = 0
    right = np.roll(Y, -1, axis=1); right[:, -1] = 0
    return left - 2 * Y + right - Y ** 3


def _banded_jac(y):
    n = y.size
    return np.diag(-2 - 3 * y ** 2) + np.eye(n, k=1) + np.eye(n, k=-1)


def test_grouped_columns_fill_the_tridiagonal_jacobian_in_three_evaluations():
    n = 40
    pattern = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= 1
    y = np.random.default_rng(0).standard_normal((2, n))
    fd = FiniteDiffJacobian(n, threshold=1e-6, sparsity=pattern)
    J = fd.dense(_banded_f, y, _banded_f(y))
    assert fd.num_groups == 3 and fd.evaluations == 3
    for b in range(2):
        np.testing.assert_allclose(J[b], _banded_jac(y[b]), rtol=1e-5, atol=1e-5)
    values = FiniteDiffJacobian(n, threshold=1e-6, sparsity=pattern).sparse_values(_banded_f, y, _banded_f(y))
    S = fd.pattern
    for b in range(2):
        np.testing.assert_allclose(sp.csc_matrix((values[b], S.indices, S.indptr)).toarray(), J[b])


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 30), st.floats(0.02, 0.4), st.integers(0, 2 ** 31 - 1))
def test_colouring_groups_share_no_row(n, density, seed):
    rng = np.random.default_rng(seed)
    pattern = rng.random((n, n)) < density
    groups = column_groups(pattern)
    for g in np.unique(groups):
        cols = np.flatnonzero(groups == g)
        assert pattern[:, cols].sum(axis=1).max(initial=0) <= 1
    assert groups.max() + 1 <= n


def test_jvp_step_is_per_row_and_zero_for_zero_directions():
    y = np.array([[3.0, 4.0], [0.0, 0.0]])
    v = np.array([[1.0, 0.0], [0.0, 0.0]])
    s = jvp_step(np, y, v)
    assert s.shape == (2, 1) and s[1, 0] == 0.0
    f = lambda Y: Y ** 2
    jv = (f(y + s * v) - f(y)) / np.where(s > 0, s, 1)
    np.testing.assert_allclose(jv[0], [6.0, 0.0], rtol=1e-6)


# ---- the root solvers use the same increments ----
def _badly_scaled(y):
    """Components of size ~1e-8 and ~1e8, coupled; root at (2e-8, sqrt(7e16))."""
    y0, y1 = y[..., 0], y[..., 1]
    return np.stack([(y0 * y0 - 4e-16) * 1e16 + 1e-16 * (y1 - 7e16 ** 0.5), (y1 * y1 - 9e16) * 1e-16 + 1e8 * y0],
                    axis=-1)


def test_root_problem_jacobian_is_accurate_on_a_badly_scaled_system():
    from deqcore.root.problem import flat_problem

    y = np.array([[1.3e-8, 0.7e8]])
    problem, y2d, _ = flat_problem(_badly_scaled, y, (), True, mode="root")
    J = problem.jacobian(y2d, problem.F(y2d))[0]
    exact = np.array([[2e16 * y[0, 0], 1e-16], [1e8, 2e-16 * y[0, 1]]])
    # every entry to 1e-6 of its row's largest; a fixed sqrt(eps)·max(|y|, 1) increment (1.5e-8 > y0) gave
    # ∂f0/∂y0 58% off
    assert np.all(np.abs(J - exact) <= 1e-6 * np.abs(exact).max(axis=1, keepdims=True)), J
    assert abs(J[0, 0] / exact[0, 0] - 1) < 1e-6
    # and a zero component still gets a usable increment (MINPACK's sqrt(eps)·1)
    J0 = problem.jacobian(np.array([[0.0, 1e8]]), problem.F(np.array([[0.0, 1e8]])))[0]
    assert abs(J0[1, 0] / 1e8 - 1) < 1e-6 and abs(J0[1, 1] / 2e-8 - 1) < 1e-6



@pytest.mark.parametrize("atol", [1e-20, 1e-8, np.array([[1e-6, 1e-12, 1e-6]])])
def test_one_system_equals_the_batched_path(atol):
    """One NumPy system takes its own (compiled) path: the same Jacobians, evaluations and adapted factors as
    the same system inside a batch, over a sequence of calls (columns lost in rounding included)."""
    one, two = FiniteDiffJacobian(3, threshold=atol), FiniteDiffJacobian(3, threshold=atol)
    for state in ([1.0, 0.0, 0.0], [0.9, 3.6e-5, 0.1], [2.1e-8, 8.3e-14, 1.0], [1.0, 1.0, 1.0]):
        y = np.array([state])
        J1 = one.dense(_robertson_rows, y, _robertson_rows(y))
        Y = np.repeat(y, 2, axis=0)
        J2 = two.dense(_robertson_rows, Y, _robertson_rows(Y))
        np.testing.assert_array_equal(J1[0], J2[0])
        np.testing.assert_array_equal(one.factor[0], two.factor[0])
    assert one.evaluations == two.evaluations
