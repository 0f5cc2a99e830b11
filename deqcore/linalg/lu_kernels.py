"""Fused kernels for stacks of small dense systems: LU factorisation with partial pivoting and the solves with
the factors (``A x = b`` and ``Aᵀ x = b``), one system per sample.

SciPy's stacked ``lu_factor`` loops over the stack in Python (one call per system) and CuPy's
``cupyx.scipy.linalg`` has no batched form at all (one cuSOLVER call per sample), while the arithmetic of a
small system is a few thousand flops. The Numba versions factor each system in one loop (CPU) or one thread
(CUDA). They follow LAPACK's getrf/getrs exactly: the first largest pivot in each column, whole-row
interchanges recorded in ``piv`` (0-based, as SciPy returns them), unit lower L below the diagonal of
``lu``, U on and above it; a zero pivot column is left as it is (the caller detects singular systems from
the diagonal). Beyond :data:`SMALL_SYSTEM_LIMIT` unknowns the blocked LAPACK/cuSOLVER routines win and are used.

>>> import numpy as np
>>> A = np.array([[[1.0, 2.0], [3.0, 4.0]]])
>>> lu, piv = lu_factor_reference(A)
>>> piv.tolist(), lu_solve_reference(lu, piv, np.array([[[5.0], [6.0]]]), 0)[0, :, 0].round(6).tolist()
([[1, 1]], [-4.0, 4.5])
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace, is_cupy_namespace, register_kernel

__all__ = ["lu_factor_reference", "lu_solve_reference", "SMALL_SYSTEM_LIMIT"]

#: the largest system the per-sample kernels factor; larger ones go to LAPACK / cuSOLVER
SMALL_SYSTEM_LIMIT = 64


def lu_factor_reference(A3):
    """Factors ``(lu (B, n, n), piv (B, n) int32)`` of a stack, by SciPy (NumPy) or cuSOLVER per sample (CuPy)."""
    import warnings

    xp = get_namespace(A3)
    if is_cupy_namespace(xp):
        from cupyx.scipy.linalg import lu_factor

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # cuSOLVER's "exactly zero" pivot warning
            parts = [lu_factor(a, check_finite=False) for a in A3]
        return xp.stack([p[0] for p in parts]), xp.stack([p[1] for p in parts]).astype(np.int32)
    from scipy.linalg import LinAlgWarning, lu_factor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinAlgWarning)
        lu, piv = lu_factor(A3, check_finite=False)
    return lu, piv.astype(np.int32, copy=False)


def lu_solve_reference(lu, piv, b3, trans):
    """Solve with stacked factors for right-hand sides ``(B, n, k)``; ``trans=1`` solves ``Aᵀ x = b``."""
    xp = get_namespace(lu)
    if is_cupy_namespace(xp):
        from cupyx.scipy.linalg import lu_solve

        return xp.stack([lu_solve((lu[i], piv[i]), b3[i], trans=trans, check_finite=False) for i in range(len(lu))])
    from scipy.linalg import lu_solve

    return lu_solve((lu, piv), b3, trans=trans, check_finite=False)


def factor_example(rng, dtype, size="small"):
    batch, n = (5, 6) if size == "small" else (4096, 16)
    A = rng.standard_normal((batch, n, n)).astype(dtype)
    A[1, :, 2] = 0.0                          # a singular matrix: a zero pivot column
    A[2] = np.triu(A[2])                      # no interchange needed
    return (A,)


def solve_example(rng, dtype, size="small"):
    (A,) = factor_example(rng, dtype, size)
    A[1, 2, 2] = 1.0                           # keep the systems solvable
    lu, piv = lu_factor_reference(A)
    b = rng.standard_normal(A.shape[:2] + (2,)).astype(dtype)
    return lu, piv, b, int(rng.integers(0, 2))


def factor_traffic(A3):
    return 2 * A3.nbytes + A3.shape[0] * A3.shape[1] * 4


def solve_traffic(lu, piv, b3, trans):
    return lu.nbytes + piv.nbytes + 2 * b3.nbytes


_NUMBA = "deqcore.linalg.lu_kernels_numba:"
register_kernel(
    "lu_factor",
    reference=lu_factor_reference,
    numba_cpu=_NUMBA + "lu_factor_numba_cpu",
    numba_cuda=_NUMBA + "lu_factor_numba_cuda",
    cuda_ptx_targets=[(_NUMBA + "lu_factor_cuda_kernel", "void({t}[:, :, :], int32[:, :])")],
    example="deqcore.linalg.lu_kernels:factor_example",
    traffic="deqcore.linalg.lu_kernels:factor_traffic",
)
register_kernel(
    "lu_solve",
    reference=lu_solve_reference,
    numba_cpu=_NUMBA + "lu_solve_numba_cpu",
    numba_cuda=_NUMBA + "lu_solve_numba_cuda",
    cuda_ptx_targets=[(_NUMBA + "lu_solve_cuda_kernel", "void({t}[:, :, :], int32[:, :], {t}[:, :, :], int64)")],
    example="deqcore.linalg.lu_kernels:solve_example",
    traffic="deqcore.linalg.lu_kernels:solve_traffic",
)
