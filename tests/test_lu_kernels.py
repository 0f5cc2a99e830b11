"""The small-system LU kernels: LAPACK's pivots and factors, solves with A and Aᵀ against NumPy, singular
systems flagged, and the switch to LAPACK above the size limit."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from deqcore import linalg
from deqcore.backend import get_kernel, to_host
from deqcore.linalg.lu_kernels import SMALL_SYSTEM_LIMIT, lu_factor_reference
from tests.helpers import tolerance


@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 6), n=st.integers(1, 12),
       dtype=st.sampled_from([np.float32, np.float64]), trans=st.integers(0, 1))
def test_factor_and_solve_match_lapack_and_numpy(seed, batch, n, dtype, trans):
    rng = np.random.default_rng(seed)
    A = (rng.standard_normal((batch, n, n)) + 3 * np.eye(n)).astype(dtype)    # well conditioned
    b = rng.standard_normal((batch, n, 3)).astype(dtype)
    lu, piv = get_kernel("lu_factor", np, impl="numba_cpu")(A)
    ref_lu, ref_piv = lu_factor_reference(A)
    np.testing.assert_array_equal(piv, ref_piv)                 # the same pivot choices as getrf
    tol = tolerance(dtype, 1e-4, 1e-12)
    np.testing.assert_allclose(lu, ref_lu, rtol=tol, atol=tol)
    x = get_kernel("lu_solve", np, impl="numba_cpu")(lu, piv, b, trans)
    system = np.swapaxes(A, 1, 2) if trans else A
    np.testing.assert_allclose(x, np.linalg.solve(system.astype(np.float64), b.astype(np.float64)),
                               rtol=50 * tol, atol=50 * tol)


@pytest.mark.parametrize("n", [5, SMALL_SYSTEM_LIMIT + 3])
def test_lu_factorization_on_both_sides_of_the_size_limit(rng, n):
    A = rng.standard_normal((3, n, n)) + 2 * np.sqrt(n) * np.eye(n)
    A[1, :, 0] = 0.0                                             # singular: flagged, solved as zeros
    fac = linalg.LU().factor(A)
    assert fac.singular.tolist() == [False, True, False]
    b = rng.standard_normal((3, n))
    for transpose in (False, True):
        x = fac.solve(b, transpose=transpose)
        M = np.swapaxes(A, 1, 2) if transpose else A
        for i in (0, 2):
            np.testing.assert_allclose(M[i] @ x[i], b[i], atol=1e-9)
        assert np.all(x[1] == 0)


@pytest.mark.parametrize("n", [5, SMALL_SYSTEM_LIMIT + 3])
def test_cuda_kernels_factor_and_solve_on_both_sides_of_the_size_limit(rng, xp, monkeypatch, n):
    """The CUDA kernels (on the simulator for NumPy arrays, on the device for CuPy arrays) directly and
    through ``linalg.LU``, a singular sample flagged; above the limit LU takes LAPACK / cuSOLVER."""
    monkeypatch.setenv("DEQCORE_KERNELS", "numba_cuda")
    A = rng.standard_normal((3, n, n)) + 2 * np.sqrt(n) * np.eye(n)
    A[1, :, 0] = 0.0
    b = rng.standard_normal((3, n))
    if n <= SMALL_SYSTEM_LIMIT:
        lu, piv = get_kernel("lu_factor", xp, impl="numba_cuda")(xp.asarray(A))
        ref_lu, ref_piv = lu_factor_reference(A)
        np.testing.assert_array_equal(to_host(piv), ref_piv)
        np.testing.assert_allclose(to_host(lu), ref_lu, rtol=1e-12, atol=1e-12)
        good = A[[0, 2]]
        x = get_kernel("lu_solve", xp, impl="numba_cuda")(lu[::2], piv[::2], xp.asarray(b[::2, :, None]), 1)
        expected = np.linalg.solve(np.swapaxes(good, 1, 2), b[::2, :, None])[:, :, 0]
        np.testing.assert_allclose(to_host(x)[:, :, 0], expected, rtol=1e-10, atol=1e-10)
    fac = linalg.LU().factor(xp.asarray(A))
    assert to_host(fac.singular).tolist() == [False, True, False]
    for transpose in (False, True):
        x = to_host(fac.solve(xp.asarray(b), transpose=transpose))
        M = np.swapaxes(A, 1, 2) if transpose else A
        for i in (0, 2):
            np.testing.assert_allclose(M[i] @ x[i], b[i], atol=1e-9)
        assert np.all(x[1] == 0)
