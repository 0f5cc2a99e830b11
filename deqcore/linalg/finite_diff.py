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

import math

import numpy as np

from ..backend.numba_tools import CACHE, numba

__all__ = ["FiniteDiffJacobian", "column_groups", "increments", "jvp_step", "time_increment",
           "normalize_sparsity"]

_GROW, _SHRINK = 10.0, 0.1


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def increments(xp, y, threshold, factor):
    """Forward-difference increments for the entries of ``y``: ``factor · max(|y|, threshold)``, with the
    sign of ``y`` (away from zero) and rounded so that ``(y + h) − y == h`` exactly. Where that scale is at most
    the dtype's smallest normal number (a zero component with a zero threshold, e.g. ``atol=0``) it is 1: a
    zero or subnormal increment would divide by zero or lose the difference.

    >>> import numpy as np
    >>> h = increments(np, np.array([0.0, 1e-12, -3.0]), 1e-10, 1e-8)
    >>> [float(v) for v in h / np.array([1e-10, 1e-10, -3.0])]
    [1e-08, 1e-08, 1e-08]
    >>> float(increments(np, np.array([0.0]), 0.0, 1e-8)[0])
    1e-08
    """
    scale = xp.maximum(xp.abs(y), threshold)
    scale = xp.where(scale <= float(np.finfo(y.dtype).tiny), 1.0, scale)
    h = factor * xp.where(y >= 0, scale, -scale)
    return (y + h) - y


def time_increment(t: float, h: float, dtype) -> float:
    """Increment for ∂f/∂t at time ``t`` with step ``h``: ``sqrt(eps) · max(|t|, |h|)``, at most ``|h|``,
    with the sign of ``h`` (exactly representable); tiny ``|t|`` and ``|h|`` fall back to ``sqrt(eps)``.
    Stepping towards ``t + h`` keeps ``t + dt`` inside the integrated span, where ``f`` may be all that is
    defined (an adjoint's right-hand side reads the forward solution there).

    >>> forward, backward = time_increment(10.0, 1.0, np.float64), time_increment(10.0, -1.0, np.float64)
    >>> bool(np.isclose(forward, 10.0 * np.sqrt(np.finfo(float).eps))), backward == -forward
    (True, True)
    >>> 10.0 < 10.0 + time_increment(10.0, 1e-12, np.float64) <= 10.0 + 1e-12     # never past the step's end
    True
    """
    scale = max(abs(t), abs(h))
    dt = np.sqrt(_eps(dtype)) * (scale if scale > 0 else 1.0)
    if h != 0:
        dt = min(dt, abs(h))
    dt = -dt if h < 0 else dt
    return float((t + dt) - t)


def jvp_step(xp, y_rows, v_rows):
    """Per-row increment for the directional difference ``(f(y + s v) − f(y)) / s``:
    ``s = sqrt(eps) · (1 + ‖y‖) / ‖v‖`` (0 where ``v = 0``), shaped ``(rows, 1)``.

    >>> import numpy as np
    >>> s = jvp_step(np, np.array([[3.0, 4.0]]), np.array([[0.0, 2.0]]))
    >>> bool(np.isclose(s[0, 0], np.sqrt(np.finfo(float).eps) * 6.0 / 2.0))
    True
    """
    eps = _eps(y_rows.dtype) ** 0.5            # a Python float: keeps a float32 state float32
    vnorm = xp.sqrt(xp.sum(v_rows * v_rows, axis=-1, keepdims=True))
    ynorm = xp.sqrt(xp.sum(y_rows * y_rows, axis=-1, keepdims=True))
    return xp.where(vnorm > 0, eps * (1.0 + ynorm) / xp.where(vnorm > 0, vnorm, 1.0), 0.0)


def check_sparsity_pattern(pattern) -> None:
    """Refuse a ``jac_sparsity`` that is not a square pattern of bools or finite numbers (array-like, CuPy or
    ``scipy.sparse``), naming it; the state's size is checked later, by :func:`normalize_sparsity`.

    >>> check_sparsity_pattern([[1, 0], [1, 1]])
    >>> check_sparsity_pattern([[1.0, float("nan")], [0.0, 1.0]])
    Traceback (most recent call last):
    ...
    ValueError: jac_sparsity holds NaN or infinity (nonzero = may be nonzero: give bools or finite numbers)
    """
    import scipy.sparse as sp

    if sp.issparse(pattern):
        shape, values = pattern.shape, pattern.tocoo().data
    else:
        values = np.asarray(pattern.get() if hasattr(pattern, "get") else pattern)
        shape = values.shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"jac_sparsity must be a square (n, n) pattern, got shape {tuple(shape)}")
    if values.dtype.kind not in "biuf":
        raise TypeError(f"jac_sparsity must hold bools or numbers, got dtype {values.dtype}")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError("jac_sparsity holds NaN or infinity (nonzero = may be nonzero: give bools or finite numbers)")


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
    S.sum_duplicates()
    R = S.tocsr()
    order = np.argsort(-np.diff(S.indptr), kind="stable").astype(np.int64)
    return _greedy_groups(S.indptr.astype(np.int64), S.indices.astype(np.int64), R.indptr.astype(np.int64),
                          R.indices.astype(np.int64), order)


@numba.njit(cache=CACHE)
def _greedy_groups(c_ptr, c_idx, r_ptr, r_idx, order):
    """First-fit colouring in ``order``: each column takes the lowest group that no column sharing one of its
    rows holds yet."""
    n = c_ptr.shape[0] - 1
    groups = np.full(n, -1, dtype=np.int64)
    stamp = np.full(n + 1, -1, dtype=np.int64)      # stamp[g] == j: group g is taken by a neighbour of j
    for j in order:
        for q in range(c_ptr[j], c_ptr[j + 1]):
            i = c_idx[q]
            for p in range(r_ptr[i], r_ptr[i + 1]):
                g = groups[r_idx[p]]
                if g >= 0:
                    stamp[g] = j
        g = 0
        while stamp[g] == j:
            g += 1
        groups[j] = g
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

    def _quotients(self, xp, F, y, f0, h, groups):
        """Difference quotients of the given groups: ``(rows, nnz)`` on the pattern (CSC order), or the dense
        ``(rows, n, n)`` Jacobian's columns; plus per column the largest |difference| and |f| there."""
        rows, n = y.shape
        f_abs = xp.abs(f0)
        if self.pattern is None:
            D = xp.empty((rows, n, len(groups)), dtype=y.dtype)
            for k, g in enumerate(groups):
                D[:, :, k] = self._column_diffs(xp, F, y, f0, h, self.groups[g])
            cols = np.array([self.groups[g][0] for g in groups])
            Q = D / h[:, None, cols]
            where = xp.argmax(xp.abs(D), axis=1)                                  # (rows, k)
            big = xp.take_along_axis(xp.abs(D), where[:, None, :], 1)[:, 0, :]
            scale = xp.take_along_axis(f_abs, where, 1)
            return Q, big, scale, cols
        nz = np.concatenate([self.group_nz[g] for g in groups])
        vals = xp.empty((rows, nz.size), dtype=y.dtype)
        at = 0
        for g in groups:
            diff = self._column_diffs(xp, F, y, f0, h, self.groups[g])
            gnz = self.group_nz[g]
            vals[:, at:at + gnz.size] = diff[:, self.row_index[gnz]]
            at += gnz.size
        order = np.argsort(nz, kind="stable")                 # back to CSC order (columns contiguous)
        nz, vals = nz[order], vals[:, order]
        c_i = self.col_index[nz]
        Q = vals / h[:, c_i]
        starts = np.flatnonzero(np.r_[True, c_i[1:] != c_i[:-1]])
        cols = c_i[starts]
        if xp is np:
            big = np.maximum.reduceat(np.abs(vals), starts, axis=1)
            scale = np.maximum.reduceat(f_abs[:, self.row_index[nz]], starts, axis=1)
        else:
            ends = np.r_[starts[1:], nz.size]
            a_v, a_f = xp.abs(vals), f_abs[:, self.row_index[nz]]
            big = xp.stack([a_v[:, i:j].max(axis=1) for i, j in zip(starts, ends)], axis=1)
            scale = xp.stack([a_f[:, i:j].max(axis=1) for i, j in zip(starts, ends)], axis=1)
        return (Q, nz), big, scale, cols

    def _entries(self, xp, F, y, f0):
        """Difference quotients on the pattern: ``(rows, nnz)`` in CSC order, or the dense ``(rows, n, n)``
        Jacobian without a pattern."""
        rows, n = y.shape
        dtype = y.dtype
        eps = _eps(dtype)
        factor = self._factors(xp, rows, dtype)
        h = increments(xp, y, self.threshold, factor)
        all_groups = list(range(len(self.groups)))
        Q, big, scale, cols = self._quotients(xp, F, y, f0, h, all_groups)
        big_c, scale_c = xp.zeros((rows, n), dtype=dtype), xp.zeros((rows, n), dtype=dtype)
        big_c[:, cols], scale_c[:, cols] = big, scale
        # columns lost in rounding: recompute them once with a 10x larger increment
        lost = (big_c < eps ** 0.875 * scale_c) & xp.isfinite(big_c) & (scale_c > 0)
        lost_cols = np.flatnonzero(_host(xp, lost.any(axis=0)))
        if lost_cols.size:
            factor = xp.where(lost, factor * _GROW, factor)
            h2 = increments(xp, y, self.threshold, factor)
            redo = [g for g in all_groups if np.isin(self.groups[g], lost_cols).any()]
            Q2, big2, scale2, cols2 = self._quotients(xp, F, y, f0, h2, redo)
            take = lost[:, cols2]
            if self.pattern is None:
                Q[:, :, cols2] = xp.where(take[:, None, :], Q2, Q[:, :, cols2])
            else:
                (q_all, nz_all), (q2, nz2) = Q, Q2
                pos = np.searchsorted(nz_all, nz2)
                keep = lost[:, self.col_index[nz2]]
                q_all[:, pos] = xp.where(keep, q2, q_all[:, pos])
            big_c[:, cols2] = xp.where(take, big2, big_c[:, cols2])
            scale_c[:, cols2] = xp.where(take, scale2, scale_c[:, cols2])
        # adapt the factors for the next Jacobian
        small = big_c < eps ** 0.75 * scale_c
        large = big_c > eps ** 0.25 * scale_c
        factor = xp.where(small, factor * _GROW, xp.where(large, factor * _SHRINK, factor))
        self.factor = xp.clip(factor, 1e3 * eps, eps ** 0.25)
        return Q if self.pattern is None else Q[0]

    def _dense_one(self, F, y, f0):
        """:meth:`_entries` for one NumPy system without a pattern: the same increments, evaluations and
        factor updates, with the bookkeeping in two compiled calls (on a small system NumPy's per-call cost
        is what counts)."""
        n, dtype = self.n, y.dtype
        eps = _eps(dtype)
        factor = self._factors(np, 1, dtype)
        h = increments(np, y, self.threshold, factor)
        D = np.empty((n, n), dtype=dtype)
        f_row = f0[0]
        for j in range(n):
            yp = y.copy()
            yp[0, j] += h[0, j]
            D[:, j] = F(yp)[0] - f_row
        self.evaluations += n
        Q = np.empty((1, n, n), dtype=dtype)
        big, scale = np.empty(n, dtype=dtype), np.empty(n, dtype=dtype)
        lost = np.zeros(n, dtype=bool)
        f_abs = np.abs(f0[0])
        if _fd_columns(D, h[0], f_abs, eps ** 0.875, Q[0], big, scale, lost, True):
            # columns lost in rounding: recompute them once with a 10x larger increment
            factor = np.where(lost[None], factor * _GROW, factor)
            h2 = increments(np, y, self.threshold, factor)
            for j in np.flatnonzero(lost):
                yp = y.copy()
                yp[0, j] += h2[0, j]
                D[:, j] = F(yp)[0] - f_row
                self.evaluations += 1
            _fd_columns(D, h2[0], f_abs, eps ** 0.875, Q[0], big, scale, lost, False)
        self.factor = _fd_factors(factor, big, scale, eps)
        return Q

    def dense(self, F, y, f0):
        """The Jacobian as a dense ``(rows, n, n)`` array (``y``, ``f0``: ``(rows, n)``)."""
        if type(y) is np.ndarray and self.pattern is None and y.shape[0] == 1:
            return self._dense_one(F, y, f0)
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


@numba.njit(cache=CACHE)
def _fd_columns(D, h, f_abs, lost_below, Q, big, scale, lost, first):
    """Difference quotients ``D[:, j] / h[j]`` into ``Q`` for the columns in play (all when ``first``, else
    the ``lost`` ones), with each column's largest |difference| (``big``) and |f| in that row (``scale``);
    when ``first``, marks the columns lost in rounding and returns whether there is one."""
    n = D.shape[0]
    any_lost = False
    for j in range(n):
        if not first and not lost[j]:
            continue
        where = 0
        top = abs(D[0, j])
        if top == top:
            for i in range(1, n):           # argmax: the first largest, or the first NaN
                v = abs(D[i, j])
                if v != v:
                    where = i
                    break
                if v > top:
                    top, where = v, i
        for i in range(n):
            Q[i, j] = D[i, j] / h[j]
        big[j] = abs(D[where, j])
        scale[j] = f_abs[where]
        if first:
            lost[j] = big[j] < lost_below * scale[j] and math.isfinite(big[j]) and scale[j] > 0
            any_lost |= lost[j]
    return any_lost


@numba.njit(cache=CACHE)
def _fd_factors(factor, big, scale, eps):
    """The factors for the next Jacobian: ×10 where the differences were small, ×0.1 where large, clipped."""
    out = np.empty_like(factor)
    lo, hi = 1e3 * eps, eps ** 0.25
    for j in range(factor.shape[1]):
        f = factor[0, j]
        if big[j] < eps ** 0.75 * scale[j]:
            f = f * _GROW
        elif big[j] > eps ** 0.25 * scale[j]:
            f = f * _SHRINK
        out[0, j] = min(max(f, lo), hi)
    return out


def _namespace(a):
    from ..backend import get_namespace
    return get_namespace(a)


def _host(xp, a):
    from ..backend import to_host
    return np.asarray(a) if xp is np else to_host(a)
