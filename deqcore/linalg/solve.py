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
deqcore.results.SolveError: linear solve failed with LINEAR_SOLVE_FAILED: the matrix is singular ...
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import check_solver_dtype
from ..backend import check_float_array
from ..results import ReturnCode, SolveError, Solution
from ._validate import check_bool, check_square
from .base import LinearSolver
from .gmres import GMRES
from .lu import LU, LUFactorization
from .operator import LinearOperator

__all__ = ["linear_solve", "linear_failure_message"]


def linear_solve(A_or_op: Any, b: Any, solver: LinearSolver | None = None, *, x0: Any = None,
                 transpose: bool = False, throw: bool = True) -> Solution:
    """Solve ``A x = b`` (or ``A^T x = b``) for one system ``b: (n,)`` or a batch ``b: (B, n)``.

    Args:
        A_or_op: a dense ``(n, n)`` matrix (shared by every row of ``b``), a ``(B, n, n)`` stack (one per
            sample), a :class:`LinearOperator`, or the state a solver returned in ``sol.learned["state"]``.
        b: the right-hand side(s).
        solver: any :class:`~deqcore.linalg.base.LinearSolver` (:class:`LU`, :class:`GMRES`). None picks LU
            for arrays and ``GMRES()`` for operators. GMRES wraps an array with ``LinearOperator.from_matrix``;
            LU densifies an operator with ``to_dense`` (``n`` operator calls for a per-sample batch, then an
            O(n^3) factorisation per sample).
        x0: start point for iterative solvers (LU does not use one).
        transpose: solve with ``A^T`` (LU reuses its factors; GMRES needs the operator's ``rmatvec``).
        throw: raise :class:`~deqcore.results.SolveError` when any sample failed.

    Returns:
        :class:`~deqcore.results.Solution` with per-sample codes (SUCCESS, LINEAR_SOLVE_FAILED for a singular
        LU, MAX_STEPS / BREAKDOWN / STALLED for GMRES, DIVERGED for a sample whose ``b`` holds NaN or
        infinity), ``stats`` and ``residual = ||b - A x||`` per sample.

    >>> import numpy as np, deqcore as dq
    >>> A = np.array([[4.0, 1.0], [2.0, 3.0]])
    >>> sol = dq.linear_solve(A, np.array([[4.0, 2.0], [1.0, 3.0]]))     # a batch of two right-hand sides
    >>> bool(np.allclose(sol.value, np.eye(2))), sol.success.tolist()
    (True, [True, True])
    >>> bool(np.allclose(dq.linear_solve(A, np.array([6.0, 4.0]), transpose=True).value, [1.0, 1.0]))
    True
    >>> again = dq.linear_solve(sol.learned["state"], np.array([5.0, 5.0]))   # the factors reused
    >>> bool(np.allclose(again.value, [1.0, 1.0])), again.stats["nfactor"]
    (True, 0)
    >>> dq.linear_solve(A, [6.0, 4.0])
    Traceback (most recent call last):
    ...
    TypeError: b must be a NumPy or CuPy array, got list
    """
    transpose = check_bool(transpose, "transpose")
    throw = check_bool(throw, "throw")
    check_float_array(b, "b")            # before anything reads b's shape: a list gets an error naming b
    check_solver_dtype(b, "b")
    factored = isinstance(A_or_op, LUFactorization)         # sol.learned["state"] of an LU solve
    if not isinstance(A_or_op, LinearOperator) and not factored:
        check_square(A_or_op, "A")
        check_solver_dtype(A_or_op, "A")
    if solver is None:
        solver = GMRES() if isinstance(A_or_op, LinearOperator) else LU()
    if factored and not isinstance(solver, LU):
        raise TypeError(f"A is an LUFactorization: solve it with solver=dq.LU() (or None), got "
                        f"{type(solver).__name__}")
    if not isinstance(solver, LinearSolver):
        raise TypeError(f"solver must be a linear solver such as dq.LU() or dq.GMRES(...), got "
                        f"{type(solver).__name__}")
    sol = solver.solve(A_or_op, b, transpose=transpose, x0=x0)
    if throw:
        message = linear_failure_message(sol)
        if message is not None:
            raise SolveError(message, sol)
    return sol


#: what a linear solve's failure means and what to try (the generic messages of deqcore.results speak of root
#: solvers: damping, Anderson, TrustRegion)
_MESSAGES = {
    ReturnCode.MAX_STEPS: "GMRES used its max_steps operator calls before ||b − A x|| met max(atol, rtol·||b||): "
                          "raise max_steps or restart, or pass a preconditioner",
    ReturnCode.DIVERGED: "b holds NaN or infinity, or the operator returned non-finite values",
    ReturnCode.STALLED: "a whole GMRES cycle reduced the residual by almost nothing: raise restart (up to n: full "
                        "GMRES), pass a preconditioner, or use dq.LU() on the dense matrix",
    ReturnCode.LINEAR_SOLVE_FAILED: "the matrix is singular to working precision (a zero, tiny or non-finite pivot "
                                    "of its LU factors): no reliable solution exists in this dtype",
    ReturnCode.BREAKDOWN: "the Krylov space became invariant while the residual is above the tolerance: the "
                          "matrix is probably singular on the residual's subspace",
}


def linear_failure_message(sol: Solution) -> str | None:
    """One paragraph on what failed in a linear solve, or None when every system succeeded.

    >>> import numpy as np
    >>> linear_failure_message(LU().solve(np.zeros((2, 2)), np.ones(2)))
    'linear solve failed with LINEAR_SOLVE_FAILED: the matrix is singular to working precision (a zero, tiny or non-finite pivot of its LU factors): no reliable solution exists in this dtype'
    """
    codes = np.asarray([int(c) for c in sol.codes])
    failed = codes[codes != int(ReturnCode.SUCCESS)]
    if failed.size == 0:
        return None
    advice = lambda c: _MESSAGES.get(ReturnCode(int(c)), ReturnCode(int(c)).message)     # noqa: E731
    if not sol.batched:
        return f"linear solve failed with {ReturnCode(int(failed[0])).name}: {advice(failed[0])}"
    parts = [f"{int((failed == c).sum())} of {codes.size} samples {ReturnCode(int(c)).name} ({advice(c)})"
             for c in np.unique(failed)]
    return "batched linear solve failed: " + "; ".join(parts)
