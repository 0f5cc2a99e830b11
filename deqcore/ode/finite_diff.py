"""Finite-difference derivatives shared by the package: Jacobians (dense, or sparse with column grouping),
Jacobian–vector products and time derivatives.

Increments are scaled to each component: ``h_j = factor_j · max(|y_j|, threshold_j)`` where the threshold is
the absolute error weight (``atol``), so a component far below 1 gets an increment far below 1. A fixed
``sqrt(eps) · max(|y_j|, 1)`` would be ~1e-8 for a component of size 1e-12, and the difference quotient of a
term quadratic in it would then measure the increment instead of the derivative. Each column keeps its own
factor between calls (:class:`FiniteDiffJacobian`): a column whose differences are lost in rounding is
recomputed at once with a 10× larger increment, and the factor drifts down when differences are large, as in
SciPy's ``num_jac`` (Shampine's scheme).

With a sparsity pattern, columns that share no row form a group (greedy colouring,
:func:`column_groups`) and one evaluation of f fills every column of the group.

>>> import numpy as np
>>> F = lambda Y: np.stack([-0.04 * Y[:, 0], 3e7 * Y[:, 1] ** 2], axis=1)     # one system per row
>>> y = np.array([[1.0, 5e-12]])
>>> J = FiniteDiffJacobian(2, threshold=1e-14).dense(F, y, F(y))[0]
>>> bool(abs(J[1, 1] / (6e7 * 5e-12) - 1) < 1e-6)          # 3e-4; an increment of 1.5e-8 gives 0.45
True
>>> groups = column_groups(np.eye(4, dtype=bool) | np.eye(4, k=1, dtype=bool))   # bidiagonal
>>> int(groups.max()) + 1, bool(groups[0] == groups[2] != groups[1] == groups[3])
(2, True)
"""

from __future__ import annotations

import numpy as np

__all__ = ["FiniteDiffJacobian", "column_groups", "increments", "jvp_step", "time_increment",
           "normalize_sparsity"]

_GROW, _SHRINK = 10.0, 0.1


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def increments(xp, y, threshold, factor):
    """Forward-difference increments for the entries of ``y``: ``factor · max(|y|, threshold)``, with the
    sign of ``y`` (away from zero) and rounded so that ``(y + h) − y == h`` exactly.

    >>> import numpy as np
    >>> h = increments(np, np.array([0.0, 1e-12, -3.0]), 1e-10, 1e-8)
    >>> [float(v) for v in h / np.array([1e-10, 1e-10, -3.0])]
    [1e-08, 1e-08, 1e-08]
    """
    scale = xp.maximum(xp.abs(y), threshold)
    h = factor * xp.where(y >= 0, scale, -scale)
    return (y + h) - y


def time_increment(t: float, h: float, dtype) -> float:
    """Increment for ∂f/∂t at time ``t`` with step ``h``: ``sqrt(eps) · max(|t|, |h|)`` (exactly
    representable); tiny ``|t|`` and ``|h|`` fall back to ``sqrt(eps)``."""
    scale = max(abs(t), abs(h))
    dt = np.sqrt(_eps(dtype)) * (scale if scale > 0 else 1.0)
    return float((t + dt) - t)


def jvp_step(xp, y_rows, v_rows):
    """Per-row increment for the directional difference ``(f(y + s v) − f(y)) / s``:
    ``s = sqrt(eps) · (1 + ‖y‖) / ‖v‖`` (0 where ``v = 0``), shaped ``(rows, 1)``.

    >>> import numpy as np
    >>> s = jvp_step(np, np.array([[3.0, 4.0]]), np.array([[0.0, 2.0]]))
    >>> bool(np.isclose(s[0, 0], np.sqrt(np.finfo(float).eps) * 6.0 / 2.0))
    True
    """
    eps = np.sqrt(_eps(y_rows.dtype))
    vnorm = xp.sqrt(xp.sum(v_rows * v_rows, axis=-1, keepdims=True))
    ynorm = xp.sqrt(xp.sum(y_rows * y_rows, axis=-1, keepdims=True))
    return xp.where(vnorm > 0, eps * (1.0 + ynorm) / xp.where(vnorm > 0, vnorm, 1.0), 0.0)


def normalize_sparsity(pattern, n: int):
    """A sparsity pattern (array-like or ``scipy.sparse`` matrix, ``(n, n)``, nonzero = may be nonzero) as a
    SciPy CSC matrix with sorted indices; the diagonal is always included (the stage matrices need it)."""
    import scipy.sparse as sp

    if sp.issparse(pattern):
        S = sp.csc_matrix(pattern, dtype=bool)
    else:
        arr = np.asarray(pattern.get() if hasattr(pattern, "get") else pattern)
        if arr.ndim != 2:
            raise ValueError(f"jac_sparsity must be a 2-D (n, n) pattern, got shape {arr.shape}")
        S = sp.csc_matrix(arr != 0)
    if S.shape != (n, n):
        raise ValueError(f"jac_sparsity must have shape ({n}, {n}) (the state's size), got {S.shape}")
    S = (S + sp.identity(n, dtype=bool, format="csc")).tocsc()
    S.sort_indices()
    S.data[:] = True
    return S


def column_groups(pattern) -> np.ndarray:
    """Group index per column such that columns in one group share no nonzero row (greedy colouring of the
    column intersection graph, largest columns first); ``pattern`` is a dense bool array or sparse matrix.

    >>> import numpy as np
    >>> column_groups(np.ones((3, 3))).tolist()      # a dense pattern: one column per group
    [0, 1, 2]
    """
    import scipy.sparse as sp

    S = sp.csc_matrix(pattern, dtype=bool)
    n = S.shape[1]
    rows_of = [S.indices[S.indptr[j]:S.indptr[j + 1]] for j in range(n)]
    order = sorted(range(n), key=lambda j: -len(rows_of[j]))
    groups = np.full(n, -1, dtype=np.int64)
    used_rows: list[np.ndarray] = []           # per group: which rows its columns already cover
    m = S.shape[0]
    for j in order:
        r = rows_of[j]
        for g, mask in enumerate(used_rows):
            if not mask[r].any():
                mask[r] = True
                groups[j] = g
                break
        else:
            mask = np.zeros(m, dtype=bool)
            mask[r] = True
            used_rows.append(mask)
            groups[j] = len(used_rows) - 1
    return groups


class FiniteDiffJacobian:
    """Forward-difference Jacobians of ``F: (rows, n) -> (rows, n)`` (one independent system per row: a
    column of every row is perturbed in the same evaluation), with per-row, per-column adaptive factors.

    Args:
        n: the size of one system.
        threshold: the absolute scale below which a component counts as zero (the error weights' ``atol``):
            a float or a host/device array ``(n,)``.
        sparsity: optional ``(n, n)`` pattern; then each evaluation fills a group of structurally orthogonal
            columns (``evaluations`` counts them: ``num_groups`` per Jacobian plus refinements).
    """

    def __init__(self, n: int, threshold=0.0, sparsity=None):
        self.n = n
        self.threshold = threshold
        self.factor = None
        self.evaluations = 0
        self.pattern = None if sparsity is None else normalize_sparsity(sparsity, n)
        if self.pattern is None:
            self.groups = [np.array([j]) for j in range(n)]
        else:
            colour = column_groups(self.pattern)
            self.groups = [np.flatnonzero(colour == g) for g in range(int(colour.max()) + 1)]
            S = self.pattern
            self.row_index = S.indices.astype(np.int64)                      # CSC order of the nonzeros
            self.col_index = np.repeat(np.arange(n), np.diff(S.indptr)).astype(np.int64)
            self.group_nz = [np.flatnonzero(np.isin(self.col_index, cols)) for cols in self.groups]

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def _factors(self, xp, rows, dtype):
        if self.factor is None or self.factor.shape != (rows, self.n):
            self.factor = xp.full((rows, self.n), np.sqrt(_eps(dtype)), dtype=dtype)
        return self.factor

    def _column_diffs(self, xp, F, y, f0, h, cols):
        """``F(y + Σ_{j∈cols} h_j e_j) − f0``: one evaluation."""
        yp = y.copy()
        yp[:, cols] += h[:, cols]
        self.evaluations += 1
        return F(yp) - f0

    def _entries(self, xp, F, y, f0):
        """Difference quotients on the pattern: ``(rows, nnz)`` in CSC order, or the dense ``(rows, n, n)``
        Jacobian without a pattern."""
        rows, n = y.shape
        dtype = y.dtype
        eps = _eps(dtype)
        factor = self._factors(xp, rows, dtype)
        threshold = self.threshold
        h = increments(xp, y, threshold, factor)
        f_abs = xp.abs(f0)
        dense = self.pattern is None
        out = xp.empty((rows, n, n) if dense else (rows, self.row_index.size), dtype=dtype)
        # per column: the largest |difference| and the size of f where it occurs (rounding scale)
        big = xp.zeros((rows, n), dtype=dtype)
        scale = xp.zeros((rows, n), dtype=dtype)

        def fill(k, cols, diff, hh, only=None):
            if dense:
                j = int(cols[0])
                q = diff / hh[:, j:j + 1]
                d_abs = xp.abs(diff)
                where = xp.argmax(d_abs, axis=1)
                m = xp.take_along_axis(d_abs, where[:, None], 1)[:, 0]
                s = xp.take_along_axis(f_abs, where[:, None], 1)[:, 0]
                if only is None:
                    out[:, :, j] = q
                    big[:, j], scale[:, j] = m, s
                else:
                    out[:, :, j] = xp.where(only[:, j:j + 1], q, out[:, :, j])
                    big[:, j] = xp.where(only[:, j], m, big[:, j])
                    scale[:, j] = xp.where(only[:, j], s, scale[:, j])
                return
            nz = self.group_nz[k]
            r_i, c_i = self.row_index[nz], self.col_index[nz]
            vals = diff[:, r_i]
            q = vals / hh[:, c_i]
            if only is not None:
                keep = only[:, c_i]
                out[:, nz] = xp.where(keep, q, out[:, nz])
            else:
                out[:, nz] = q
            # each row of a group belongs to one column: the per-column max via a scatter
            d_abs, s_abs = xp.abs(vals), f_abs[:, r_i]
            for c in cols:
                sel = np.flatnonzero(c_i == c)
                if sel.size == 0:
                    continue
                loc = xp.argmax(d_abs[:, sel], axis=1)
                m = xp.take_along_axis(d_abs[:, sel], loc[:, None], 1)[:, 0]
                s = xp.take_along_axis(s_abs[:, sel], loc[:, None], 1)[:, 0]
                if only is None:
                    big[:, c], scale[:, c] = m, s
                else:
                    big[:, c] = xp.where(only[:, c], m, big[:, c])
                    scale[:, c] = xp.where(only[:, c], s, scale[:, c])

        for k, cols in enumerate(self.groups):
            fill(k, cols, self._column_diffs(xp, F, y, f0, h, cols), h)
        # columns lost in rounding: recompute once with a 10x larger increment
        lost = big < eps ** 0.875 * scale
        lost &= xp.isfinite(big) & (scale > 0)
        if bool(lost.any()):
            factor_new = xp.where(lost, factor * _GROW, factor)
            h_new = increments(xp, y, threshold, factor_new)
            lost_cols = np.flatnonzero(_host(xp, lost.any(axis=0)))
            for k, cols in enumerate(self.groups):
                if np.isin(cols, lost_cols).any():
                    fill(k, cols, self._column_diffs(xp, F, y, f0, h_new, cols), h_new, only=lost)
            factor = factor_new
        # adapt the factors for the next Jacobian
        small = big < eps ** 0.75 * scale
        large = big > eps ** 0.25 * scale
        factor = xp.where(small, factor * _GROW, xp.where(large, factor * _SHRINK, factor))
        self.factor = xp.clip(factor, 1e3 * eps, eps ** 0.25)
        return out

    def dense(self, F, y, f0):
        """The Jacobian as a dense ``(rows, n, n)`` array (``y``, ``f0``: ``(rows, n)``)."""
        xp = _namespace(y)
        out = self._entries(xp, F, y, f0)
        if self.pattern is None:
            return out
        J = xp.zeros((y.shape[0], self.n, self.n), dtype=y.dtype)
        J[:, self.row_index, self.col_index] = out
        return J

    def sparse_values(self, F, y, f0):
        """The Jacobian's values on the pattern, ``(rows, nnz)`` in the CSC order of :attr:`pattern`."""
        if self.pattern is None:
            raise ValueError("sparse_values needs a sparsity pattern")
        return self._entries(_namespace(y), F, y, f0)


def _namespace(a):
    from ..backend import get_namespace
    return get_namespace(a)


def _host(xp, a):
    from ..backend import to_host
    return np.asarray(a) if xp is np else to_host(a)
