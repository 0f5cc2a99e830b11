"""Dense LU factorisation, batched over a leading axis: factor once, solve ``A x = b`` and ``A^T x = b``.

Small systems (the usual case: Newton's dense path, adjoints of small states) are factored by fused kernels,
one system per loop iteration on the CPU and per thread on a GPU (``deqcore.linalg.lu_kernels``); larger ones by
SciPy's ``lu_factor``/``lu_solve`` (NumPy) or ``cupyx.scipy.linalg`` (cuSOLVER, CuPy). The transpose solve
reuses the same factors (``trans=1``), which is what an adjoint solve needs.

>>> import numpy as np
>>> A = np.array([[4.0, 1.0], [2.0, 3.0]])
>>> fac = LU().factor(A)
>>> x = fac.solve(np.array([1.0, 2.0]))
>>> np.allclose(A @ x, [1.0, 2.0])
True
>>> y = fac.solve(np.array([1.0, 2.0]), transpose=True)
>>> np.allclose(A.T @ y, [1.0, 2.0])
True
>>> LU().factor(np.ones((2, 2))).singular
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import check_float_array, get_kernel
from .lu_kernels import SMALL_SYSTEM_LIMIT, lu_factor_reference, lu_solve_reference
from ._validate import check_bool, check_square

__all__ = ["LU", "LUFactorization"]


def _lu_factor(xp, A3):
    """Factors of a stack ``(B, n, n)`` without finiteness checks or singularity warnings: the per-sample
    kernel for small systems, LAPACK / cuSOLVER beyond :data:`~deqcore.linalg.lu_kernels.SMALL_SYSTEM_LIMIT`."""
    if A3.shape[-1] <= SMALL_SYSTEM_LIMIT:
        return get_kernel("lu_factor", xp)(A3)
    return lu_factor_reference(A3)


def _lu_solve(xp, lu, piv, b3, trans):
    """Solve with stacked factors ``(B, n, n)`` for right-hand sides ``(B, n, k)``."""
    if lu.shape[-1] <= SMALL_SYSTEM_LIMIT:
        return get_kernel("lu_solve", xp)(lu, piv, b3, trans)
    return lu_solve_reference(lu, piv, b3, trans)


@dataclass(frozen=True, eq=False)
class LUFactorization:
    """LU factors of one matrix or of a stack of matrices, ready for repeated solves.

    Attributes:
        lu, piv: stacked factors ``(B, n, n)`` and pivots ``(B, n)`` (``B = 1`` when unbatched); singular
            samples hold identity factors, so their solves return zeros instead of inf/NaN.
        batched: whether the matrix was a stack ``(B, n, n)``.
        singular_mask: bool array ``(B,)``: the sample's matrix had a zero or non-finite pivot, non-finite
            entries, or a reciprocal pivot ratio ``min|u_ii| / max|u_ii|`` below the dtype's eps (an
            inexpensive lower bound on ``1 / cond(U)``).
        any_singular: whether any sample is singular (a host bool).
    """

    lu: Any
    piv: Any
    batched: bool
    singular_mask: Any
    any_singular: bool

    @property
    def n(self) -> int:
        """The size of one system."""
        return self.lu.shape[-1]

    @property
    def dtype(self):
        """The factors' dtype."""
        return self.lu.dtype

    @property
    def singular(self):
        """bool (or bool array ``(B,)`` when batched): the matrix is singular to working precision."""
        if self.batched:
            return self.singular_mask
        return bool(self.singular_mask[0])

    def solve(self, b, transpose=False):
        """Solve ``A x = b`` (or ``A^T x = b`` with ``transpose=True``) from the stored factors.

        Args:
            b: ``(n,)`` or ``(n, k)`` for an unbatched factorisation; ``(B, n)`` or ``(B, n, k)`` for a
                batched one. Samples whose matrix is singular get ``x = 0`` (check :attr:`singular`);
                non-finite ``b`` is not checked here and gives non-finite ``x``.
            transpose: solve with ``A^T`` from the same factors.
        """
        xp = check_float_array(b, "b")
        transpose = check_bool(transpose, "transpose")
        n, B = self.n, self.lu.shape[0]
        if self.batched:
            ok = b.ndim in (2, 3) and b.shape[0] == B and b.shape[1] == n
            expected = f"({B}, {n}) or ({B}, {n}, k)"
        else:
            ok = b.ndim in (1, 2) and b.shape[0] == n
            expected = f"({n},) or ({n}, k)"
        if not ok:
            raise ValueError(f"b must have shape {expected} for this factorisation, got {tuple(b.shape)}")
        b3 = b.reshape(B, n, -1)
        dtype = np.result_type(self.dtype, b.dtype)
        x3 = _lu_solve(xp, self.lu.astype(dtype, copy=False), self.piv, b3.astype(dtype, copy=False),
                       int(transpose))
        if self.any_singular:
            x3 = xp.where(self.singular_mask[:, None, None], xp.zeros((), dtype=dtype), x3)
        return x3.reshape(b.shape)


@dataclass(frozen=True)
class LU:
    """Dense LU factorisation with partial pivoting (LAPACK getrf/getrs; cuSOLVER on CuPy).

    No settings: ``LU().factor(A)`` factors an ``(n, n)`` matrix or a ``(B, n, n)`` stack once; the result's
    ``solve(b, transpose=...)`` reuses the factors for ``A x = b`` and ``A^T x = b``.

    >>> import numpy as np
    >>> A = np.stack([np.diag([1.0, 2.0]), np.diag([1.0, 0.0])])
    >>> fac = LU().factor(A)
    >>> fac.singular
    array([False,  True])
    >>> fac.solve(np.ones((2, 2)))
    array([[1. , 0.5],
           [0. , 0. ]])
    """

    def factor(self, A) -> LUFactorization:
        """Factor ``A`` (``(n, n)`` or ``(B, n, n)``); singular samples are flagged, never raised."""
        xp = check_square(A, "A")
        batched = A.ndim == 3
        A3 = A if batched else A[None]
        n = A.shape[-1]
        eye = xp.eye(n, dtype=A.dtype)
        finite = xp.isfinite(A3).all(axis=(1, 2))
        lu, piv = _lu_factor(xp, A3 if bool(finite.all()) else xp.where(finite[:, None, None], A3, eye))
        pivots = xp.abs(xp.diagonal(lu, axis1=1, axis2=2))
        eps = np.finfo(A.dtype).eps
        # ~(a > b) is also True for NaN pivots and for an all-zero diagonal
        well_scaled = pivots.min(axis=1) > eps * pivots.max(axis=1)
        singular = ~finite | ~xp.isfinite(pivots).all(axis=1) | ~well_scaled
        any_singular = bool(singular.any())  # one host sync per factorisation
        if any_singular:
            lu = xp.where(singular[:, None, None], eye, lu)
            piv = xp.where(singular[:, None], xp.arange(n, dtype=piv.dtype), piv)
        return LUFactorization(
            lu=lu, piv=piv, batched=batched, singular_mask=singular, any_singular=any_singular
        )
