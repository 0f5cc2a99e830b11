"""The one interface every linear solver implements, and the per-sample bookkeeping they share.

A linear solver is a frozen dataclass of settings with two methods:

* ``init(operator_or_matrix)`` prepares what repeated solves with one matrix can reuse (its *state*: LU's
  factorisation, GMRES's operator);
* ``solve(operator_or_matrix_or_state, b, *, transpose=False, x0=None, preconditioner=None) -> Solution``
  solves ``A x = b`` (or ``Aᵀ x = b``) for one system ``b: (n,)`` or a batch ``b: (B, n)``, with one return
  code per sample. ``sol.learned["state"]`` holds the state, so a second solve (e.g. the transposed one of an
  adjoint) can pass it back instead of the matrix.

``wants_matrix`` says whether the solver works on a dense matrix (callers that can build one cheaply, like
Newton's method with a Jacobian, then do; an operator is densified otherwise) or only on matrix-vector
products. Adding a linear solver means subclassing :class:`LinearSolver` in its own module, exporting it, and
testing it; :func:`~deqcore.linalg.linear_solve`, ``NewtonRaphson``, ``Rodas3`` and ``SteadyStateAdjoint``
accept it with no further change.

Per-sample contract: a sample whose right-hand side holds NaN or infinity gets ``DIVERGED`` and a NaN value; it
never changes the other samples' results or raises for the batch.

>>> import numpy as np, deqcore as dq
>>> A = np.array([[2.0, 1.0], [1.0, 3.0]])
>>> for solver in (dq.LU(), dq.GMRES(rtol=1e-12)):
...     sol = solver.solve(A, np.array([[3.0, 4.0], [np.nan, 1.0]]))
...     print(type(solver).__name__, sol.codes, bool(np.allclose(sol.value[0], 1.0)))
LU [<ReturnCode.SUCCESS: 0>, <ReturnCode.DIVERGED: 2>] True
GMRES [<ReturnCode.SUCCESS: 0>, <ReturnCode.DIVERGED: 2>] True
"""

from __future__ import annotations

from typing import ClassVar

from ..backend import get_namespace
from ..results import ReturnCode, Solution

__all__ = ["LinearSolver", "finish"]


class LinearSolver:
    """Base class of the linear solvers (:class:`~deqcore.linalg.LU`, :class:`~deqcore.linalg.GMRES`)."""

    #: True when the solver needs the dense matrix (an operator is densified by ``to_dense``)
    wants_matrix: ClassVar[bool] = False

    def init(self, operator_or_matrix):
        """What repeated solves with ``operator_or_matrix`` reuse; pass it to :meth:`solve` in its place."""
        raise NotImplementedError

    def solve(self, operator_or_matrix, b, *, transpose=False, x0=None, preconditioner=None) -> Solution:
        """Solve ``A x = b`` (``Aᵀ x = b`` with ``transpose=True``); see the module docstring."""
        raise NotImplementedError


def finish(x, codes, residual, stats, batched, out_shape, state=None) -> Solution:
    """The :class:`Solution` of a linear solve from per-row arrays: ``x (B, n)``, ``codes (B,)``, residual norms
    ``(B,)``; an unbatched solve (one row) gets a scalar code and residual."""
    learned = {} if state is None else {"state": state}
    if batched:
        return Solution(value=x, result=codes, stats=stats, residual=residual, batched=True, learned=learned)
    return Solution(value=x.reshape(out_shape), result=ReturnCode(int(codes[0])), stats=stats,
                    residual=float(residual[0]), learned=learned)


def nonfinite_rows(b2):
    """bool ``(B,)``: rows of ``b2`` holding NaN or infinity."""
    xp = get_namespace(b2)
    return ~xp.isfinite(b2).all(axis=1)
