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
>>> sol = LU().solve(A, np.array([1.0, 2.0]))            # the LinearSolver interface: a Solution ...
>>> again = LU().solve(sol.learned["state"], np.array([1.0, 2.0]), transpose=True)   # ... and reusable factors
>>> bool(np.allclose(again.value, y)), again.stats["nfactor"]
(True, 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from ..backend import check_float_array, get_kernel
from ..results import ReturnCode, Solution
from .base import LinearSolver, finish, nonfinite_rows
from .lu_kernels import SMALL_SYSTEM_LIMIT, lu_factor_reference, lu_solve_reference
from .operator import LinearOperator
from ._validate import check_bool, check_rhs, check_square

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
        matrix: the factored matrix (``(n, n)`` or ``(B, n, n)``), kept for residuals.
    """

    lu: Any
    piv: Any
    batched: bool
    singular_mask: Any
    any_singular: bool
    matrix: Any = None

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
        b3 = b.reshape(B, n, b.shape[-1] if b.ndim == (3 if self.batched else 2) else 1)   # (B may be 0)
        dtype = np.result_type(self.dtype, b.dtype)
        x3 = _lu_solve(xp, self.lu.astype(dtype, copy=False), self.piv, b3.astype(dtype, copy=False),
                       int(transpose))
        if self.any_singular:
            x3 = xp.where(self.singular_mask[:, None, None], xp.zeros((), dtype=dtype), x3)
        return x3.reshape(b.shape)


@dataclass(frozen=True)
class LU(LinearSolver):
    """Dense LU factorisation with partial pivoting (LAPACK getrf/getrs; cuSOLVER on CuPy).

    No settings. ``LU().solve(A, b, transpose=...)`` factors and solves (an operator is densified with
    ``to_dense``: ``n`` operator calls for a per-sample batch); the :class:`LUFactorization` it used is
    ``sol.learned["state"]`` (also ``LU().init(A)`` or ``LU().factor(A)``), and passing it back in place of ``A``
    solves again without refactoring, with ``A`` or ``Aᵀ``.

    Return codes per sample: SUCCESS; LINEAR_SOLVE_FAILED (singular to working precision or non-finite matrix:
    ``x = 0``); DIVERGED (``b`` holds NaN or infinity: ``x`` is NaN).

    >>> import numpy as np
    >>> A = np.stack([np.diag([1.0, 2.0]), np.diag([1.0, 0.0])])
    >>> fac = LU().factor(A)
    >>> fac.singular
    array([False,  True])
    >>> fac.solve(np.ones((2, 2)))
    array([[1. , 0.5],
           [0. , 0. ]])
    >>> LU().solve(A, np.ones((2, 2))).codes
    [<ReturnCode.SUCCESS: 0>, <ReturnCode.LINEAR_SOLVE_FAILED: 4>]
    """

    wants_matrix: ClassVar[bool] = True

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
            lu=lu, piv=piv, batched=batched, singular_mask=singular, any_singular=any_singular, matrix=A
        )

    def init(self, operator_or_matrix: Any, *, batch_size: int | None = None, xp: Any = None,
             dtype: Any = None) -> LUFactorization:
        """The factorisation of a matrix, or of an operator densified with ``to_dense(batch_size, ...)``."""
        if isinstance(operator_or_matrix, LUFactorization):
            return operator_or_matrix
        if isinstance(operator_or_matrix, LinearOperator):
            op = operator_or_matrix
            batch = op.batch_size if op.batch_size is not None else batch_size
            operator_or_matrix = op.to_dense(batch, xp=xp, dtype=dtype)
        return self.factor(operator_or_matrix)

    def solve(self, operator_or_matrix: Any, b: Any, *, transpose: bool = False, x0: Any = None,
              preconditioner: Callable | None = None) -> Solution:
        """Solve ``A x = b`` (or ``Aᵀ x = b``) for ``b`` of shape ``(n,)`` or ``(B, n)``; ``A`` is a dense
        matrix, a :class:`LinearOperator` or a :class:`LUFactorization` (reused: ``stats["nfactor"] == 0``).
        ``x0`` and ``preconditioner`` are accepted for the common interface and not needed."""
        transpose = check_bool(transpose, "transpose")
        xp = check_float_array(b, "b")
        batched = b.ndim == 2
        reused = isinstance(operator_or_matrix, LUFactorization)
        fac = self.init(operator_or_matrix, batch_size=b.shape[0] if batched else None, xp=xp, dtype=b.dtype)
        n = fac.n
        check_rhs(b, n, fac.lu.shape[0] if fac.batched else None, finite=False)
        rows = b.reshape(-1, n)
        bad = nonfinite_rows(rows)
        any_bad = bool(bad.any())
        if any_bad:
            rows = xp.where(bad[:, None], xp.zeros((), dtype=rows.dtype), rows)
        if not fac.batched and batched:  # one matrix shared by the batch: the rows of b are columns of one solve
            x = fac.solve(rows.T, transpose=transpose).T
            singular = xp.broadcast_to(fac.singular_mask, (rows.shape[0],))
        else:
            x = fac.solve(rows if batched else rows[0], transpose=transpose).reshape(rows.shape)
            singular = fac.singular_mask
        residual = xp.zeros(rows.shape[0], dtype=x.dtype)
        if fac.matrix is not None:
            M = fac.matrix.swapaxes(-1, -2) if transpose else fac.matrix
            Ax = xp.matmul(M, x[..., None])[..., 0] if M.ndim == 3 else x @ M.T
            residual = xp.sqrt(xp.sum((rows - Ax) ** 2, axis=-1))
        codes = xp.where(singular, int(ReturnCode.LINEAR_SOLVE_FAILED), int(ReturnCode.SUCCESS))
        if any_bad:
            codes = xp.where(bad, int(ReturnCode.DIVERGED), codes)
            x = xp.where(bad[:, None], xp.asarray(np.nan, dtype=x.dtype), x)
            residual = xp.where(bad, xp.asarray(np.nan, dtype=residual.dtype), residual)
        stats = {"num_steps": 1, "nfactor": 0 if reused else 1}
        return finish(x, codes, residual, stats, batched, b.shape, state=fac)
