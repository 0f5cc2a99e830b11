"""Restarted GMRES with one Krylov space per sample, vectorised over the batch.

Every sample of a ``(B, n)`` batch runs its own Arnoldi process (classical Gram–Schmidt, with a second pass
for the samples whose first pass cancelled most of the new vector: CGS2 where it is needed), its own Givens
rotations (accumulated in a small ``(restart+1)^2`` matrix per sample) and its own convergence test
``||b_i - A x_i|| <= max(atol, rtol * ||b_i||)``; all samples share each operator call. A sample that converges
(or breaks down, or stalls) is frozen: its basis vectors become zero and its ``x`` stops changing. The small
least-squares problems are one batched triangular solve per cycle (``gmres_least_squares``: compiled on NumPy,
the namespace's batched solve on CuPy). Each Arnoldi step after the operator call is one fused kernel
(``arnoldi_step``: orthogonalisation, rotations and convergence test per sample), and one host sync (whether
any sample is still iterating: an operator call saved is worth far more than the sync). On NumPy the compiled
step is bound to the cycle's arrays once, reads the operator's output without copying it (each sample is
orthogonalised in a scratch row of the kernel's own) and returns the count itself; the cycle's start (first
basis vector, flags) and the bookkeeping after its true residual (codes, x, r, norms) are one compiled pass each.

Magnitudes far from 1 are scaled away by powers of 2 (exact): rows of ``b``, and per cycle the operator of each
sample whose first ``A v`` is far from 1 (the cycle then runs on ``σ_i A``), so that no squared norm overflows or
underflows; the norms of ``b`` and of the true residuals are summed again, scaled, where theirs would. Ordinary
magnitudes get the scale 1, and the same results bit for bit.

>>> import numpy as np
>>> A = np.array([[3.0, 1.0], [1.0, 2.0]])
>>> sol = GMRES(rtol=1e-10).solve(A, np.array([1.0, 0.0]))
>>> sol.success, np.allclose(sol.value, np.linalg.solve(A, [1.0, 0.0]))
(True, True)
>>> sol.stats["num_steps"]  # two Arnoldi matvecs and the residual check
3
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._checks import check_callable, check_positive_int, check_tolerance
from ..backend import check_float_array, default_kernel, get_kernel
from ..results import ReturnCode, Solution
from .base import LinearSolver, finish, nonfinite_rows
from .norms import row_norms
from ._validate import check_bool, check_rhs
from .gmres_kernels import MAX_RESTART, arnoldi_step_reference
from . import triangular_kernels  # noqa: F401  (registers back_substitute)
from . import gmres_kernels  # noqa: F401  (registers arnoldi_step and gmres_least_squares)
from .operator import LinearOperator, as_operator

__all__ = ["GMRES"]

_BREAKDOWN_FACTOR = 100  # a new Krylov direction shorter than this many eps of ||A v_j|| is round-off


#: On NumPy, GMRES keeps the basis and small matrices of its last cycles for the next ones (per sizes and dtype) up
#: to this many bytes each: zeroing memory already mapped is far cheaper than fresh allocations, whose first
#: touch page-faults (measured in a DEQ training loop: 1.1 ms a cycle for 2 MB, against ~0.1 ms zeroing)
WORKSPACE_BYTES = 64 * 2 ** 20
#: ... for at most this many different sizes (the oldest are dropped first)
WORKSPACE_SHAPES = 4
_WORKSPACES: dict = {}


def _take_workspace(xp, B, n, m, dtype, clean=True, reset=None):
    """``[V, R, Q, touched]`` for a cycle: V ``(B, m+1, n)`` and R ``(B, m+1, m)`` zero, Q ``(B, m+1, m+1)`` the
    identity; reused from an earlier cycle of the same sizes where one was given back (not shared while in use).
    ``clean=False``: a reused V and R keep their old values (for the compiled step, which reads only what the
    cycle wrote; zeroing a 2 MB basis cost ~0.7 ms a cycle at 64 × 256 × 31, float32), and only the leading
    ``touched × touched`` block of Q, all that the last cycle's steps changed, is reset (by ``reset(Q, touched)``
    where given: the compiled reset)."""
    work = None
    if xp is np:                          # (CuPy allocates from its memory pool: nothing to gain on a GPU)
        try:
            work = _WORKSPACES[(B, n, m, np.dtype(dtype).str)].pop()
        except (KeyError, IndexError):
            pass
    if work is None:
        work = [xp.zeros((B, m + 1, n), dtype=dtype), xp.zeros((B, m + 1, m), dtype=dtype),
                xp.zeros((B, m + 1, m + 1), dtype=dtype), m + 1]
    elif clean:
        for a in work[:3]:
            a.fill(0)
        work[3] = m + 1
    elif reset is not None:
        reset(work[2], work[3])
        return work
    else:
        work[2][:, : work[3], : work[3]] = 0
    if work[3]:
        work[2].reshape(B, -1)[:, : work[3] * (m + 2) : m + 2] = 1          # the diagonal of each sample's Q
    return work


def _give_back_workspace(xp, work, touched):
    """Keep a cycle's workspace for the next cycle of its sizes (NumPy only); ``touched``: the leading block
    of Q its steps may have changed."""
    V, R, Q, _ = work
    if xp is np and V.nbytes + R.nbytes + Q.nbytes <= WORKSPACE_BYTES:
        work[3] = touched
        B, m1, n = V.shape
        key = (B, n, m1 - 1, V.dtype.str)
        if key not in _WORKSPACES and len(_WORKSPACES) >= WORKSPACE_SHAPES:
            try:
                del _WORKSPACES[next(iter(_WORKSPACES))]            # the oldest sizes make room
            except (KeyError, RuntimeError, StopIteration):       # (another thread changed the dict meanwhile)
                pass
        spare = _WORKSPACES.setdefault(key, [])
        if len(spare) < 2:
            spare.append(work)


def _rowwise(fn, batched):
    """Call ``fn`` on ``(B, n)`` rows, or on the single ``(n,)`` vector of an unbatched problem."""
    return fn if batched else (lambda v: fn(v[0])[None])


def as_preconditioner(M, n, b):
    """``M`` (a callable or a :class:`LinearOperator`) for right-hand sides ``b`` of size ``n``, as an
    operator whose shape errors name the preconditioner."""
    if not isinstance(M, LinearOperator):
        check_callable(M, "preconditioner")
        M = LinearOperator(M, shape=(n, n))
    else:
        if M.n != n:
            raise ValueError(f"preconditioner must be an operator of shape ({n}, {n}) like A, got shape "
                             f"{M.shape}")
        if M.batch_size is not None and (b.ndim != 2 or b.shape[0] != M.batch_size):
            raise ValueError(f"preconditioner holds {M.batch_size} matrices: b must have shape "
                             f"({M.batch_size}, {n}), got {tuple(b.shape)}")
        M = copy.copy(M)
    M._matvec_name = "preconditioner"
    return M


_EPS = {np.dtype(t): float(np.finfo(t).eps) for t in (np.float32, np.float64)}    # (np.finfo: µs a call)


#: rows of b (and of a cycle's first A v) whose largest entry lies outside [2^-RHS_EXPONENT, 2^RHS_EXPONENT] are
#: rescaled (by powers of 2)
RHS_EXPONENT = 30


def _unit_scales(xp, largest):
    """Powers of 2 bringing each entry of ``largest`` (finite, >= 0) far from 1 to [1/2, 1) (1 for the others),
    or None when none is far."""
    _, exponent = xp.frexp(largest)
    far = (exponent > RHS_EXPONENT) | (exponent < -RHS_EXPONENT)
    if not bool(far.any()):
        return None
    return xp.ldexp(xp.ones((), dtype=largest.dtype), xp.where(far, -exponent, 0).astype(np.int32))


def _rhs_scales(xp, rhs):
    """Powers of 2 (B,) bringing each row of ``rhs`` whose largest entry is far from 1 to about 1 (1 for the
    others), or None when no row needs it: ||b||² of a float32 row of size 1e20 overflows (and of 1e-23
    underflows), which would make the test ||r|| ≤ rtol·||b|| pass at x = 0."""
    return _unit_scales(xp, xp.max(xp.abs(rhs), axis=1))


def _operator_scales(xp, w, active):
    """Powers of 2 (B,) for a cycle's operator, from its first output ``w = A v_0``: each active sample whose
    largest entry of ``w`` is far from 1 runs the cycle on ``σ_i A`` with that entry about 1 (1 for the others),
    so that ||A v||² neither overflows nor underflows; None when no sample needs it. Exact, σ_i being a power of
    2: the cycle's update is σ_i times the one it finds for ``σ_i A``."""
    largest = xp.max(xp.abs(w), axis=1)
    keep = active & xp.isfinite(largest)                  # (a non-finite output keeps its code: DIVERGED)
    return _unit_scales(xp, xp.where(keep, largest, xp.zeros((), dtype=largest.dtype)))


@dataclass(frozen=True)
class GMRES(LinearSolver):
    """Restarted, matrix-free GMRES(``restart``) for one system or a batch of independent systems.

    Args:
        rtol, atol: stop sample ``i`` when ``||b_i - A x_i|| <= max(atol, rtol * ||b_i||)``.
        restart: Krylov dimension per cycle (memory ``B * (restart + 1) * n``); capped at ``n``, where GMRES
            is exact in exact arithmetic.
        max_steps: cap on the total number of operator calls, counting the one true-residual evaluation that
            ends each cycle (and the one for ``x0``). None means ``10 * n`` (at least 2).

    Return codes per sample: SUCCESS; MAX_STEPS (budget spent); BREAKDOWN (the Krylov space became
    invariant on a singular restriction of A and the residual is above tolerance); STALLED (a whole cycle
    reduced the residual by less than a relative ``sqrt(eps)``); DIVERGED (the operator produced non-finite
    values; ``x`` keeps its last finite value; a right-hand side holding NaN or infinity gives DIVERGED and a NaN
    ``x`` for that sample alone; a non-finite row of ``x0`` starts from zero). On a singular ``A`` with ``b`` in its range GMRES may still
    succeed; from ``x0 = 0`` and a symmetric ``A`` the answer is then the minimum-norm solution.

    >>> import numpy as np
    >>> GMRES(restart=0)
    Traceback (most recent call last):
    ...
    ValueError: restart must be an integer >= 1, got 0
    """

    rtol: float = 1e-5
    atol: float = 0.0
    restart: int = 20
    max_steps: int | None = None

    def __post_init__(self):
        check_tolerance(self.rtol, "rtol")
        check_tolerance(self.atol, "atol")
        check_positive_int(self.restart, "restart")
        if self.max_steps is not None:
            check_positive_int(self.max_steps, "max_steps")

    def init(self, operator_or_matrix: Any) -> LinearOperator:
        """The operator (a dense array becomes ``LinearOperator.from_matrix``); GMRES keeps nothing else."""
        return as_operator(operator_or_matrix)

    def solve(self, A: Any, b: Any, *, transpose: bool = False, x0: Any = None,
              preconditioner: Callable | None = None) -> Solution:
        """Solve ``A x = b`` (or ``Aᵀ x = b``, which needs the operator's ``rmatvec``) for ``b`` of shape ``(n,)``
        or ``(B, n)``.

        Args:
            A: a :class:`LinearOperator`, or a dense ``(n, n)`` / ``(B, n, n)`` array.
            b: right-hand side(s); one system per row when 2-D.
            transpose: solve with the transposed operator.
            x0: start point (default zeros), shape of ``b``.
            preconditioner: a callable or :class:`LinearOperator` approximating ``A^{-1}`` (right
                preconditioning: GMRES solves ``A M u = b`` and returns ``x = x0 + M u``, so the residual
                it tests is the true one).

        Returns:
            :class:`~deqcore.results.Solution` with ``stats = {"num_steps": operator calls, "restarts": ...}``
            and ``residual`` the per-sample ``||b - A x||`` of the returned ``x``.
        """
        state = op = as_operator(A)
        if check_bool(transpose, "transpose"):
            op = op.T
        n = op.n
        xp = check_rhs(b, n, op.batch_size, finite=False)
        batched = b.ndim == 2
        dtype = b.dtype if op.dtype is None else np.result_type(b.dtype, op.dtype)
        rhs = b.reshape(-1, n).astype(dtype, copy=False)
        apply_A = _rowwise(op.matvec, batched)
        apply_M = None
        if preconditioner is not None:
            apply_M = _rowwise(as_preconditioner(preconditioner, n, b).matvec, batched)
        if x0 is not None:
            check_float_array(x0, "x0")
            if tuple(x0.shape) != tuple(b.shape):
                raise ValueError(f"x0 must have the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
            x0 = x0.reshape(rhs.shape)
            x0 = xp.where(nonfinite_rows(x0)[:, None], xp.zeros((), dtype=dtype), x0.astype(dtype, copy=False))
        bad = nonfinite_rows(rhs)
        any_bad = bool(bad.any())
        if any_bad:   # a non-finite sample is that sample's failure: solve the others, with zeros in its row
            rhs = xp.where(bad[:, None], xp.zeros((), dtype=dtype), rhs)
        max_steps = self.max_steps if self.max_steps is not None else max(10 * n, 2)
        scale = _rhs_scales(xp, rhs)
        tol = None
        if scale is not None:     # rows of b far from size 1, scaled by powers of 2 (exact) so ||b|| neither
            rhs = rhs * scale[:, None]         # overflows nor underflows: A x = b is solved as A (s x) = s b
            x0 = None if x0 is None else x0 * scale[:, None]
            tol = xp.maximum(self.atol * scale, self.rtol * row_norms(xp, rhs)).astype(dtype)
        x, codes, rnorm, stats = self._run(xp, apply_A, apply_M, rhs, x0, max_steps, min(self.restart, n), tol=tol)
        if scale is not None:
            x, rnorm = x / scale[:, None], rnorm / scale
        if any_bad:
            codes = xp.where(bad, int(ReturnCode.DIVERGED), codes)
            x = xp.where(bad[:, None], xp.asarray(np.nan, dtype=dtype), x)
            rnorm = xp.where(bad, xp.asarray(np.nan, dtype=rnorm.dtype), rnorm)
        return finish(x, codes, rnorm, stats, batched, b.shape, state=state)

    def _run(self, xp, apply_A, apply_M, rhs, x0, max_steps, restart, tol=None, shifted=False,
             inputs=None):
        """``(x, codes, residual norms, stats)`` for the rows of ``rhs`` (all finite); ``tol``: per-row absolute
        tolerances in place of ``max(atol, rtol·||rhs_i||)`` (for callers solving a correction equation);
        ``shifted``: the operator is ``v ↦ v − apply_A(v)`` (Arnoldi then runs on ``apply_A`` itself: see
        :mod:`~deqcore.linalg.gmres_kernels`; needs ``apply_M`` None); ``inputs``: a ``(B, n)`` array the
        compiled step (NumPy, no preconditioner) passes to ``apply_A`` in place of the basis vector ``V[:, j]``,
        with the running samples' rows set to it (the caller may fill the other rows: a solve riding along)."""
        if shifted:
            if apply_M is not None:
                raise ValueError("shifted=True takes no preconditioner")
            apply_B = apply_A
            apply_A = lambda v: v - apply_B(v)  # noqa: E731  (the true residuals)
        dtype = rhs.dtype
        eps = _EPS.get(dtype) or float(np.finfo(dtype).eps)
        precondition = apply_M
        bnorm = row_norms(xp, rhs)
        if tol is None:
            tol = xp.maximum(xp.asarray(self.atol, dtype=dtype), self.rtol * bnorm)
        steps = 0
        kernel = default_kernel("arnoldi_step", xp)     # (looked up once per namespace)
        end = getattr(kernel, "end", None)   # the compiled bookkeeping after a cycle (NumPy)
        if x0 is None:
            x = xp.zeros(rhs.shape, dtype=dtype)
            r = rhs.copy()
            rnorm = bnorm                  # (the same sums: r is rhs)
        else:
            x = xp.where((bnorm == 0)[:, None], xp.zeros((), dtype=dtype), x0)
            r = rhs - apply_A(x)
            steps += 1
            rnorm = row_norms(xp, r)
        done = rnorm <= tol
        codes = xp.where(done, int(ReturnCode.SUCCESS), int(ReturnCode.NOT_RUN))
        if end is not None and getattr(tol, "shape", None) != rhs.shape[:1]:
            tol = xp.broadcast_to(xp.asarray(tol, dtype=dtype), rhs.shape[:1])      # (one per sample)
        finished = bool(done.all())
        update_add = getattr(kernel, "update_add", None)       # (x + dx summed by the compiled update)
        cycles = 0
        while not finished:
            m = min(restart, max_steps - steps - 1)
            if m < 1:
                codes = xp.where(done, codes, int(ReturnCode.MAX_STEPS))
                break
            active = ~done
            dx, broke, used = self._cycle(xp, apply_B if shifted else apply_A, precondition, r, rnorm, active, tol,
                                          m, eps, shifted, kernel, inputs, x if update_add is not None else None)
            if update_add is not None and precondition is None and m <= MAX_RESTART:
                x_new = dx                   # (x + dx, summed by the compiled update)
            else:
                x_new = x + (dx if precondition is None else precondition(dx))
            r_new = rhs - apply_A(x_new)
            steps += used + 1
            cycles += 1
            new = row_norms(xp, r_new)
            if end is not None:
                finished = end(x, x_new, r, r_new, new, rnorm, tol, broke, done, codes, 1 - eps**0.5,
                               ReturnCode.SUCCESS, ReturnCode.BREAKDOWN, ReturnCode.STALLED, ReturnCode.DIVERGED)
                continue
            finite = xp.isfinite(new)
            conv = new <= tol
            stalled = ~conv & ~broke & ~(new < rnorm * (1 - eps**0.5))
            code = xp.where(broke, int(ReturnCode.BREAKDOWN), int(ReturnCode.STALLED))
            code = xp.where(conv, int(ReturnCode.SUCCESS), code)
            code = xp.where(finite, code, int(ReturnCode.DIVERGED))
            ended = active & (~finite | conv | broke | stalled)
            codes = xp.where(ended, code, codes)
            keep = active & finite
            x = xp.where(keep[:, None], x_new, x)
            r = xp.where(keep[:, None], r_new, r)
            rnorm = xp.where(keep, new, rnorm)
            done = done | ended
            finished = bool(done.all())
        return x, codes, rnorm, {"num_steps": steps, "restarts": max(cycles - 1, 0)}

    @staticmethod
    def _cycle(xp, apply_A, precondition, r, rnorm, active, tol, m, eps, shifted=False, kernel=None,
               inputs=None, x=None):
        """One Arnoldi cycle of at most ``m`` steps for the ``active`` samples (``precondition``: None or M;
        ``shifted``: the operator is I − ``apply_A``).

        Returns the update ``dx`` (before preconditioning; zero for inactive samples), a bool array of
        samples that broke down on a singular Hessenberg matrix, and the number of operator calls used.
        With ``x`` given (the compiled step, no preconditioner), ``x + dx`` in place of ``dx``.
        """
        B, n = r.shape
        dtype = r.dtype
        zero = xp.zeros((), dtype=dtype)
        # V: the basis; R: the Hessenberg matrix after the rotations (triangular); Q: the product of this cycle's
        # Givens rotations per sample (Q @ (beta e1) is the rotated rhs). Zeroed (Q: the identity) each cycle.
        if m > MAX_RESTART:
            arnoldi_step = arnoldi_step_reference
        else:
            arnoldi_step = get_kernel("arnoldi_step", xp) if kernel is None else kernel
        prepare = getattr(arnoldi_step, "prepare", None)
        work = _take_workspace(xp, B, n, m, dtype, clean=prepare is None, reset=getattr(arnoldi_step, "reset", None))
        V, R, Q = work[:3]
        if prepare is None or precondition is not None:
            inputs = None
        if prepare is not None:          # (k: usable Hessenberg columns per sample)
            beta, live, k, broke = arnoldi_step.start(V, r, rnorm, active, inputs)
        else:
            beta = xp.where(active, rnorm, zero)
            V[:, 0] = xp.where(active[:, None], r / xp.where(rnorm > 0, rnorm, 1)[:, None], zero)
            k = xp.zeros(B, dtype=np.int64)
            broke = xp.zeros(B, dtype=bool)
            live = active.copy()
        used = 0
        sigma = None                                      # the cycle's operator scales (None: all 1)
        tiny_factor = _BREAKDOWN_FACTOR * eps
        tol = xp.asarray(tol, dtype=dtype)
        tol = xp.broadcast_to(tol, (B,)).astype(dtype, copy=True) if tol.shape != (B,) else xp.ascontiguousarray(tol)
        if prepare is not None:
            # the compiled step with the cycle's arrays bound, returning the live count
            step = prepare(V, R, Q, beta, tol, k, live, broke, tiny_factor, shifted, inputs)
            for j in range(m):
                if inputs is not None:
                    w = apply_A(inputs)
                else:
                    w = apply_A(V[:, j] if precondition is None else precondition(V[:, j]))
                used += 1
                w, sigma = _scaled_output(xp, w, j, sigma, active, shifted)
                if not step(w, j):
                    break
        else:
            for j in range(m):
                w = apply_A(V[:, j] if precondition is None else precondition(V[:, j]))
                used += 1
                w, sigma = _scaled_output(xp, w, j, sigma, active, shifted)
                arnoldi_step(V, w, R, Q, beta, tol, k, live, broke, j, tiny_factor, shifted)
                if not bool(live.any()):
                    break
        # least squares per sample: the upper-triangular k_i x k_i system (gmres_least_squares)
        least_squares = getattr(arnoldi_step, "least_squares", None) or get_kernel("gmres_least_squares", xp)
        y = least_squares(R, Q, beta, k, used)
        if sigma is not None:                             # the update for A from the one for σ A
            y = y * sigma[:, None].astype(y.dtype, copy=False)
        if prepare is not None:                           # the basis vectors each sample wrote, no others
            if x is not None and precondition is None:
                dx = arnoldi_step.update_add(V, y, k, x)
            else:
                dx = arnoldi_step.update(V, y, k)
        else:
            dx = xp.matmul(y[:, None, :], V[:, :used])[:, 0]
        # the compiled step changes rows and columns <= j + 1 of Q at step j; the reference changes whole rows
        _give_back_workspace(xp, work, used + 1 if prepare is not None else m + 1)
        return dx, broke, used


def _scaled_output(xp, w, j, sigma, active, shifted):
    """``(σ w, σ)``: the operator output of step ``j`` for the cycle's scaled operator, the scales ``σ`` chosen at
    its first step (:func:`_operator_scales`; none for the shifted operator ``I − B``, whose identity part is not
    scaled). ``w`` itself is never written."""
    if j == 0 and not shifted:
        sigma = _operator_scales(xp, w, active)
    return (w if sigma is None else w * sigma[:, None]), sigma
