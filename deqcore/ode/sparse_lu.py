"""Sparse LU factors of ``a·I − b·J`` for a Jacobian ``J`` of fixed sparsity pattern, the matrix the implicit
steppers (BDF's ``I − c·J``, Radau's ``(γ/h)·I − J``) factor again and again.

Everything that depends only on the pattern is done once, in :class:`ShiftedSparseLU`'s constructor: a
fill-reducing symmetric ordering (SuperLU's minimum degree on the structure of ``S + Sᵀ``), the elimination
tree and the pattern of the factors (the symbolic Cholesky factorisation of the reordered ``S + Sᵀ``, which
holds the fill of LU without row exchanges). Each :meth:`~ShiftedSparseLU.factor` then is only the numeric
left-looking elimination on that fixed pattern, compiled, reading J's values straight from its CSC data; each
:meth:`~ShiftedSparseLU.solve` two compiled triangular sweeps.

The last columns of such factors are mostly or fully dense (on the 512-unknown 2-D Brusselator the last 92
are full, and the last 130, chosen by :func:`block_start`, take about 80% of the sparse elimination's
multiply-adds; complex factors stop at :data:`COMPLEX_BLOCK_MAX`). They form one dense block: the
elimination before it only adds its updates to the block's columns, and LAPACK's getrf (through its address,
from compiled code) factors the block's Schur complement with partial pivoting inside the block; getrs
applies those factors and row exchanges in the solve.

The elimination takes its pivots on the diagonal (the matrices here are ``I`` minus a multiple of J: the
diagonal dominates for small steps). A pivot smaller than :data:`PIVOT_THRESHOLD` times the largest entry
below it in its column would lose accuracy: then this matrix is factored by SciPy's ``splu`` with partial
pivoting instead (counted in :attr:`~ShiftedSparseLU.fallbacks`; after two such matrices in a row the next
:data:`SKIP_AFTER_FALLBACKS` go there directly). A zero or non-finite pivot or entry of U, or a matrix whose
pivots (the dense block's included) span more than ``1/eps`` (:func:`tiny_pivots`), is reported as singular:
``factor`` returns False and the caller's step fails, never a silent garbage solve.

>>> import numpy as np, scipy.sparse as sp
>>> J = sp.csc_matrix(np.array([[-2.0, 1.0, 0.0], [1.0, -2.0, 1.0], [0.0, 1.0, -2.0]]))
>>> lu = ShiftedSparseLU(J != 0)
>>> lu.factor(J.data, 1.0, 0.5)                 # I − 0.5·J
True
>>> x = lu.solve(np.array([1.0, 2.0, 3.0]))
>>> bool(np.allclose((np.eye(3) - 0.5 * J.toarray()) @ x, [1.0, 2.0, 3.0]))
True
>>> lu.factor(J.data, 2.0 + 1.0j, 1.0)          # (2 + i)·I − J, complex factors
True
>>> bool(np.allclose(((2 + 1j) * np.eye(3) - J.toarray()) @ lu.solve(np.ones(3)), 1.0))
True
"""

from __future__ import annotations

import numpy as np

from ..backend.numba_tools import CACHE, numba
from .kernels_host import getrf_in_place, lu_addresses, solve_in_place

__all__ = ["ShiftedSparseLU", "SparseFactors", "PIVOT_THRESHOLD", "DENSE_BLOCK_MIN", "COMPLEX_BLOCK_MAX",
           "stored_pattern", "tiny_pivots", "block_start"]

#: a diagonal pivot below this fraction of its column's largest entry below the diagonal sends the matrix
#: to partial pivoting (SciPy's ``splu``)
PIVOT_THRESHOLD = 0.01

#: after two matrices in a row that needed row exchanges, this many go straight to partial pivoting
SKIP_AFTER_FALLBACKS = 8

#: the smallest trailing block of the factors that is factored as a dense matrix (LAPACK's getrf)
DENSE_BLOCK_MIN = 16

#: the cost of a multiply-add in LAPACK's dense LU relative to one of the compiled sparse updates, and of one
#: call (in those updates), for :func:`block_start` (measured on the 2-D Brusselator: the best block was 112-144
#: of 512 columns, where the factors are 70-90% dense)
DENSE_COST, DENSE_CALL_COST = 0.15, 2000.0

#: the largest dense block of complex factors: OpenBLAS runs zgetrf on several threads from 100 × 100 on, which
#: cost up to 0.1 s a call on a loaded machine (measured; its real getrf did not)
COMPLEX_BLOCK_MAX = 99

_OK, _SINGULAR, _UNSTABLE = 0, 1, 2


class ShiftedSparseLU:
    """LU factors of ``a·I − b·J`` for J with the CSC pattern ``pattern`` (``(n, n)``, any SciPy sparse or
    dense array-like; the diagonal is added). ``factor(data, a, b)`` takes J's values in the CSC order of
    the normalised pattern (:attr:`pattern`: sorted indices, diagonal included), ``a`` real or complex;
    ``solve(rhs)`` solves with the last factors. See the module docstring."""

    def __init__(self, pattern):
        import scipy.sparse as sp
        from scipy.sparse.linalg import splu

        from ..linalg.finite_diff import normalize_sparsity

        n = int(np.shape(pattern)[0])
        S = normalize_sparsity(pattern, n)
        self.pattern, self.n = S, n
        sym = (S + S.T).tocsc()
        sym.sort_indices()
        # the ordering: SuperLU's minimum degree on S + Sᵀ, from a factorisation of a diagonally dominant
        # matrix of that structure (diagonal pivots: the row order is the column order)
        probe = sym.astype(np.float64)
        probe.data[:] = 1.0
        probe = (probe + sp.identity(n, format="csc") * (2.0 * np.diff(sym.indptr).max() + 1.0)).tocsc()
        order = np.argsort(splu(probe, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                                options=dict(SymmetricMode=True)).perm_c)
        inverse = np.empty(n, dtype=np.int64)
        inverse[order] = np.arange(n)
        self.order, self.inverse = order.astype(np.int64), inverse
        # the reordered structure, then the patterns of the factors
        P = sym[order][:, order].tocsc()
        P.sort_indices()
        self.l_ptr, self.l_idx, self.u_ptr, self.u_idx = _symbolic(n, P.indptr.astype(np.int64),
                                                                  P.indices.astype(np.int64))
        self.s_ptr, self.s_idx = S.indptr.astype(np.int64), S.indices.astype(np.int64)
        self.l_run = _run_starts(self.l_ptr, self.l_idx)
        self.block_starts = (block_start(self.l_ptr), block_start(self.l_ptr, COMPLEX_BLOCK_MAX))
        self._set_block(self.block_starts[0])
        self._dtype = None
        self.fallbacks = 0
        self._splu = None
        self._keys = None
        self._skip = self._unstable_run = 0

    def _set_block(self, start):
        """Factor the columns from ``start`` on as one dense block (LAPACK getrf on their Schur complement,
        partial pivoting inside it); ``start = n`` for none. U's entries of those columns above the block
        (the rows below ``start``, first in each column) end at :attr:`u_stop`."""
        n = self.n
        start = int(start) if n - int(start) >= DENSE_BLOCK_MIN else n
        self.block_start = start
        self.u_stop = self.u_ptr[1:].copy()
        for k in range(start, n):
            lo, hi = self.u_ptr[k], self.u_ptr[k + 1]
            self.u_stop[k] = lo + np.searchsorted(self.u_idx[lo:hi], start)

    def twin(self) -> "ShiftedSparseLU":
        """Another set of factors on the same pattern, sharing the symbolic work (e.g. Radau's real and
        complex matrices, factored at the same time)."""
        other = object.__new__(ShiftedSparseLU)
        other.__dict__.update({k: v for k, v in self.__dict__.items()
                               if k not in ("l_val", "u_val", "diag", "work", "x", "block", "piv")})
        other._dtype, other._splu, other.fallbacks, other._skip, other._unstable_run = None, None, 0, 0, 0
        return other

    def values(self, J):
        """J's values in the CSC order of :attr:`pattern` (a SciPy sparse ``J``), or None when J has a nonzero
        outside the pattern."""
        S = self.pattern
        if J.format == "csc" and J.has_sorted_indices and J.nnz == S.nnz and \
                np.array_equal(J.indptr, S.indptr) and np.array_equal(J.indices, S.indices):
            return J.data
        C = J.tocoo()
        if self._keys is None:
            self._keys = np.repeat(np.arange(self.n, dtype=np.int64), np.diff(S.indptr)) * self.n + S.indices
        keys = C.col.astype(np.int64) * self.n + C.row
        pos = np.minimum(np.searchsorted(self._keys, keys), self._keys.size - 1)
        inside = self._keys[pos] == keys
        if not inside[C.data != 0].all():
            return None
        out = np.zeros(S.nnz, dtype=np.result_type(C.data.dtype, np.float64))
        np.add.at(out, pos[inside], C.data[inside])
        return out

    @property
    def nnz(self) -> int:
        """Entries of L and U (the diagonal once)."""
        return int(self.l_idx.size + self.u_idx.size + self.n)

    def _arrays(self, dtype):
        if self._dtype is None or self._dtype != dtype:
            self._dtype = dtype
            start = self.block_starts[dtype.kind == "c"]
            if start != self.block_start:
                self._set_block(start)
            self.l_val = np.empty(self.l_idx.size, dtype=dtype)
            self.u_val = np.empty(self.u_idx.size, dtype=dtype)
            self.diag = np.empty(self.n, dtype=dtype)
            self.work = np.zeros(self.n, dtype=dtype)
            self.x = np.empty(self.n, dtype=dtype)
            m = self.n - self.block_start
            self.block = np.empty((m, m), dtype=dtype, order="F")
            self.piv = np.empty(m, dtype=np.int32)
            self._getrf, self._getrs = lu_addresses(dtype) if m else (0, 0)

    def factor(self, data, a, b, eps=None) -> bool:
        """Factor ``a·I − b·J`` (J's CSC values ``data`` on :attr:`pattern`); False when it is singular or
        not finite (then :meth:`solve` must not be called). ``eps``: the resolution below which pivots
        count as zero relative to the largest (float64's by default)."""
        dtype = np.result_type(np.asarray(data).dtype, np.asarray(a).dtype, np.asarray(b).dtype)
        dtype = np.dtype(np.complex128) if dtype.kind == "c" else np.dtype(np.float64)
        self._arrays(dtype)
        self._splu = None
        eps = float(np.finfo(np.float64).eps) if eps is None else float(eps)
        data = np.asarray(data)
        data = np.ascontiguousarray(data, dtype=np.complex128 if data.dtype.kind == "c" else np.float64)
        if self._skip > 0:          # the last matrices needed row exchanges: straight to partial pivoting
            self._skip -= 1
            return self._factor_pivoting(data, a, b, dtype, eps)
        status = _numeric(self.n, self.s_ptr, self.s_idx, data, dtype.type(a), dtype.type(b), self.order,
                          self.inverse, self.l_ptr, self.l_run, self.l_idx, self.u_ptr, self.u_stop,
                          self.u_idx, self.l_val, self.u_val, self.diag, self.work, PIVOT_THRESHOLD, eps,
                          self.block_start, self.block, self.piv, self._getrf)
        if status == _UNSTABLE:
            self._unstable_run += 1
            if self._unstable_run >= 2:
                self._skip = SKIP_AFTER_FALLBACKS
            return self._factor_pivoting(data, a, b, dtype, eps)
        self._unstable_run = 0
        return status == _OK

    def _factor_pivoting(self, data, a, b, dtype, eps) -> bool:
        import scipy.sparse as sp
        from scipy.sparse.linalg import splu

        self.fallbacks += 1
        S = self.pattern
        J = sp.csc_matrix((np.asarray(data), S.indices, S.indptr), shape=S.shape)
        M = (sp.identity(self.n, format="csc", dtype=dtype) * a - J.astype(dtype) * b).tocsc()
        if not np.isfinite(M.data).all():
            return False
        try:
            lu = splu(M, permc_spec="MMD_AT_PLUS_A")
        except RuntimeError:          # exactly singular
            return False
        if tiny_pivots(np.abs(lu.U.diagonal()), eps):
            return False
        self._splu = lu
        return True

    def kernel_arrays(self):
        """The last :meth:`factor`'s arrays as compiled code takes them (the arguments of the compiled solve
        after the right-hand side, without its output: see :mod:`deqcore.ode.radau_sparse`); None when that
        matrix went to partial pivoting (SciPy's ``splu``)."""
        if self._splu is not None:
            return None
        return (self.order, self.l_ptr, self.l_run, self.l_idx, self.u_ptr, self.u_stop, self.u_idx,
                self.l_val, self.u_val, self.diag, self.x, self.block_start, self.block, self.piv,
                self._getrs)

    def solve(self, rhs):
        """``x`` with ``(a·I − b·J) x = rhs`` for the last :meth:`factor` (a new array)."""
        if self._splu is not None:
            return self._splu.solve(np.asarray(rhs, dtype=self._dtype))
        out = np.empty(self.n, dtype=self._dtype)
        _solve(self.n, np.asarray(rhs), self.order, self.l_ptr, self.l_run, self.l_idx, self.u_ptr, self.u_stop,
               self.u_idx, self.l_val, self.u_val, self.diag, self.x, out, self.block_start, self.block, self.piv,
               self._getrs)
        return out


class SparseFactors:
    """The sparse factors a stepper keeps: one :class:`ShiftedSparseLU` per ``slot`` (e.g. Radau's real and
    complex matrices), all sharing the symbolic work of one pattern (``pattern``, or the first J's), which
    is widened when a J (a user's) has entries outside it.

    >>> import numpy as np, scipy.sparse as sp
    >>> J = sp.csr_matrix(np.array([[-2.0, 1.0], [0.0, -3.0]]))
    >>> factors = SparseFactors()
    >>> solve = factors.solver(J, 1.0, 0.5, np.float64)          # I − 0.5·J
    >>> solve(np.array([1.5, 2.5])).tolist()
    [1.0, 1.0]
    """

    def __init__(self, pattern=None):
        self.pattern = pattern
        self.slots: dict = {}

    def solver(self, J, a, b, dtype, slot=0):
        """A solve function for ``a·I − b·J`` (J a SciPy sparse matrix), returning ``dtype``; None when the
        matrix is singular or not finite. The previous solve function of this slot is invalid afterwards."""
        lu = self.slots.get(slot)
        data = None if lu is None else lu.values(J)
        if data is None:
            base = next(iter(self.slots.values()), None)
            data = None if base is None else base.values(J)
            if data is None:            # the first J, or one with entries outside the pattern
                if base is None and self.pattern is not None:
                    base = ShiftedSparseLU(self.pattern)
                    data = base.values(J)
                if data is None:
                    stored = stored_pattern(J)
                    base = ShiftedSparseLU(stored if base is None else base.pattern + stored)
                    data = base.values(J)
                self.slots = {}
            lu = self.slots[slot] = base if not self.slots else base.twin()
        dtype = np.dtype(dtype)
        if not lu.factor(data, a, b, eps=float(np.finfo(dtype).eps)):
            return None
        if dtype in (np.float64, np.complex128):
            return lu.solve
        return lambda rhs: lu.solve(rhs).astype(dtype, copy=False)


def stored_pattern(J):
    """The pattern of every entry a SciPy sparse ``J`` stores (explicit zeros too), as a bool CSC matrix."""
    import scipy.sparse as sp

    C = sp.csc_matrix(J)
    return sp.csc_matrix((np.ones(C.nnz, dtype=bool), C.indices, C.indptr), shape=C.shape)


def tiny_pivots(diag_abs, eps) -> bool:
    """Whether pivots of these magnitudes mark a singular matrix: one is zero or not finite, or the smallest
    is below ``eps`` times the largest."""
    return not diag_abs.min() > eps * diag_abs.max() if diag_abs.size else False


@numba.njit(cache=CACHE)
def _symbolic(n, p_ptr, p_idx):
    """The patterns of L (strictly lower, by column) and U (strictly upper, by column) of a matrix with the
    structurally symmetric pattern ``(p_ptr, p_idx)`` (CSC): the elimination tree, then each row's subtree
    (Liu's row-subtree algorithm); row indices ascending in every column."""
    parent = np.full(n, -1, dtype=np.int64)
    ancestor = np.full(n, -1, dtype=np.int64)
    for k in range(n):                        # the elimination tree (with path compression)
        for q in range(p_ptr[k], p_ptr[k + 1]):
            i = p_idx[q]
            while i != -1 and i < k:
                nxt = ancestor[i]
                ancestor[i] = k
                if nxt == -1:
                    parent[i] = k
                i = nxt
    mark = np.full(n, -1, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)      # per column k of U: entries above the diagonal (row k of L)
    lcounts = np.zeros(n, dtype=np.int64)     # per column j of L: entries below the diagonal
    for pass_ in range(2):
        if pass_ == 1:
            u_ptr = np.zeros(n + 1, dtype=np.int64)
            l_ptr = np.zeros(n + 1, dtype=np.int64)
            for k in range(n):
                u_ptr[k + 1] = u_ptr[k] + counts[k]
                l_ptr[k + 1] = l_ptr[k] + lcounts[k]
            u_idx = np.empty(u_ptr[n], dtype=np.int64)
            l_idx = np.empty(l_ptr[n], dtype=np.int64)
            l_fill = l_ptr[:n].copy()
            mark[:] = -1
        for k in range(n):                    # row k of L: the nodes of k's row subtree
            mark[k] = k + pass_ * n
            at = 0
            for q in range(p_ptr[k], p_ptr[k + 1]):
                j = p_idx[q]
                while j < k and mark[j] != k + pass_ * n:
                    mark[j] = k + pass_ * n
                    if pass_ == 0:
                        counts[k] += 1
                        lcounts[j] += 1
                    else:
                        u_idx[u_ptr[k] + at] = j
                        at += 1
                        l_idx[l_fill[j]] = k
                        l_fill[j] += 1
                    j = parent[j]
            if pass_ == 1:
                u_idx[u_ptr[k]:u_ptr[k + 1]].sort()
    return l_ptr, l_idx, u_ptr, u_idx


def block_start(l_ptr, largest=None) -> int:
    """Where the trailing block that the factorisation treats as dense starts, for factors whose L has the
    column pointers ``l_ptr`` (``n``: none): the start that minimises the estimated work, the sparse
    updates of the columns before it (``Σ_j |L(:, j)|²``) plus :data:`DENSE_COST` × ``m³/3`` for LAPACK's
    LU of the ``m × m`` block, of at least :data:`DENSE_BLOCK_MIN` columns and at most ``largest``. (Any
    start is correct: the block's zeros only cost time.)

    >>> int(block_start(np.arange(21)))                           # a chain: no fill, nothing dense
    20
    >>> counts = np.arange(29, -1, -1)                            # 30 × 30 factors fully dense
    >>> int(block_start(np.concatenate([[0], np.cumsum(counts)])))
    0
    """
    l_ptr = np.asarray(l_ptr, dtype=np.int64)
    n = l_ptr.size - 1
    if n < DENSE_BLOCK_MIN:
        return n
    sparse = np.concatenate([[0.0], np.cumsum(np.diff(l_ptr).astype(np.float64) ** 2)])   # work before start
    starts = np.arange(0 if largest is None else max(0, n - int(largest)), n - DENSE_BLOCK_MIN + 1)
    if starts.size == 0:
        return n
    m = (n - starts).astype(np.float64)
    cost = sparse[starts] + DENSE_COST * (m ** 3 / 3.0 + m * m) + DENSE_CALL_COST
    best = int(starts[np.argmin(cost)])
    return best if cost.min() < sparse[n] else n


@numba.njit(cache=CACHE)
def _run_starts(ptr, idx):
    """Per column of the CSC pattern ``(ptr, idx)`` (rows ascending): where its last run of consecutive rows
    starts (the updates loop over that run without the row indices)."""
    n = ptr.size - 1
    run = np.empty(n, dtype=np.int64)
    for j in range(n):
        r = ptr[j + 1] - 1
        while r > ptr[j] and idx[r - 1] == idx[r] - 1:
            r -= 1
        run[j] = max(r, ptr[j])
    return run


@numba.njit(cache=CACHE)
def _numeric(n, s_ptr, s_idx, data, a, b, order, inverse, l_ptr, l_run, l_idx, u_ptr, u_stop, u_idx, l_val, u_val,
             diag, x, threshold, eps, start, block, piv, getrf):
    """Left-looking LU without row exchanges of ``a·I − b·J`` reordered (column k of the reordered matrix is
    J's column ``order[k]``, its rows mapped by ``inverse``), up to column ``start``; the columns from
    ``start`` on only receive the updates of the columns before it, and their trailing rows (the Schur
    complement) are factored densely in ``block`` by LAPACK getrf (address ``getrf``, pivots ``piv``).
    Returns OK, SINGULAR (a zero or non-finite pivot or entry, or pivots spanning more than 1/eps) or
    UNSTABLE (a diagonal pivot below ``threshold`` × its column, before ``start``)."""
    for k in range(n):
        # scatter column k (x is all zero outside the column's pattern between columns)
        col = order[k]
        for q in range(s_ptr[col], s_ptr[col + 1]):
            x[inverse[s_idx[q]]] = -b * data[q]
        x[k] += a
        # the updates from the columns j < min(k, start) in U(:, k), in ascending order
        bad = x[k] - x[k]               # stays zero while every entry of U(:, k) is finite
        for q in range(u_ptr[k], u_stop[k]):
            j = u_idx[q]
            v = x[j]
            u_val[q] = v
            x[j] = 0.0
            if v != 0.0:
                bad += v - v
                run, stop = l_run[j], l_ptr[j + 1]
                for r in range(l_ptr[j], run):
                    x[l_idx[r]] -= l_val[r] * v
                if run < stop:                     # the rows in one run (the dense part): a plain loop
                    off = l_idx[run] - run
                    for r in range(run, stop):
                        x[off + r] -= l_val[r] * v
        if bad != 0.0 or bad != bad:   # a non-finite entry of U
            x[:] = 0.0
            return 1
        if k >= start:                 # a column of the dense block: its Schur complement
            for i in range(start, n):
                block[i - start, k - start] = x[i]
                x[i] = 0.0
            continue
        pivot = x[k]
        x[k] = 0.0
        diag[k] = pivot
        big = 0.0
        for r in range(l_ptr[k], l_ptr[k + 1]):
            z = x[l_idx[r]]
            m = abs(z.real) + abs(z.imag)      # the modulus within a factor √2, without a square root
            if m > big or m != m:
                big = m
        p = abs(pivot)
        if not (p > 0.0) or not np.isfinite(p) or not np.isfinite(big):
            for r in range(l_ptr[k], l_ptr[k + 1]):
                x[l_idx[r]] = 0.0
            return 1
        if p < threshold * big:
            for r in range(l_ptr[k], l_ptr[k + 1]):
                x[l_idx[r]] = 0.0
            return 2
        for r in range(l_ptr[k], l_ptr[k + 1]):
            i = l_idx[r]
            l_val[r] = x[i] / pivot
            x[i] = 0.0
    top, low = 0.0, np.inf
    for k in range(start):
        p = abs(diag[k])
        top = max(top, p)
        low = min(low, p)
    if start < n:
        m = n - start
        for c in range(m):
            for i in range(m):
                if not np.isfinite(abs(block[i, c])):
                    return 1
        if getrf_in_place(getrf, block, piv) != 0:
            return 1
        for i in range(m):
            p = abs(block[i, i])
            if not np.isfinite(p):
                return 1
            top = max(top, p)
            low = min(low, p)
    if not low > eps * top:
        return 1
    return 0


@numba.njit(cache=CACHE)
def _solve(n, rhs, order, l_ptr, l_run, l_idx, u_ptr, u_stop, u_idx, l_val, u_val, diag, x, out, start, block,
           piv, getrs):
    """``out = M⁻¹ rhs`` from the factors of :func:`_numeric` (unit L of the columns before ``start``, the
    dense block's getrs, then U, in the reordered unknowns)."""
    for k in range(n):
        x[k] = rhs[order[k]]
    for j in range(start):                    # L y = x, column by column
        v = x[j]
        if v != 0.0:
            run, stop = l_run[j], l_ptr[j + 1]
            for r in range(l_ptr[j], run):
                x[l_idx[r]] -= l_val[r] * v
            if run < stop:
                off = l_idx[run] - run
                for r in range(run, stop):
                    x[off + r] -= l_val[r] * v
    if start < n:                             # the dense block: its row exchanges, L and U
        solve_in_place(getrs, block, piv, x[start:])
    for k in range(n - 1, -1, -1):            # U z = y, column by column (above the block)
        v = x[k] / diag[k] if k < start else x[k]
        x[k] = v
        if v != 0.0:
            lo, stop = u_ptr[k], u_stop[k]
            if stop > lo and u_idx[stop - 1] - u_idx[lo] == stop - lo - 1:
                off = u_idx[lo] - lo
                for q in range(lo, stop):
                    x[off + q] -= u_val[q] * v
            else:
                for q in range(lo, stop):
                    x[u_idx[q]] -= u_val[q] * v
    for k in range(n):
        out[order[k]] = x[k]
