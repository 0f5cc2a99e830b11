"""A nonlinear problem as the root solvers see it: batched flat arrays and counted evaluations.

Every problem is held as ``(B, n)`` arrays, one system per row (an unbatched problem is one row). The
residual is F(y) (zero at a solution); the associated fixed-point map is G(y) = y + F(y). For
``fixed_point(fn)`` that is F(y) = fn(y) − y and G = fn; for ``root_find(fn)`` it is F = fn.

The convergence test is per sample: max|F(y)| ≤ atol + rtol·min(max|y|, s0), relative to the iterate's size
(SciML's reltol) but never to more than a scale s0 fixed at the start point (:meth:`RootProblem.tolerance`):
s0 = max|F(y0)| for a root problem (SciPy's ``f_rtol``), max(max|y0|, max|G(y0)|) for a fixed-point problem.
An iterate that runs off to infinity can therefore never widen the test.
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import check_choice, check_returned_array
from ..backend import default_kernel, get_namespace
from . import driver_kernels  # noqa: F401  (registers start_tolerance)
from ..linalg.finite_diff import FiniteDiffJacobian, jvp_step

__all__ = ["RootProblem", "flat_problem"]

_EPS = {np.dtype(t): float(np.finfo(t).eps) for t in (np.float32, np.float64)}   # np.finfo is a slow lookup


class RootProblem:
    """F(y) = 0 on (B, n) arrays, with a fixed-point view, Jacobians and JVPs; counts evaluations.

    Args:
        residual: ``F(y2d) -> (B, n)``.
        batch, n: sizes.
        jac: optional ``jac(y2d) -> (B, n, n)`` Jacobian of F.
        fixed_point_map: optional cheaper ``G(y2d)`` (defaults to y + F(y)).
        relative_to: what caps rtol's scale (see :meth:`tolerance`): ``"residual"`` (max|F(y0)|, root problems)
            or ``"iterate"`` (max|y|, capped at max(max|y0|, max|G(y0)|), fixed-point problems).
        row_residual, row_map: optional ``F(y_rows, rows)`` / ``G(y_rows, rows)`` evaluating only the batch rows
            ``rows`` (an index array): the rows are independent, and the driver may drop finished samples from
            the evaluations (active-set compaction, see :meth:`restrict`).

    Counters: ``nfev`` (calls of F or G), ``njev`` (Jacobians) and ``row_evaluations`` (rows evaluated, summed
    over calls: nfev × batch without compaction), shared with every restriction of the problem.
    """

    def __init__(self, residual, xp, dtype, batch, n, *, jac=None, fixed_point_map=None, relative_to="residual",
                 row_residual=None, row_map=None):
        self._residual = residual
        self.relative_to = check_choice(relative_to, "relative_to", ("residual", "iterate"))
        self._jac = jac
        self._map = fixed_point_map
        self._row_residual, self._row_map = row_residual, row_map
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.batch = batch
        self.n = n
        self.counts = {"nfev": 0, "njev": 0, "row_evaluations": 0}
        self.rows = None                      # the full problem's rows this one evaluates (None: all)
        self.eps = _EPS[self.dtype] if self.dtype in _EPS else float(np.finfo(self.dtype).eps)
        self._fd = None                       # finite-difference Jacobian state (per-column increment factors)
        #: :meth:`evaluate` returns C-contiguous arrays of the problem's dtype and shape (B, n): set by
        #: :func:`flat_problem`, whose evaluations check what the user's function returns
        self.conforming = False

    nfev = property(lambda self: self.counts["nfev"], lambda self, v: self.counts.__setitem__("nfev", v))
    njev = property(lambda self: self.counts["njev"], lambda self, v: self.counts.__setitem__("njev", v))
    row_evaluations = property(lambda self: self.counts["row_evaluations"],
                               lambda self, v: self.counts.__setitem__("row_evaluations", v))

    @property
    def can_restrict(self) -> bool:
        """True when F can be evaluated on a subset of the rows (independent rows)."""
        return self._row_residual is not None

    def restrict(self, rows) -> "RootProblem":
        """The problem on the full problem's rows ``rows`` only: F and G evaluate just those rows; the counters are
        shared with this problem. A restriction of a restriction still indexes the full problem's rows.

        >>> import numpy as np
        >>> full = RootProblem(lambda y: y - 1.0, np, np.float64, 3, 2, row_residual=lambda y, rows: y - 1.0)
        >>> sub = full.restrict(np.array([0, 2]))
        >>> sub.F(np.zeros((2, 2))).shape, full.nfev, full.row_evaluations
        ((2, 2), 1, 2)
        """
        residual, row_map = self._row_residual, self._row_map
        sub = RootProblem(lambda y: residual(y, rows), self.xp, self.dtype, len(rows), self.n,
                          fixed_point_map=None if row_map is None else (lambda y: row_map(y, rows)),
                          relative_to=self.relative_to, row_residual=residual, row_map=row_map)
        sub.counts, sub.rows, sub.conforming = self.counts, rows, self.conforming
        return sub

    @property
    def has_map(self) -> bool:
        """True when :meth:`evaluate` returns the fixed-point map G(y) (else the residual F(y))."""
        return self._map is not None

    @property
    def has_jac(self) -> bool:
        """True when the user supplied the Jacobian."""
        return self._jac is not None

    def tolerance(self, y0, f0, atol, rtol):
        """The per-sample test, fixed at the start point: ``(tol, cap, y_limit)`` for the driver, which accepts
        max|F(y)| ≤ tol + rtol·min(max|y|, cap) and calls an iterate with max|y| ≥ y_limit runaway (DIVERGED).

        - ``relative_to="residual"``: tol = atol, cap = max|F(y0)|, y_limit = inf;
        - ``relative_to="iterate"``: tol = atol, cap = s0 = max(max|y0|, max|G(y0)|), y_limit = s0/√eps (an
          iterate that large has run away: G(y) − y would round to zero there and fake a fixed point).

        rtol is thus relative to the iterate's size (SciML's reltol) but never to more than the start's scale.

        Non-finite scales count as 0 (atol alone).

        >>> import numpy as np
        >>> problem = RootProblem(lambda y: 0.5 * y - y, np, np.float64, 1, 2, relative_to="iterate")  # G(y) = y/2
        >>> y0 = np.array([[1.0, -3.0]])
        >>> tol, cap, y_limit = problem.tolerance(y0, problem.F(y0), 1e-6, 1e-3)
        >>> tol.tolist(), cap.tolist(), bool(y_limit[0] > 1e8)
        ([1e-06], [3.0], True)
        """
        return default_kernel("start_tolerance", self.xp)(y0, f0, atol, self.relative_to == "iterate", self.eps)

    def start(self, y0, raw0, atol):
        """The start point's residual and test from its raw evaluation ``raw0`` (G(y0) when :attr:`has_map`, else
        F(y0)) in one pass: ``(f0, (tol, cap, y_limit))``, as ``f0 = raw0 − y0`` (or raw0) and
        :meth:`tolerance` compute them. Counts nothing (``raw0`` was evaluated by the caller).

        >>> import numpy as np
        >>> problem = RootProblem(lambda y: 0.5 * y - y, np, np.float64, 1, 2, fixed_point_map=lambda y: 0.5 * y,
        ...                       relative_to="iterate")
        >>> y0 = np.array([[1.0, -3.0]])
        >>> f0, (tol, cap, y_limit) = problem.start(y0, 0.5 * y0, 1e-6)
        >>> f0.tolist(), cap.tolist()
        ([[-0.5, 1.5]], [3.0])
        """
        kernel = default_kernel("start_point", self.xp)
        f0, tol, cap, y_limit = kernel(y0, raw0, self._map is not None, atol, self.relative_to == "iterate", self.eps)
        return f0, (tol, cap, y_limit)

    def F(self, y):
        counts = self.counts
        counts["nfev"] += 1
        counts["row_evaluations"] += self.batch
        return self._residual(y)

    def evaluate(self, y):
        """One counted evaluation in its raw form: ``(G(y), True)`` when the problem has a fixed-point map,
        else ``(F(y), False)`` (the fused driver steps form the residual themselves)."""
        counts = self.counts
        counts["nfev"] += 1
        counts["row_evaluations"] += self.batch
        if self._map is not None:
            return self._map(y), True
        return self._residual(y), False

    def uncounted(self):
        """``(evaluate, is_map)``: :meth:`evaluate`'s raw evaluation ``evaluate(y)`` without its counting, for a
        loop that counts its evaluations itself (:meth:`count`; one Python call less per evaluation)."""
        return (self._residual, False) if self._map is None else (self._map, True)

    def count(self, evaluations: int):
        """Add ``evaluations`` calls of F or G on this problem's rows to the counters."""
        counts = self.counts
        counts["nfev"] += evaluations
        counts["row_evaluations"] += evaluations * self.batch

    def G(self, y):
        """The fixed-point map; returns (G(y), F(y))."""
        if self._map is not None:
            counts = self.counts
            counts["nfev"] += 1
            counts["row_evaluations"] += self.batch
            g = self._map(y)
            return g, g - y
        f = self.F(y)
        return y + f, f

    def forget_increments(self):
        """Drop the adapted finite-difference increments: the next Jacobian starts afresh (a row's adapted
        factors depend on how long its batch ran, so a new method must not inherit them)."""
        self._fd = None

    def jacobian(self, y, fy, adapt=None):
        """Dense Jacobian of F, (B, n, n): the user's ``jac``, else forward differences, perturbing
        coordinate j of every sample at once (the systems are independent, so n evaluations suffice).
        ``adapt``: optional (B,) bool, the rows whose Jacobian is wanted; the others keep their increment factors,
        so a row's differences never depend on its neighbours' steps."""
        self.njev += 1
        if self._jac is not None:
            return self._jac(y)
        # increments scaled to each component (deqcore.linalg.finite_diff, as for the ODE methods): sqrt(eps)·|y_j|,
        # adapted per column between calls; a zero component gets sqrt(eps)·1 (MINPACK's rule), never a fixed
        # sqrt(eps)·max(|y_j|, 1), which is far larger than a component of size 1e-8
        xp = self.xp
        if self._fd is None or self._fd.n != self.n:
            self._fd = FiniteDiffJacobian(self.n)
        self._fd.threshold = xp.where(y == 0, xp.asarray(1.0, dtype=self.dtype),
                                      xp.asarray(np.finfo(self.dtype).tiny, dtype=self.dtype))
        before = None if adapt is None or self._fd.factor is None else self._fd.factor.copy()
        J = self._fd.dense(self.F, y, fy)
        if before is not None and before.shape == self._fd.factor.shape:
            self._fd.factor = xp.where(adapt[:, None], self._fd.factor, before)
        return J

    def jvp(self, y, fy, v):
        """J(y) v per sample by a forward difference scaled to each sample's sizes
        (:func:`deqcore.linalg.finite_diff.jvp_step`)."""
        h = jvp_step(self.xp, y, v)
        return (self.F(y + h * v) - fy) / self.xp.where(h > 0, h, 1.0)


def _owned(call, xp, first=None):
    """``call`` whose outputs the solvers may keep: a fn returning one buffer that it overwrites on every call (a
    common way to save allocations) would change the residuals a solver holds (Broyden's last F, a trust region's
    F at the current iterate) under it, so an output sharing memory with the previous one is copied. ``first``:
    fn's output at the start point, evaluated before (the caller keeps a copy of it)."""
    last = first
    same = np.may_share_memory if xp is np else (lambda a, b: a is b)

    def owned(*a):
        nonlocal last
        out = raw = call(*a)
        if last is not None and same(raw, last):
            out = raw.copy()
        last = raw
        return out

    return owned


def flat_problem(fn, y0, args, batched, *, mode, jac=None, compact=False, first=None, conforming=False,
                 first_jac=None):
    """(RootProblem, y0 as (B, n), unflatten) for ``fn`` of the user's shapes.

    ``mode="root"``: F = fn; ``mode="fixed_point"``: F = fn(y) − y with G = fn. ``first``: fn's output at y0 when
    the caller evaluated it (root mode: a later output sharing its memory is copied, see :func:`_owned`).
    ``conforming``: fn is known to return C-contiguous arrays of y0's kind, dtype and shape (a framework adapter's
    map, which checks its outputs itself); with y0 already (B, n) and no ``args``, fn is then the problem's map
    as it is (no wrapper, no checks per call).
    ``first_jac``: jac's output at y0 when the caller evaluated it: the first Jacobian asked for, if at y0, is that.

    Every call's output is checked (type, shape, dtype: attribute reads, no pass over the data), so a ``fn``
    or ``jac`` that changes what it returns part-way fails with an error naming it. ``compact=True`` (batched
    only): fn's rows are independent and every element of ``args`` is per-sample (batch on its leading axis), so
    fn can be evaluated on some rows alone, with the matching rows of ``args``.
    """
    xp = np if type(y0) is np.ndarray else get_namespace(y0)
    shape, dtype, array_type = tuple(y0.shape), y0.dtype, xp.ndarray
    batch = shape[0] if batched else 1
    n = math.prod(shape[1:]) if batched else math.prod(shape)
    jac_shape = (batch, n, n) if batched else (n, n)

    def unflatten(y2d):
        return y2d.reshape(shape)

    if shape != (batch, n):
        def call(y2d):
            out = fn(y2d.reshape(shape), *args)
            if type(out) is not array_type or out.dtype != dtype or out.shape != shape:   # the usual case: 3 reads
                out = check_returned_array(out, "fn", shape, dtype, array_type)
            if not out.flags.c_contiguous:
                out = xp.ascontiguousarray(out)                   # the kernels are compiled for C order
            return out.reshape(batch, n)
    elif conforming and not args:                                 # (B, n), and fn checks its own outputs
        call = fn
    else:                                                         # (B, n) already: no reshapes per call
        def call(y2d):
            out = fn(y2d, *args)
            if type(out) is not array_type or out.dtype != dtype or out.shape != shape:
                out = check_returned_array(out, "fn", shape, dtype, array_type)
            if not out.flags.c_contiguous:
                out = xp.ascontiguousarray(out)
            return out

    def call_rows(y_rows, rows):
        k = y_rows.shape[0]
        out = check_returned_array(fn(y_rows.reshape((k,) + shape[1:]), *(a[rows] for a in args)), "fn",
                                   (k,) + shape[1:], dtype, array_type)
        return xp.ascontiguousarray(out).reshape(k, n)

    row_residual = row_map = None
    if compact:
        row_map = call_rows
        row_residual = call_rows if mode == "root" else (lambda y, rows: call_rows(y, rows) - y)

    user_jac = None
    if jac is not None:  # root mode only: fixed_point takes no Jacobian
        start = [None if first_jac is None else (y0.copy(), first_jac)]

        def user_jac(y2d):
            if start[0] is not None:        # the argument check's jac(y0), reused once (never evaluated twice)
                (y_first, J), start[0] = start[0], None
                if xp.array_equal(unflatten(y2d), y_first):
                    return J.reshape(batch, n, n)
            J = check_returned_array(jac(unflatten(y2d), *args), "jac", jac_shape, dtype, array_type,
                                     shape_of="the Jacobian's")
            return J.reshape(batch, n, n)

    if mode == "root":     # (the fixed-point residual fn(y) − y is a fresh array anyway)
        call, row_residual = _owned(call, xp, first), None if row_residual is None else _owned(row_residual, xp)
        problem = RootProblem(call, xp, dtype, batch, n, jac=user_jac, row_residual=row_residual)
    else:
        problem = RootProblem(lambda y: call(y) - y, xp, dtype, batch, n, jac=user_jac, fixed_point_map=call,
                              relative_to="iterate", row_residual=row_residual, row_map=row_map)
    problem.conforming = True        # every evaluation above checks fn's output and makes it C-contiguous (B, n)
    return problem, xp.ascontiguousarray(y0).reshape(batch, n), unflatten
