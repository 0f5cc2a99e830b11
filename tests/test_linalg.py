"""Linear solvers against numpy.linalg: LU, GMRES, LinearOperator and linear_solve."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import deqcore as dq
from deqcore.linalg import GMRES, LU, LinearOperator, LUFactorization, linear_solve
from deqcore.results import ReturnCode, SolveError
from tests.helpers import tolerance

DTYPES = st.sampled_from([np.float32, np.float64])


def _rtol(dtype):
    return tolerance(dtype, 1e-5, 1e-10)


def _orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _bounded_condition(rng, n, batch, cond=10.0):
    """Q1 diag(s) Q2^T with singular values in [1, cond]: general (non-normal) well-conditioned matrices."""
    mats = [
        _orthogonal(rng, n) @ np.diag(rng.uniform(1.0, cond, n)) @ _orthogonal(rng, n).T
        for _ in range(batch)
    ]
    return np.stack(mats)


def _near_identity(rng, n, batch):
    """I + E with ||E||_2 about 0.6: the field of values stays away from 0, so restarted GMRES converges."""
    return np.eye(n) + 0.3 / np.sqrt(n) * rng.standard_normal((batch, n, n))


def _reference(A, b, transpose=False):
    A = np.asarray(A, np.float64)
    if transpose:
        A = np.swapaxes(A, -1, -2)
    return np.linalg.solve(A, np.asarray(b, np.float64)[..., None])[..., 0]


def _max_rel_err(x, ref):
    return float(np.max(np.linalg.norm(x - ref, axis=-1) / np.linalg.norm(ref, axis=-1)))


problem = st.tuples(st.integers(1, 30), st.integers(0, 6), DTYPES, st.integers(0, 2**31 - 1))


def _make(make_matrix, n, batch, dtype, seed):
    """(A, b) with batch 0 meaning unbatched."""
    rng = np.random.default_rng(seed)
    A = make_matrix(rng, n, max(batch, 1)).astype(dtype)
    b = rng.standard_normal((max(batch, 1), n)).astype(dtype)
    return (A, b) if batch else (A[0], b[0])


# ---------------------------------------------------------------- LU


@given(problem)
def test_lu_matches_numpy_solve_and_transpose(params):
    n, batch, dtype, seed = params
    A, b = _make(_bounded_condition, n, batch, dtype, seed)
    fac = LU().factor(A)
    bound = 50 * n * np.finfo(dtype).eps * 10.0  # n * eps * cond, generously
    for transpose in (False, True):
        x = fac.solve(b, transpose=transpose)
        assert x.dtype == dtype and x.shape == b.shape
        assert _max_rel_err(x, _reference(A, b, transpose)) < bound
    assert not np.any(fac.singular)
    sol = linear_solve(A, b, transpose=True)
    assert sol.batched == (batch > 0) and np.all(sol.success) and sol.stats["nfactor"] == 1
    assert np.max(sol.residual) < bound * 10 * np.max(np.linalg.norm(b, axis=-1))


@given(st.integers(1, 12), st.integers(1, 5), st.integers(1, 4), DTYPES, st.integers(0, 2**31 - 1))
def test_lu_multiple_right_hand_sides_and_shared_matrix(n, batch, k, dtype, seed):
    rng = np.random.default_rng(seed)
    A = _bounded_condition(rng, n, batch).astype(dtype)
    B = rng.standard_normal((batch, n, k)).astype(dtype)
    tol = 500 * n * np.finfo(dtype).eps
    X = LU().factor(A).solve(B)
    assert np.allclose(X, np.linalg.solve(A.astype(np.float64), B), rtol=tol, atol=tol)
    # one matrix for the whole batch of right-hand sides
    b = B[:, :, 0]
    x = linear_solve(A[0], b).value
    assert x.shape == b.shape and _max_rel_err(x, _reference(A[0], b)) < tol


def test_lu_batched_equals_per_sample(rng):
    A = _bounded_condition(rng, 7, 4)
    b = rng.standard_normal((4, 7))
    fac = LU().factor(A)
    for transpose in (False, True):
        x = fac.solve(b, transpose=transpose)
        for i in range(4):
            xi = LU().factor(A[i]).solve(b[i], transpose=transpose)
            assert np.allclose(x[i], xi, rtol=1e-13, atol=1e-13)


def test_lu_singular_samples_get_a_return_code_not_nans(rng):
    A = _bounded_condition(rng, 4, 4)
    A[1, 2] = A[1, 0]  # duplicated row: exactly singular
    A[2] = 0.0
    A[3, 0, 0] = np.nan
    b = rng.standard_normal((4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SciPy's LinAlgWarning must be caught inside LU
        fac = LU().factor(A)
        x = fac.solve(b)
    assert fac.singular.tolist() == [False, True, True, True]
    assert np.all(np.isfinite(x)) and np.all(x[1:] == 0)
    assert np.allclose(x[0], _reference(A[0], b[0]))
    sol = linear_solve(A, b, throw=False)
    assert sol.codes == [ReturnCode.SUCCESS] + [ReturnCode.LINEAR_SOLVE_FAILED] * 3
    assert sol.success.tolist() == [True, False, False, False]
    with pytest.raises(SolveError, match="3 of 4 samples LINEAR_SOLVE_FAILED"):
        linear_solve(A, b)
    # near-singular in float32: the pivot ratio falls below eps
    tiny = np.diag([1.0, 1e-9]).astype(np.float32)
    assert LU().factor(tiny).singular is True
    assert LU().factor(np.diag([1.0, 1e-9])).singular is False


def test_lu_densifies_operators(rng):
    A = _bounded_condition(rng, 6, 3)
    b = rng.standard_normal((3, 6))
    calls = []

    def matvec(v):
        calls.append(v.shape)
        return np.einsum("bij,bj->bi", A, v)

    sol = linear_solve(LinearOperator(matvec, shape=(6, 6)), b, LU())
    assert len(calls) == 6 and all(c == (3, 6) for c in calls)  # n calls on (B, n) unit vectors
    assert _max_rel_err(sol.value, _reference(A, b)) < 1e-12
    shared = LinearOperator(lambda v: v @ A[0].T, shape=(6, 6))
    assert np.allclose(linear_solve(shared, b[0], LU()).value, _reference(A[0], b[0]))


# ---------------------------------------------------------------- GMRES


@given(problem, st.integers(1, 30))
def test_gmres_matches_numpy_with_any_restart(params, restart):
    n, batch, dtype, seed = params
    A, b = _make(_near_identity, n, batch, dtype, seed)
    rtol = _rtol(dtype)
    solver = GMRES(rtol=rtol, restart=min(restart, n), max_steps=5000)
    for transpose in (False, True):
        sol = linear_solve(A, b, solver, transpose=transpose)
        x = sol.value
        assert x.dtype == dtype and x.shape == b.shape and np.all(sol.success)
        assert sol.stats["num_steps"] <= 5000
        # ||x - x*|| <= ||A^-1|| ||r|| with ||A^-1|| <= 1 / 0.4 here; plus the dtype's rounding
        assert _max_rel_err(x, _reference(A, b, transpose)) < 3 * rtol + 200 * n * np.finfo(dtype).eps
        M = np.swapaxes(A, -1, -2) if transpose else A
        r64 = np.linalg.norm(b - np.einsum("...ij,...j->...i", M.astype(np.float64), x), axis=-1)
        assert np.allclose(sol.residual, r64, rtol=1e-2, atol=50 * np.finfo(dtype).eps * np.linalg.norm(b))


@given(st.integers(2, 20), st.integers(2, 6), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_gmres_batched_equals_per_sample(n, batch, restart, seed):
    rng = np.random.default_rng(seed)
    A = _near_identity(rng, n, batch)
    b = rng.standard_normal((batch, n))
    solver = GMRES(rtol=1e-9, restart=restart, max_steps=4000)
    sol = solver.solve(A, b)
    for i in range(batch):
        one = solver.solve(A[i], b[i])
        assert one.result == sol.codes[i] == ReturnCode.SUCCESS
        assert np.allclose(sol.value[i], one.value, rtol=1e-8, atol=1e-10)
        assert np.isclose(sol.residual[i], one.residual, rtol=1e-3, atol=1e-12)


def test_gmres_exact_inverse_preconditioner_takes_one_iteration(rng):
    A = _bounded_condition(rng, 25, 4)
    b = rng.standard_normal((4, 25))
    inverse = np.linalg.inv(A)
    for M in (lambda v: np.einsum("bij,bj->bi", inverse, v), LinearOperator.from_matrix(inverse)):
        sol = GMRES(rtol=1e-10).solve(A, b, preconditioner=M)
        assert np.all(sol.success)
        assert sol.stats["num_steps"] == 2  # one Arnoldi matvec, one residual check
        assert _max_rel_err(sol.value, _reference(A, b)) < 1e-10
    plain = GMRES(rtol=1e-10, max_steps=5000).solve(A, b)
    assert plain.stats["num_steps"] > 10


def test_gmres_mixed_convergence_gives_per_sample_codes_and_freezes_samples(rng):
    n = 30
    easy = np.eye(n) * 2.0
    hard = np.diag(np.logspace(-3, 1, n))
    b = rng.standard_normal((2, n))
    solver = GMRES(rtol=1e-8, restart=5, max_steps=40)
    sol = solver.solve(np.stack([easy, hard]), b)
    assert sol.codes == [ReturnCode.SUCCESS, ReturnCode.MAX_STEPS]
    assert sol.stats["num_steps"] <= 40
    assert np.allclose(sol.value[0], b[0] / 2.0, rtol=1e-14, atol=0)
    # frozen: more steps for the hard sample leave the easy sample's x bit for bit as it was
    shorter = GMRES(rtol=1e-8, restart=5, max_steps=12).solve(np.stack([easy, hard]), b)
    assert np.array_equal(shorter.value[0], sol.value[0])
    assert not np.array_equal(shorter.value[1], sol.value[1])
    assert sol.residual[1] > 1e-8 * np.linalg.norm(b[1])
    assert np.isclose(sol.residual[1], np.linalg.norm(b[1] - hard @ sol.value[1]))
    with pytest.raises(SolveError, match="1 of 2 samples MAX_STEPS"):
        linear_solve(np.stack([easy, hard]), b, solver)


def test_gmres_singular_systems(rng):
    # inconsistent: b has a component outside the range of A -> the Krylov space becomes invariant on a
    # singular restriction of A: BREAKDOWN, and x is the least-squares answer within that space
    A = np.diag([1.0, 2.0, 0.0])
    sol = GMRES(rtol=1e-10).solve(A, np.ones(3))
    assert sol.result == ReturnCode.BREAKDOWN and np.isclose(sol.residual, 1.0)
    with pytest.raises(SolveError, match="BREAKDOWN"):
        linear_solve(A, np.ones(3), GMRES())
    # consistent with a symmetric singular A: GMRES from x0 = 0 stays in range(A) -> minimum-norm solution
    q = _orthogonal(rng, 8)
    S = q @ np.diag([1.0, 2.0, 3.0, 0.5, 1.5, 2.5, 0.0, 0.0]) @ q.T
    b = S @ rng.standard_normal(8)
    sol = GMRES(rtol=1e-10).solve(S, b)
    assert sol.success and np.allclose(sol.value, np.linalg.pinv(S) @ b, atol=1e-8)


def test_gmres_stagnation_is_reported():
    # GMRES(1) on a rotation: A r is orthogonal to r, so no step reduces the residual
    rotation = np.array([[0.0, 1.0], [-1.0, 0.0]])
    sol = GMRES(restart=1).solve(rotation, np.array([1.0, 0.0]))
    assert sol.result == ReturnCode.STALLED and sol.stats["num_steps"] == 2
    assert np.array_equal(sol.value, np.zeros(2))
    assert GMRES(restart=2).solve(rotation, np.array([1.0, 0.0])).success


def test_gmres_zero_rhs_and_start_point(rng):
    A = _near_identity(rng, 5, 3)
    b = rng.standard_normal((3, 5))
    b[1] = 0.0
    x0 = rng.standard_normal((3, 5))
    sol = GMRES(rtol=1e-10).solve(A, b, x0=x0)
    assert np.all(sol.success) and np.array_equal(sol.value[1], np.zeros(5)) and sol.residual[1] == 0
    assert _max_rel_err(sol.value[[0, 2]], _reference(A[[0, 2]], b[[0, 2]])) < 1e-9
    exact = _reference(A, b)
    warm = GMRES(rtol=1e-10).solve(A, b, x0=exact)
    assert warm.stats["num_steps"] == 1 and np.array_equal(warm.value, exact)  # only the residual check
    assert np.array_equal(linear_solve(A[0], np.zeros(5), GMRES()).value, np.zeros(5))


def test_gmres_budget_is_respected(rng):
    A = _bounded_condition(rng, 30, 2, cond=100.0)
    b = rng.standard_normal((2, 30))
    for max_steps in (1, 2, 7, 23):
        sol = GMRES(rtol=1e-12, restart=5, max_steps=max_steps).solve(A, b)
        assert sol.stats["num_steps"] <= max_steps
        assert sol.codes == [ReturnCode.MAX_STEPS] * 2


def test_gmres_non_finite_operator_output_is_diverged(rng):
    A = _near_identity(rng, 4, 2)

    def matvec(v):
        out = np.einsum("bij,bj->bi", A, v)
        out[1] = np.inf
        return out

    with np.errstate(invalid="ignore"):
        sol = GMRES().solve(LinearOperator(matvec, shape=(4, 4)), rng.standard_normal((2, 4)))
    assert sol.codes[1] == ReturnCode.DIVERGED and np.all(np.isfinite(sol.value))
    assert sol.codes[0] == ReturnCode.SUCCESS


@pytest.mark.parametrize("dtype, scale", [(np.float64, 1e160), (np.float64, 1e-160), (np.float32, 1e30),
                                           (np.float32, 1e-30)])
def test_gmres_solves_systems_of_huge_or_tiny_magnitude(rng, dtype, scale):
    # ||A v||² of such a matrix overflows (or underflows) though the system is well conditioned
    A0, b0 = _near_identity(rng, 12, 3), rng.standard_normal((3, 12))
    A, b = (scale * A0).astype(dtype), (scale * b0).astype(dtype)
    rtol = _rtol(dtype)
    solver = GMRES(rtol=rtol, max_steps=500)
    sol = linear_solve(A, b, solver)
    assert np.all(sol.success) and sol.value.dtype == dtype
    assert _max_rel_err(sol.value, _reference(A0, b0)) < 3 * rtol + 2000 * np.finfo(dtype).eps
    ordinary = linear_solve(A0.astype(dtype), b0.astype(dtype), solver)
    assert sol.stats == ordinary.stats
    single = linear_solve(A[1], b[1], solver)
    assert single.success and _max_rel_err(single.value, _reference(A0[1], b0[1])) < 3 * rtol + 2000 * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype, a_exp, b_exp", [(np.float64, 530, 530), (np.float64, -530, -530),
                                                 (np.float64, 530, 0), (np.float64, -530, 3),
                                                 (np.float32, 100, 100), (np.float32, -100, -90),
                                                 (np.float32, 90, 0)])
@pytest.mark.parametrize("restart", [3, 20])
@pytest.mark.parametrize("preconditioned", [False, True])
def test_gmres_on_power_of_two_multiples_repeats_the_ordinary_solve(rng, dtype, a_exp, b_exp, restart,
                                                                    preconditioned):
    # powers of 2 scale every quantity exactly: the iterates are those of the ordinary system, bit for bit
    A0, b0 = _near_identity(rng, 15, 2).astype(dtype), rng.standard_normal((2, 15)).astype(dtype)
    solver = GMRES(rtol=_rtol(dtype), restart=restart, max_steps=500)
    jacobi = 1 / np.diagonal(A0, axis1=1, axis2=2)              # of the ordinary matrix: A M stays huge or tiny
    M = (lambda v: v * jacobi) if preconditioned else None
    ordinary = solver.solve(A0, b0, preconditioner=M)
    sol = solver.solve(np.ldexp(A0, a_exp), np.ldexp(b0, b_exp), preconditioner=M)
    assert sol.codes == ordinary.codes == [ReturnCode.SUCCESS] * 2 and sol.stats == ordinary.stats
    assert np.array_equal(sol.value, np.ldexp(ordinary.value, b_exp - a_exp))
    assert np.array_equal(sol.residual, np.ldexp(ordinary.residual, b_exp))


@pytest.mark.parametrize("scale", [1e160, 1e-160])
def test_gmres_huge_or_tiny_sample_beside_an_ordinary_one(rng, scale):
    A0, b0 = _near_identity(rng, 10, 2), rng.standard_normal((2, 10))
    A, b = A0.copy(), b0.copy()
    A[0], b[0] = scale * A0[0], scale * b0[0]
    solver = GMRES(rtol=1e-10, restart=4, max_steps=500)
    sol = linear_solve(A, b, solver)
    assert np.all(sol.success) and _max_rel_err(sol.value, _reference(A0, b0)) < 1e-9
    for i in range(2):
        one = linear_solve(A[i], b[i], solver)
        assert one.success and np.allclose(sol.value[i], one.value, rtol=1e-13, atol=0)
        assert np.isclose(sol.residual[i], one.residual, rtol=1e-6, atol=0)


def test_gmres_start_point_far_from_a_huge_system(rng):
    # ||b − A x0|| of a start point at the wrong scale overflows
    A0, b = _near_identity(rng, 8, 2), rng.standard_normal((2, 8))
    A = 1e160 * A0
    sol = linear_solve(A, b, GMRES(rtol=1e-10, max_steps=500), x0=np.ones((2, 8)))
    assert np.all(sol.success) and _max_rel_err(sol.value, _reference(A, b)) < 1e-9


# ---------------------------------------------------------------- LinearOperator


@given(st.integers(1, 10), st.integers(1, 5), DTYPES, st.integers(0, 2**31 - 1))
def test_operator_from_callables_equals_matrix_version(n, batch, dtype, seed):
    rng = np.random.default_rng(seed)
    A = _near_identity(rng, n, batch).astype(dtype)
    v = rng.standard_normal((batch, n)).astype(dtype)
    op = LinearOperator(
        lambda u: np.einsum("bij,bj->bi", A, u), lambda u: np.einsum("bji,bj->bi", A, u), shape=(n, n)
    )
    mat = LinearOperator.from_matrix(A)
    for a, m in ((op, mat), (op.T, mat.T)):
        assert np.allclose(a.matvec(v), m.matvec(v), rtol=1e-5, atol=1e-6)
    assert np.allclose(mat.T.matvec(v), np.einsum("bji,bj->bi", A, v), rtol=1e-5, atol=1e-6)
    assert np.allclose(op.rmatvec(v), mat.rmatvec(v), rtol=1e-5, atol=1e-6)
    rtol = _rtol(dtype)
    x_op = GMRES(rtol=rtol, max_steps=3000).solve(op, v).value
    x_mat = GMRES(rtol=rtol, max_steps=3000).solve(mat, v).value
    assert np.allclose(x_op, x_mat, rtol=100 * rtol, atol=100 * rtol)
    # to_dense round trip
    dense = op.to_dense(batch_size=batch, dtype=dtype)
    assert dense.dtype == dtype and np.allclose(dense, A, atol=1e-6)
    assert np.array_equal(LinearOperator.from_matrix(dense).to_dense(), dense)
    shared = LinearOperator(lambda u: u @ A[0].T, shape=(n, n))
    assert np.allclose(shared.to_dense(), A[0], atol=1e-6)
    assert np.allclose(LinearOperator.from_matrix(A[0]).to_dense(batch_size=2), np.stack([A[0], A[0]]))


# ---------------------------------------------------------------- one interface, per-sample failures

SOLVERS = [LU(), GMRES(rtol=1e-12, atol=0.0, max_steps=400)]


@pytest.mark.parametrize("solver", SOLVERS, ids=["lu", "gmres"])
@given(n=st.integers(1, 12), batch=st.integers(2, 5), seed=st.integers(0, 2**31 - 1),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), transpose=st.booleans(), shared=st.booleans())
def test_a_non_finite_sample_is_its_own_failure(solver, n, batch, seed, bad, transpose, shared):
    rng = np.random.default_rng(seed)
    A = _near_identity(rng, n, 1 if shared else batch)
    A = A[0] if shared else A
    b = rng.standard_normal((batch, n))
    broken = int(rng.integers(batch))
    b[broken, int(rng.integers(n))] = bad
    sol = solver.solve(A, b, transpose=transpose)
    assert sol.codes[broken] == ReturnCode.DIVERGED and np.isnan(sol.value[broken]).all()
    for i in set(range(batch)) - {broken}:
        solo = solver.solve(A if shared else A[i], b[i], transpose=transpose)
        assert sol.codes[i] == solo.result == ReturnCode.SUCCESS
        np.testing.assert_allclose(sol.value[i], solo.value, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(sol.value[i], _reference(A if shared else A[i], b[i], transpose),
                                   rtol=1e-8, atol=1e-10)


def test_non_finite_start_rows_restart_from_zero(rng):
    A, b = _near_identity(rng, 6, 3), rng.standard_normal((3, 6))
    x0 = np.zeros((3, 6))
    x0[1] = np.nan
    sol = GMRES(rtol=1e-12).solve(A, b, x0=x0)
    assert all(sol.success)
    np.testing.assert_allclose(sol.value, _reference(A, b), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("solver", SOLVERS, ids=["lu", "gmres"])
def test_the_linear_solver_interface(solver, rng):
    """init/solve on a matrix, an operator and the returned state give one answer; linear_solve dispatches."""
    A, b = _near_identity(rng, 5, 3), rng.standard_normal((3, 5))
    expected = _reference(A, b, transpose=True)
    first = solver.solve(A, b, transpose=True)
    again = solver.solve(first.learned["state"], b, transpose=True)
    prepared = solver.solve(solver.init(LinearOperator.from_matrix(A)), b, transpose=True)
    routed = linear_solve(A, b, solver, transpose=True)
    for sol in (first, again, prepared, routed):
        assert all(sol.success) and sol.residual.shape == (3,)
        np.testing.assert_allclose(sol.value, expected, rtol=1e-9, atol=1e-11)
    assert isinstance(solver, dq.linalg.LinearSolver) and solver.wants_matrix == isinstance(solver, LU)
    if isinstance(solver, LU):
        assert again.stats["nfactor"] == 0 and first.stats["nfactor"] == 1


def test_restart_is_capped_at_the_system_size():
    A = np.array([[2.0, 1.0], [0.0, 1.0]])
    sol = GMRES(restart=100_000, rtol=1e-12).solve(A, np.array([1.0, 1.0]))   # no (100001 x 2) basis
    assert sol.success and sol.stats["num_steps"] <= 4
    np.testing.assert_allclose(sol.value, [0.0, 1.0], atol=1e-12)


def test_top_level_reexports():
    assert dq.LinearOperator is LinearOperator and dq.LU is LU and dq.GMRES is GMRES
    assert dq.linear_solve is linear_solve and isinstance(LU().factor(np.eye(2)), LUFactorization)


# ---------------------------------------------------------------- validation


def test_bad_inputs_name_the_argument(rng):
    A = np.eye(3)
    b = np.ones(3)
    identity = LinearOperator(lambda v: v, shape=(3, 3))
    truncating = LinearOperator(lambda v: v[:2], shape=(3, 3))
    cases = [
        (ValueError, "A must be a square", lambda: linear_solve(np.ones((3, 2)), b)),
        (ValueError, "A must be a square", lambda: LU().factor(np.ones((2, 3, 4)))),
        (ValueError, "A must be a square", lambda: LinearOperator.from_matrix(np.ones(3))),
        (ValueError, r"b must have shape \(3,\)", lambda: linear_solve(A, np.ones(4))),
        (ValueError, r"b must have shape \(2, 3\)", lambda: linear_solve(np.stack([A, A]), b)),
        (ValueError, r"b must have shape \(2, 3\)", lambda: linear_solve(np.stack([A, A]), b, GMRES())),
        (ValueError, "b must have shape", lambda: LU().factor(A).solve(np.ones((2, 3)).T.copy()[:1])),
        (TypeError, "A must have a floating dtype", lambda: linear_solve(np.eye(3, dtype=int), b)),
        (TypeError, "b must have a floating dtype", lambda: linear_solve(A, np.ones(3, dtype=np.int64))),
        (TypeError, "b must have a floating dtype", lambda: GMRES().solve(A, np.ones(3, dtype=bool))),
        (TypeError, "A must be a NumPy or CuPy array", lambda: GMRES().solve([[1.0]], np.ones(1))),
        (ValueError, "x0 must have the shape of b", lambda: GMRES().solve(A, b, x0=np.ones(2))),
        (ValueError, "restart must be", lambda: GMRES(restart=0)),
        (TypeError, "restart must be an integer", lambda: GMRES(restart=2.5)),
        (ValueError, "rtol must be", lambda: GMRES(rtol=-1e-3)),
        (ValueError, "atol must be", lambda: GMRES(atol=float("nan"))),
        (ValueError, "max_steps must be", lambda: GMRES(max_steps=0)),
        (TypeError, "preconditioner must be callable", lambda: GMRES().solve(A, b, preconditioner=3)),
        (TypeError, "solver must be", lambda: linear_solve(A, b, "lu")),
        (TypeError, "transpose must be a bool", lambda: linear_solve(A, b, transpose="yes")),
        (TypeError, "transpose must be a bool", lambda: LU().factor(A).solve(b, transpose=1)),
        (TypeError, "matvec must be callable", lambda: LinearOperator(None, shape=(3, 3))),
        (ValueError, "shape must be square", lambda: LinearOperator(lambda v: v, shape=(3, 2))),
        (TypeError, "shape must be a tuple", lambda: LinearOperator(lambda v: v, shape=3)),
        (TypeError, "no rmatvec", lambda: identity.T),
        (TypeError, "no rmatvec", lambda: linear_solve(identity, b, transpose=True)),
        (ValueError, "matvec returned shape", lambda: truncating.matvec(b)),
        (ValueError, r"v must have shape \(3,\)", lambda: identity.matvec(np.ones(4))),
        (ValueError, "batch_size must be", lambda: identity.to_dense(0)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
