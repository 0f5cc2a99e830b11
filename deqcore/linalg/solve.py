"""``linear_solve``: one entry point over dense LU and matrix-free GMRES.

>>> import numpy as np
>>> A = np.array([[2.0, 1.0], [1.0, 3.0]])
>>> sol = linear_solve(A, np.array([3.0, 5.0]))          # a dense array: LU
>>> sol.value, sol.codes
(array([0.8, 1.4]), [<ReturnCode.SUCCESS: 0>])
>>> op = LinearOperator.from_matrix(A)
>>> np.allclose(linear_solve(op, np.array([3.0, 5.0])).value, [0.8, 1.4])   # an operator: GMRES
True
>>> linear_solve(np.ones((2, 2)), np.ones(2))
Traceback (most recent call last):
...
deqcore.results.SolveError: solve failed with LINEAR_SOLVE_FAILED: ...
"""

from __future__ import annotations

from .._checks import check_solver_dtype
from ..backend import check_float_array
from ..results import ReturnCode, Solution
from ._validate import check_bool, check_rhs, check_square
from .gmres import GMRES
from .lu import LU
from .operator import LinearOperator, as_operator

__all__ = ["linear_solve"]


def _norms(xp, v):
    return xp.sqrt(xp.sum(v * v, axis=-1))


def _solve_with_lu(solver: LU, A_or_op, b, transpose: bool) -> Solution:
    batched = b.ndim == 2
    if isinstance(A_or_op, LinearOperator):
        # densifying costs one operator call on the (n, n) identity, or n calls on (B, n) unit vectors when
        # the operator holds one system per sample (a from_matrix operator hands over its matrix for free)
        batch = A_or_op.batch_size if A_or_op.batch_size is not None else (b.shape[0] if batched else None)
        A = A_or_op.to_dense(batch, xp=check_float_array(b, "b"), dtype=b.dtype)
    else:
        A = A_or_op
    xp = check_square(A, "A")
    n = A.shape[-1]
    check_rhs(b, n, A.shape[0] if A.ndim == 3 else None)
    fac = solver.factor(A)
    if A.ndim == 2 and batched:  # one matrix shared by the batch: the rows of b are columns of one solve
        x = fac.solve(b.T, transpose=transpose).T
        singular = xp.broadcast_to(fac.singular_mask, (b.shape[0],))
    else:
        x = fac.solve(b, transpose=transpose)
        singular = fac.singular_mask if batched else fac.singular_mask[:1]
    M = A.swapaxes(-1, -2) if transpose else A
    r = b - (xp.matmul(M, x[..., None])[..., 0] if M.ndim == 3 else x @ M.T)
    codes = xp.where(singular, int(ReturnCode.LINEAR_SOLVE_FAILED), int(ReturnCode.SUCCESS))
    residual = _norms(xp, r)
    stats = {"num_steps": 1, "nfactor": 1}
    if batched:
        return Solution(value=x, result=codes, stats=stats, residual=residual, batched=True)
    return Solution(value=x, result=ReturnCode(int(codes[0])), stats=stats, residual=float(residual))


def linear_solve(A_or_op, b, solver=None, *, x0=None, transpose=False, throw=True) -> Solution:
    """Solve ``A x = b`` (or ``A^T x = b``) for one system ``b: (n,)`` or a batch ``b: (B, n)``.

    Args:
        A_or_op: a dense ``(n, n)`` matrix (shared by every row of ``b``), a ``(B, n, n)`` stack (one per
            sample), or a :class:`LinearOperator`.
        b: the right-hand side(s).
        solver: :class:`LU` or :class:`GMRES`. None picks LU for arrays and ``GMRES()`` for operators. GMRES
            wraps an array with ``LinearOperator.from_matrix``; LU densifies an operator with ``to_dense``
            (``n`` operator calls for a per-sample batch, then an O(n^3) factorisation per sample).
        x0: start point for GMRES (LU does not use one).
        transpose: solve with ``A^T`` (LU reuses its factors; GMRES needs the operator's ``rmatvec``).
        throw: raise :class:`~deqcore.results.SolveError` when any sample failed.

    Returns:
        :class:`~deqcore.results.Solution` with per-sample codes (SUCCESS, LINEAR_SOLVE_FAILED for a singular
        LU, MAX_STEPS / BREAKDOWN / STALLED for GMRES), ``stats`` and ``residual = ||b - A x||`` per sample.

    >>> import numpy as np, deqcore as dq
    >>> A = np.array([[4.0, 1.0], [2.0, 3.0]])
    >>> sol = dq.linear_solve(A, np.array([[4.0, 2.0], [1.0, 3.0]]))     # a batch of two right-hand sides
    >>> bool(np.allclose(sol.value, np.eye(2))), sol.success.tolist()
    (True, [True, True])
    >>> bool(np.allclose(dq.linear_solve(A, np.array([6.0, 4.0]), transpose=True).value, [1.0, 1.0]))
    True
    >>> dq.linear_solve(A, [6.0, 4.0])
    Traceback (most recent call last):
    ...
    TypeError: b must be a NumPy or CuPy array, got list
    """
    transpose = check_bool(transpose, "transpose")
    throw = check_bool(throw, "throw")
    check_float_array(b, "b")            # before anything reads b's shape: a list gets an error naming b
    check_solver_dtype(b, "b")
    if not isinstance(A_or_op, LinearOperator):
        check_square(A_or_op, "A")
        check_solver_dtype(A_or_op, "A")
    if solver is None:
        solver = GMRES() if isinstance(A_or_op, LinearOperator) else LU()
    if isinstance(solver, LU):
        sol = _solve_with_lu(solver, A_or_op, b, transpose)
    elif isinstance(solver, GMRES):
        op = as_operator(A_or_op)
        sol = solver.solve(op.T if transpose else op, b, x0)
    else:
        raise TypeError(f"solver must be LU() or GMRES(...), got {type(solver).__name__}")
    return sol.raise_if_failed() if throw else sol
