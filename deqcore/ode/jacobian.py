"""The Jacobian of one unbatched system for the implicit steppers that keep it across steps (BDF, Radau).

:class:`OneSystemJacobian` is a mixin: the stepper provides ``ev`` (its :class:`~deqcore.ode.base.Evaluator`),
``jac`` (the user's Jacobian or None), ``n`` (unknowns), ``pattern`` (a sparsity pattern or None), ``fd`` (None
until the first finite-difference Jacobian) and ``stats`` (``njev`` and ``nfev_jac`` are counted here).
"""

from __future__ import annotations

import numpy as np

from ..linalg.finite_diff import FiniteDiffJacobian
from .rosenbrock import user_jacobian

__all__ = ["OneSystemJacobian"]


class OneSystemJacobian:
    """``_evaluate_jacobian(t, y, f, tol)``: the user's ``jac`` at (t, y), else forward differences around
    ``f = f(t, y)`` with increments scaled to each component and ``atol`` (grouped columns with a pattern, as
    a ``scipy.sparse.csc_matrix``); returns an (n, n) array or a sparse matrix."""

    def _evaluate_jacobian(self, t, y, f, tol):
        ev = self.ev
        self.stats["njev"] += 1
        if self.jac is not None:
            J = user_jacobian(ev, self.jac, self.n, t, y.reshape(ev.shape))
            return J if not isinstance(J, np.ndarray) else J[0]
        if self.fd is None:
            atol = tol[0]
            if np.ndim(atol) > 0:
                atol = np.broadcast_to(np.asarray(atol, dtype=ev.dtype), ev.shape).reshape(1, self.n)
            self.fd = FiniteDiffJacobian(self.n, threshold=atol, sparsity=self.pattern)
        shape = ev.shape
        F = lambda rows: ev(t, rows.reshape(shape)).reshape(1, -1)   # noqa: E731
        before = self.fd.evaluations
        y_rows, f_rows = y.reshape(1, -1), f.reshape(1, -1)
        if self.pattern is not None:
            import scipy.sparse as sp

            S = self.pattern
            vals = self.fd.sparse_values(F, y_rows, f_rows)[0]
            J = sp.csc_matrix((vals, S.indices, S.indptr), shape=S.shape)
        else:
            J = self.fd.dense(F, y_rows, f_rows)[0]
        self.stats["nfev_jac"] += self.fd.evaluations - before
        return J
