"""GMRES on the fused Arnoldi step: the same iterates as the array-namespace reference (NumPy and the CUDA
kernel on the simulator), per-sample codes with samples finishing at different steps, and the fallback for a
Krylov dimension above the kernel's limit."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from deqcore import ReturnCode, linalg
from deqcore.backend import to_host
from deqcore.linalg.gmres_kernels import MAX_RESTART
from tests.helpers import tolerance


def _systems(rng, batch, n, dtype):
    A = rng.standard_normal((batch, n, n)) / np.sqrt(n)
    A += np.eye(n) * rng.uniform(0.8, 3.0, size=(batch, 1, 1))     # different conditioning per sample
    return A.astype(dtype), rng.standard_normal((batch, n)).astype(dtype)


def _solve(A, b, impl, **settings):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEQCORE_KERNELS", impl)
        return linalg.GMRES(**settings).solve(A, b)


@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 5), n=st.integers(1, 12),
       restart=st.integers(1, 8), dtype=st.sampled_from([np.float32, np.float64]))
def test_fused_arnoldi_gives_the_reference_solution(seed, batch, n, restart, dtype):
    A, b = _systems(np.random.default_rng(seed), batch, n, dtype)
    rtol = tolerance(dtype, 1e-4, 1e-10)
    ref = _solve(A, b, "reference", rtol=rtol, restart=restart)
    fused = _solve(A, b, "numba_cpu", rtol=rtol, restart=restart)
    np.testing.assert_array_equal(fused.result, ref.result)
    assert fused.stats == ref.stats
    tol = tolerance(dtype, 1e-3, 1e-9)
    np.testing.assert_allclose(fused.value, ref.value, rtol=tol, atol=tol)
    # a converged sample's true residual, in float64, meets the test up to the dtype's round-off
    A64, b64, x64 = (a.astype(np.float64) for a in (A, b, fused.value))
    residual = np.linalg.norm(np.einsum("bij,bj->bi", A64, x64) - b64, axis=1)
    slack = 10 * np.finfo(dtype).eps * np.linalg.norm(A64, axis=(1, 2)) * np.linalg.norm(x64, axis=1)
    ok = fused.result == 0
    assert np.all(residual[ok] <= 1.01 * rtol * np.linalg.norm(b64, axis=1)[ok] + slack[ok])


def test_cuda_kernel_gives_the_reference_solution(rng, xp):
    """On the simulator for NumPy arrays, on the device for CuPy arrays (the reference then runs on CuPy)."""
    A, b = (xp.asarray(a) for a in _systems(rng, 2, 4, np.float64))
    ref = _solve(A, b, "reference", rtol=1e-10, restart=4)
    cuda = _solve(A, b, "numba_cuda", rtol=1e-10, restart=4)
    np.testing.assert_array_equal(to_host(cuda.result), to_host(ref.result))
    np.testing.assert_allclose(to_host(cuda.value), to_host(ref.value), atol=1e-10)


def test_krylov_dimension_above_the_kernel_limit_falls_back(rng, xp):
    n = MAX_RESTART + 6
    A, b = _systems(rng, 2, n, np.float64)
    sol = linalg.GMRES(rtol=1e-10, restart=MAX_RESTART + 4).solve(xp.asarray(A), xp.asarray(b))
    assert to_host(sol.success).all()
    np.testing.assert_allclose(to_host(sol.value), np.linalg.solve(A, b[:, :, None])[:, :, 0], atol=1e-8)


@pytest.mark.parametrize("dtype, exponent", [(np.float64, 530), (np.float64, -530), (np.float32, 100),
                                             (np.float32, -100)])
def test_every_step_solves_systems_of_huge_or_tiny_magnitude_alike(rng, dtype, exponent):
    """A matrix of size 2^±530 (float64) or 2^±100 (float32) runs each cycle on a power-of-2 multiple of itself,
    whose norms stay finite: the reference and the fused CPU step take the steps of the ordinary system, and
    the solutions are the ordinary ones scaled back."""
    A, b = _systems(rng, 3, 8, dtype)
    huge = np.ldexp(A, exponent)
    rtol = tolerance(dtype, 1e-5, 1e-10)
    ordinary = _solve(A, b, "reference", rtol=rtol, restart=3)
    assert (ordinary.result == 0).all()
    # (the scaling is applied outside the kernels, so the CUDA kernel, slow on the simulator, sees ordinary sizes;
    # it is checked against the reference on ordinary systems above)
    for impl in ("reference", "numba_cpu"):
        sol = _solve(huge, b, impl, rtol=rtol, restart=3)
        np.testing.assert_array_equal(sol.result, ordinary.result)
        assert sol.stats == ordinary.stats
        np.testing.assert_allclose(np.ldexp(sol.value, exponent), ordinary.value, rtol=tolerance(dtype, 1e-5, 1e-12))


@pytest.mark.parametrize("impl", ["reference", "numba_cpu", "numba_cuda"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shifted", [False, True])
def test_arnoldi_reorthogonalises_a_nearly_dependent_vector(impl, dtype, shifted):
    """A vector almost in the span of the basis loses nearly all of its norm in the first Gram–Schmidt pass;
    the second pass (run for that sample only) leaves the new basis vector orthogonal to working precision,
    where one pass would leave it visibly tilted; a well-separated sample takes one pass. The same holds for
    the shifted step (operator I − B, given B v_j), whose new vector is the negated one."""
    from deqcore.backend import get_kernel
    from deqcore.linalg.gmres_kernels import example

    rng = np.random.default_rng(3)
    V, w, R, Q, beta, tol, k, live, broke, j, tiny, _ = example(rng, dtype)
    live[:], tol[:] = True, 0.0                                  # every sample keeps iterating
    V[1] = 0.0
    V[1, : j + 1] = np.eye(j + 1, V.shape[2], dtype=dtype)
    basis = V[:, : j + 1].astype(np.float64)
    coefficients = rng.standard_normal((V.shape[0], j + 1))
    noise = rng.standard_normal(w.shape) * 1e4 * np.finfo(dtype).eps
    near = np.einsum("bi,bin->bn", coefficients, basis) + noise
    w = rng.standard_normal(w.shape).astype(dtype)
    w[::2] = near[::2].astype(dtype)                             # even samples: nearly dependent
    kernel = get_kernel("arnoldi_step", np, impl=impl)
    V, R, Q, k, live, broke = kernel(V, w, R, Q, beta, tol, k, live, broke, j, 0.0, shifted)
    new = V[:, j + 1].astype(np.float64)
    assert live.all() and np.allclose(np.linalg.norm(new, axis=1), 1, atol=tolerance(dtype, 1e-5, 1e-12))
    overlap = np.abs(np.einsum("bin,bn->bi", basis, new)).max()
    assert overlap <= 50 * np.finfo(dtype).eps, overlap


def test_reused_workspace_leaves_no_trace_of_earlier_solves(rng):
    """GMRES keeps its basis and small matrices for the next cycle of the same sizes (NumPy): a solve after one
    whose operator produced NaN and inf for some samples (their Hessenberg columns kept non-finite values)
    returns, bit for bit, what it returns with fresh memory."""
    from deqcore.linalg import gmres

    A, b = _systems(rng, 4, 9, np.float64)
    poisoned = np.ones(4, bool)
    poisoned[[0, 2]] = False

    def bad_operator(v):
        out = np.einsum("bij,bj->bi", A, v)
        out[~poisoned] = np.where(rng.random(out[~poisoned].shape) < 0.5, np.nan, np.inf)
        return out

    solver = linalg.GMRES(rtol=1e-10, restart=5)
    gmres._WORKSPACES.clear()
    fresh = solver.solve(A, b)
    gmres._WORKSPACES.clear()
    failed = solver.solve(linalg.LinearOperator(bad_operator, shape=(9, 9)), b)
    assert (failed.result[~poisoned] == int(ReturnCode.DIVERGED)).all()
    assert gmres._WORKSPACES, "the kept workspace is what this test is about"
    again = solver.solve(A, b)
    np.testing.assert_array_equal(again.value, fresh.value)
    np.testing.assert_array_equal(again.result, fresh.result)
    np.testing.assert_array_equal(again.residual, fresh.residual)


def _shifted_systems(rng, batch, n, dtype, closeness):
    """B per sample with singular values up to ``1 − closeness``-ish (I − B then ill-conditioned, as the adjoint's
    I − Jᵀ of a slowly contracting map) and a right-hand side."""
    U, _ = np.linalg.qr(rng.standard_normal((batch, n, n)))
    W, _ = np.linalg.qr(rng.standard_normal((batch, n, n)))
    s = rng.uniform(0.0, 1.0 - closeness, size=(batch, n))
    B = np.einsum("bij,bj,bkj->bik", U, s, W)
    return B.astype(dtype), rng.standard_normal((batch, n)).astype(dtype)


@pytest.mark.parametrize("impl", ["reference", "numba_cpu"])
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 4), n=st.integers(2, 16), restart=st.integers(2, 10),
       closeness=st.sampled_from([0.5, 1e-2, 1e-3]), dtype=st.sampled_from([np.float32, np.float64]))
def test_shifted_arnoldi_solves_identity_minus_b_to_tolerance(impl, seed, batch, n, restart, closeness, dtype):
    """GMRES on A = I − B run as Arnoldi on B itself (``shifted=True``, the adjoint's form) meets its tolerance on
    the true residual, agrees with a dense solve to the conditioning's accuracy, and matches the unshifted run
    (Arnoldi on v − B v) in codes and, up to round-off, in values."""
    B, b = _shifted_systems(np.random.default_rng(seed), batch, n, dtype, closeness)
    apply_B = lambda v: np.einsum("bij,bj->bi", B, v).astype(dtype)  # noqa: E731
    rtol = tolerance(dtype, 1e-4, 1e-10)
    solver = linalg.GMRES(rtol=rtol, restart=restart, max_steps=40 * n)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEQCORE_KERNELS", impl)
        x, codes, rnorm, _ = solver._run(np, apply_B, None, b, None, 40 * n, min(restart, n),
                                         shifted=True)
        x_plain, codes_plain, _, _ = solver._run(np, lambda v: v - apply_B(v), None, b, None, 40 * n,
                                                 min(restart, n))
    A64 = np.eye(n) - B.astype(np.float64)
    residual = np.linalg.norm(b - np.einsum("bij,bj->bi", A64, x.astype(np.float64)), axis=1)
    ok = codes == int(ReturnCode.SUCCESS)
    assert ok.all(), codes
    slack = 20 * np.finfo(dtype).eps * np.linalg.norm(A64, axis=(1, 2)) * np.linalg.norm(x, axis=1)
    assert np.all(residual <= 1.01 * rtol * np.linalg.norm(b.astype(np.float64), axis=1) + slack)
    np.testing.assert_allclose(rnorm, residual, rtol=0.05, atol=float(slack.max()) + 1e-30)
    exact = np.linalg.solve(A64, b.astype(np.float64)[:, :, None])[:, :, 0]
    condition = np.linalg.cond(A64)
    err = np.linalg.norm(x - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert np.all(err <= 2 * condition * (rtol + 50 * np.finfo(dtype).eps))
    np.testing.assert_array_equal(codes, codes_plain)
    scale = np.linalg.norm(exact, axis=1, keepdims=True)
    np.testing.assert_allclose(x / scale, x_plain / scale, atol=4 * float(condition.max()) * rtol)


def test_reused_workspace_across_shapes_and_dtypes_leaves_no_trace(rng):
    """The compiled path reads only what a cycle writes of its reused (not zeroed) basis: solves of other sizes and
    dtypes in between, and one whose operator produced NaN, leave a shifted solve bit for bit as with fresh
    memory."""
    from deqcore.linalg import gmres

    B, b = _shifted_systems(rng, 5, 12, np.float64, 0.1)
    apply_B = lambda v: np.einsum("bij,bj->bi", B, v)  # noqa: E731
    solver = linalg.GMRES(rtol=1e-10, restart=6)

    def shifted_solve(operator, rhs):
        return solver._run(np, operator, None, rhs, None, 200, 6, shifted=True)

    gmres._WORKSPACES.clear()
    fresh = shifted_solve(apply_B, b)

    def poisoned(v):
        out = apply_B(v)
        out[1:3] = np.nan
        return out

    shifted_solve(poisoned, b)                                     # NaN rows left in the kept basis
    B32, b32 = _shifted_systems(rng, 3, 7, np.float32, 0.1)
    shifted_solve(lambda v: np.einsum("bij,bj->bi", B32, v), b32)  # other sizes and dtype in between
    again = shifted_solve(apply_B, b)
    for got, want in zip(again[:3], fresh[:3]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_update_added_to_x_equals_the_array_code(rng, dtype):
    """The cycle's update added to x in the compiled pass gives the array code's ``x + dx`` bit for bit, and the
    update alone is the sums of the basis vectors each sample wrote (non-finite entries past a sample's Krylov
    count never read)."""
    from deqcore.linalg import gmres_kernels_numba as kernels

    B, n, m = 6, 7, 4
    V = rng.standard_normal((B, m + 1, n)).astype(dtype)
    V[2, 1] = np.inf                                                     # past k = 1: never read
    V[4, 0, 3] = np.nan                                                  # read: NaN stays NaN
    y = rng.standard_normal((B, m)).astype(dtype)
    k = np.array([0, 1, 1, 4, 3, 2], dtype=np.int64)
    x = rng.standard_normal((B, n)).astype(dtype)
    dx = kernels._cycle_update(V, y, k)
    assert dx.dtype == dtype and np.array_equal(dx[0], np.zeros(n)) and np.isnan(dx[4, 3])
    want = np.stack([sum((y[b, i] * V[b, i] for i in range(1, k[b])), y[b, 0] * V[b, 0]) if k[b] else
                     np.zeros(n, dtype) for b in range(B)])
    np.testing.assert_array_equal(dx, want)
    got = kernels._cycle_update_add(V, y, k, x)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, x + dx)
