"""The small-system LU kernels: LAPACK's pivots and factors, solves with A and Aᵀ against NumPy, singular
systems flagged, and the switch to LAPACK above the size limit."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from deqcore import linalg
from deqcore.backend import get_kernel
from deqcore.linalg.lu_kernels import SMALL_SYSTEM_LIMIT, lu_factor_reference


@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 6), n=st.integers(1, 12),
       dtype=st.sampled_from([np.float32, np.float64]), trans=st.integers(0, 1))
def test_factor_and_solve_match_lapack_and_numpy(seed, batch, n, dtype, trans):
    rng = np.random.default_rng(seed)
    A = (rng.standard_normal((batch, n, n)) + 3 * np.eye(n)).astype(dtype)    # well conditioned
    b = rng.standard_normal((batch, n, 3)).astype(dtype)
    lu, piv = get_kernel("lu_factor", np, impl="numba_cpu")(A)
    ref_lu, ref_piv = lu_factor_reference(A)
    np.testing.assert_array_equal(piv, ref_piv)                 # the same pivot choices as getrf
    tol = 1e-4 if dtype == np.float32 else 1e-12
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
