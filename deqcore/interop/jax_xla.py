"""deqcore's fixed-point solvers and implicit adjoint written in JAX: the whole solve inside XLA.

The engine behind ``dqj.fixed_point(..., engine="xla")`` (and the default where it applies). Each solve is one
``jax.lax.while_loop`` on one system (a flat vector of n elements); under ``jax.vmap`` XLA runs the mapped
systems side by side, each with its own test, step count and return code, a finished system frozen.

* :func:`solve_fixed_point`: Anderson acceleration or plain (damped) iteration with the host solvers'
  algorithm and convergence test: Anderson keeps a ring of the last ``history_size`` mapped iterates
  yᵢ + beta·fᵢ and residuals fᵢ, solves (H + λI) w = 1 for the residuals' Gram matrix H (λ = ridge·mean
  diagonal + a floor; in float64 when JAX has it), α = w/Σw (a plain step when that system fails) and steps to
  Σ αᵢ (yᵢ + beta·fᵢ). The test is the host driver's: max|f(z) − z| <= atol + rtol·min(max|z|, s0) with
  s0 = max(max|z0|, max|f(z0)|) fixed at the start; non-finite or runaway iterates (max|z| >= s0/√eps) and
  residuals 1e8 times the start's are DIVERGED, 'patience' steps without a lower residual STALLED, and the
  value returned is the iterate that passed the test (else the lowest-residual one).
* :func:`solve_linear` / :func:`linear_rows`: the adjoint (I − Jᵀ) λ = g or a tangent (I − J) ż = b, from one
  linearisation of f, to the host adjoint's test ‖g − (I − Jᵀ)λ‖₂ <= max(atol, rtol·‖g‖₂): by default plain
  iteration λ ← g + Jᵀλ while it contracts fast (one VJP a step; the host adjoint's rule) and Anderson on the
  correction of the systems that slowed; or Anderson / plain iteration alone, restarted GMRES
  (``jax.scipy.sparse.linalg.gmres``), or a dense solve (one batched application on the identity).

Under ``jax.vmap`` the adapter's loops run as one row-batched loop (``jax.custom_batching.custom_vmap``): the
mapped systems are rows of (B, n) arrays, f is vmapped over them, and the loop's history rings are never
selected per system (as vmap's generic rule for a while loop would do, a pass over the rings every step).

Return codes are deqcore's (:class:`deqcore.ReturnCode`) as int32 scalars per system.

>>> import jax.numpy as jnp
>>> out = solve_fixed_point(lambda z: 0.5 * jnp.cos(z), jnp.zeros(3), anderson(), atol=1e-10, rtol=0.0,
...                         max_steps=50)
>>> int(out.code), bool(jnp.abs(out.value - 0.5 * jnp.cos(out.value)).max() <= 1e-10)
(0, True)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

import jax
import jax.numpy as jnp

from ..results import ReturnCode

__all__ = ["Method", "anderson", "iteration", "Solved", "solve_fixed_point", "solve_linear", "dense_solve",
           "gmres_solve"]

SUCCESS, MAX_STEPS, DIVERGED, STALLED = (int(c) for c in (ReturnCode.SUCCESS, ReturnCode.MAX_STEPS,
                                                           ReturnCode.DIVERGED, ReturnCode.STALLED))
#: the host driver's divergence factor on the residual and its patience rule (deqcore.root.driver)
DIVERGENCE_FACTOR = 1e8
PATIENCE_CAP = 1000


@dataclass(frozen=True)
class Method:
    """One iteration rule: ``kind`` "anderson" (``history_size``, ``beta``, ``ridge``) or "iteration"
    (``damping``)."""

    kind: str
    history_size: int = 10
    beta: float = 1.0
    ridge: float = 1e-8
    damping: float = 1.0


def anderson(history_size: int = 10, beta: float = 1.0, ridge: float = 1e-8) -> Method:
    return Method("anderson", history_size=history_size, beta=beta, ridge=ridge)


def iteration(damping: float = 1.0) -> Method:
    return Method("iteration", damping=damping)


class Solved(NamedTuple):
    """A solve's outcome for one system (vmapped: one of each per system)."""

    value: Any          # the accepted (or best) iterate, shaped like the start point
    code: Any           # int32 ReturnCode
    num_steps: Any      # int32: map evaluations after the start point's
    residual: Any       # the test's norm of the residual at ``value``


def _wide(dtype):
    """float64 when JAX has it (x64 enabled), else ``dtype``: the small systems' and thresholds' precision."""
    return jnp.promote_types(dtype, jax.dtypes.canonicalize_dtype(jnp.float64))


def _max_abs(a):
    """max|a| per row of a (B, n) array, NaN as +inf (as the host driver's row norms)."""
    m = jnp.max(jnp.abs(a), axis=1)
    return jnp.where(jnp.isnan(m), jnp.inf, m)


def _l2(a):
    """‖a‖₂ per row of a (B, n) array, NaN as +inf."""
    n = jnp.sqrt(jnp.sum(a * a, axis=1))
    return jnp.where(jnp.isnan(n), jnp.inf, n)


class _Ring(NamedTuple):
    G: Any        # (B, m, n) mapped iterates y + beta·f
    F: Any        # (B, m, n) residuals
    H: Any        # (B, m, m) their Gram matrices (used block; the rest zero)


def _small_solve(A, rhs):
    """x with A x = rhs for (B, m, m) symmetric positive definite systems: Gauss–Jordan without pivoting, one
    small loop over the m columns (a fused pass over B·m·m numbers each, no library call per system)."""
    m = A.shape[-1]
    rows = jnp.arange(m)

    def eliminate(j, M):
        row = jax.lax.dynamic_index_in_dim(M, j, axis=1, keepdims=False)               # (B, m + 1)
        pivot = row / jax.lax.dynamic_index_in_dim(row, j, axis=1, keepdims=True)
        column = jax.lax.dynamic_index_in_dim(M, j, axis=2, keepdims=True)              # (B, m, 1)
        return jnp.where((rows == j)[None, :, None], pivot[:, None, :], M - column * pivot[:, None, :])

    M = jax.lax.fori_loop(0, m, eliminate, jnp.concatenate([A, rhs[:, :, None]], axis=2))
    return M[:, :, m]


def _anderson_weights(H, used, slot, ridge, floor, wide):
    """α (B, m) with Σα = 1 minimising ‖Σ αᵢ fᵢ‖ (regularised) per row, or e_slot where the small system
    fails (non-finite or zero sum). ``used``: the slots filled so far (the same for every row)."""
    m = H.shape[-1]
    eye = jnp.eye(m, dtype=bool)
    Hc = jnp.where(used[:, None] & used[None, :], H.astype(wide), 0)
    count = jnp.sum(used).astype(wide)
    lam = ridge * jnp.trace(Hc, axis1=1, axis2=2) / count + floor
    A = Hc + jnp.where(eye & used[None, :], lam[:, None, None], jnp.where(eye, 1, 0).astype(wide))
    w = _small_solve(A, jnp.broadcast_to(used.astype(wide), Hc.shape[:2]))
    total = jnp.sum(w, axis=1, keepdims=True)
    ok = jnp.isfinite(total) & (total != 0)
    alpha = w / jnp.where(ok, total, 1)
    good = ok & jnp.all(jnp.isfinite(alpha), axis=1, keepdims=True)
    return jnp.where(good, alpha, jax.nn.one_hot(slot, m, dtype=wide))


def _step_fn(method, shape, dtype):
    """``(init(y0) -> aux, step(y, f, aux, k) -> (y_new, aux))`` for ``method`` on (B, n) rows."""
    if method.kind == "iteration":
        damping = method.damping

        def step(y, f, aux, k):
            return (y + f if damping == 1.0 else y + damping * f), aux
        return (lambda y0: ()), step

    (batch, n), m, beta = shape, method.history_size, method.beta
    finfo = np.finfo(dtype)
    ridge, floor = max(method.ridge, 10 * float(finfo.eps)), float(np.sqrt(finfo.tiny))
    wide = _wide(dtype)
    zero = jnp.int32(0)

    def init(y0):            # full_like: typed like y0 (inside shard_map, varying over the same mesh axes)
        return _Ring(jax.lax.full_like(y0, 0, dtype, (batch, m, n)), jax.lax.full_like(y0, 0, dtype, (batch, m, n)),
                     jax.lax.full_like(y0, 0, dtype, (batch, m, m)))

    def step(y, f, ring, k):
        # the rings are read before they are written, and only the carry reads the written ones: XLA then
        # updates them in place (reading the updated rings makes it copy them whole every step)
        slot = k % m
        used = jnp.arange(m) < jnp.minimum(k + 1, m)
        g = y + beta * f
        column = jnp.einsum("bmn,bn->bm", ring.F, f)
        column = jnp.where(jnp.arange(m) == slot, jnp.sum(f * f, axis=1, keepdims=True), column)
        column = jnp.where(used, column, 0)
        H = jax.lax.dynamic_update_slice(ring.H, column[:, None, :], (zero, slot, zero))
        H = jax.lax.dynamic_update_slice(H, column[:, :, None], (zero, zero, slot))
        alpha = _anderson_weights(H, used, slot, ridge, floor, wide).astype(dtype)
        old = jax.lax.dynamic_index_in_dim(ring.G, slot, axis=1, keepdims=False)
        alpha_slot = jax.lax.dynamic_index_in_dim(alpha, slot, axis=1, keepdims=True)
        y_new = jnp.einsum("bm,bmn->bn", alpha, ring.G) + alpha_slot * (g - old)
        # a zero that depends on y_new: the writes then follow every read of the old rings in XLA's schedule
        # (a row whose y_new is not finite is finished by the next test; its own rings alone take the NaN)
        tie = 0 * jnp.sum(y_new, axis=1, keepdims=True)
        G = jax.lax.dynamic_update_slice(ring.G, (g + tie)[:, None, :], (zero, slot, zero))
        F = jax.lax.dynamic_update_slice(ring.F, (f + tie)[:, None, :], (zero, slot, zero))
        return y_new, _Ring(G, F, H)

    return init, step


class _Test(NamedTuple):
    """The per-row test: accept when ``norm(f) <= tol + rtol·min(max|y|, cap)`` and max|y| < y_limit."""

    norm: Callable
    tol: Any
    rtol: float
    cap: Any
    y_limit: Any


def _iterate(G, y0, f0, method, test, max_steps, patience, slow=None):
    """The host driver's loop on (B, n) rows, each its own system: ``G`` the map on rows, ``f0 = G(y0) − y0``.
    Finished rows are frozen (their iterate, residual and result no longer change). Returns :class:`Solved`
    with per-row arrays."""
    dtype = y0.dtype
    wide = _wide(dtype)
    init, step = _step_fn(method, y0.shape, dtype)

    def book(f, y, best_y, best_res, since, code, done, limit, k=None):
        res = test.norm(f)
        # ``slow = (first, later)``: a row whose residual shrank by less than this factor in its first step or a
        # later one stops there (STALLED), for a faster method to take over
        slowed = False if (slow is None or k is None) else (res > jnp.where(k == 0, slow[0], slow[1]) * best_res)
        y_norm = _max_abs(y)
        bounded = y_norm < test.y_limit
        threshold = test.tol.astype(wide) + test.rtol * jnp.minimum(y_norm, test.cap).astype(wide)
        converged = bounded & (res.astype(wide) <= threshold)
        improved = ~done & bounded & ((res < best_res) | converged)
        best_y = jnp.where(improved[:, None], y, best_y)
        best_res = jnp.where(improved, res, best_res)
        since = jnp.where(done, since, jnp.where(improved, 0, since + 1))
        exploded = ~bounded | ~(res < limit)
        stalled = (since >= patience) | slowed
        finished = ~done & (converged | exploded | stalled)
        outcome = jnp.where(converged, SUCCESS, jnp.where(exploded, DIVERGED, STALLED)).astype(jnp.int32)
        return best_y, best_res, since, jnp.where(finished, outcome, code), done | finished

    batch = y0.shape[0]
    inf = jax.lax.full_like(y0, jnp.inf, dtype, (batch,))
    ints = jax.lax.full_like(y0, 0, jnp.int32, (batch,))
    best_y, best_res, since, code, done = book(f0, y0, y0, inf, ints, ints + MAX_STEPS,
                                               jax.lax.full_like(y0, False, bool, (batch,)), inf)
    limit = (DIVERGENCE_FACTOR * jnp.maximum(best_res, jnp.asarray(1e-300, dtype))).astype(dtype)

    def cond(carry):
        k, done = carry[0], carry[8]
        return jnp.any(~done) & (k < max_steps)

    def body(carry):
        k, y, f, aux, best_y, best_res, since, code, done, steps = carry
        y_new, aux = step(y, f, aux, k)
        y = jnp.where(done[:, None], y, y_new)
        f = jnp.where(done[:, None], f, G(y) - y)
        steps = jnp.where(done, steps, k + 1)
        best_y, best_res, since, code, done = book(f, y, best_y, best_res, since, code, done, limit, k)
        return k + 1, y, f, aux, best_y, best_res, since, code, done, steps

    carry = (jnp.int32(0), y0, f0, init(y0), best_y, best_res, since, code, done, ints)
    out = jax.lax.while_loop(cond, body, carry)
    best_y, best_res, code, done, steps = out[4], out[5], out[7], out[8], out[9]
    return Solved(best_y, jnp.where(done, code, MAX_STEPS).astype(jnp.int32), steps, best_res)


def default_patience(max_steps: int) -> int:
    return min(max(25, max_steps // 4), PATIENCE_CAP)


def solve_rows(G: Callable, y0: Any, method: Method, *, atol: float, rtol: float, max_steps: int,
               patience: int | None = None) -> Solved:
    """y with y = G(y) for every row of y0 (B, n), each row its own system, with the host driver's test."""
    dtype = y0.dtype
    f0 = G(y0) - y0
    s0 = jnp.maximum(jnp.max(jnp.abs(y0), axis=1), jnp.max(jnp.abs(y0 + f0), axis=1))
    s0 = jnp.where(jnp.isfinite(s0), s0, 0).astype(dtype)
    eps = float(np.finfo(dtype).eps)
    y_limit = jnp.where(s0 > 0, s0 / np.sqrt(eps), jnp.inf).astype(dtype)
    test = _Test(_max_abs, jnp.full(y0.shape[0], atol, dtype), float(rtol), s0, y_limit)
    return _iterate(G, y0, f0, method, test, max_steps, default_patience(max_steps) if patience is None else patience)


def _one_row(fn, shape, dtype):
    return lambda y: jnp.reshape(fn(y.reshape(shape)), (1, -1)).astype(dtype)


def _squeeze(out, shape):
    return Solved(out.value.reshape(shape), out.code[0], out.num_steps[0], out.residual[0])


def solve_fixed_point(fn: Callable, z0: Any, method: Method, *, atol: float, rtol: float, max_steps: int,
                      patience: int | None = None) -> Solved:
    """z with z = fn(z) for one system (any shape), by ``method``, with the host driver's test."""
    out = solve_rows(_one_row(fn, z0.shape, z0.dtype), z0.reshape(1, -1), method, atol=atol, rtol=rtol,
                     max_steps=max_steps, patience=patience)
    return _squeeze(out, z0.shape)


def linear_rows(apply: Callable, b: Any, method: Method | None, *, atol: float, rtol: float,
                max_steps: int) -> Solved:
    """x with x − apply(x) = b for every row of b (B, n) (apply maps rows to rows, one system per row), to
    ‖b − (I − M)x‖₂ <= max(atol, rtol·‖b‖₂) per row, iterating x ← b + apply(x)-type steps by ``method`` from
    x0 = 0 (whose residual is b itself: no application spent on it). ``method=None``: plain iteration while a
    row's residual shrinks by half in its first step and by 0.9 a step later (the host adjoint's rule), then
    Anderson on the rows that slowed, for their correction (skipped when no row slowed). A row with a
    non-finite b is DIVERGED with a NaN x."""
    dtype = b.dtype
    bad = ~jnp.all(jnp.isfinite(b), axis=1)
    b = jnp.where(bad[:, None], 0, b)
    tol = jnp.maximum(jnp.asarray(atol, dtype), (rtol * _l2(b)).astype(dtype))
    if method is not None:
        out = _linear_iterate(apply, b, jnp.zeros_like(b), b, method, tol, max_steps)
    else:
        out = _linear_iterate(apply, b, jnp.zeros_like(b), b, iteration(), tol, max_steps,
                              slow=(RICHARDSON_RATE, RICHARDSON_KEEP_RATE))

        def accelerate(out):
            # the slowed rows restart from their best iterate x1: Anderson on the correction δ,
            # (I − M) δ = r = b + M x1 − x1 (one application), to the same absolute tolerance
            x1 = out.value
            r = b + apply(x1) - x1
            left = jnp.maximum(max_steps - out.num_steps - 1, 1)
            more = _linear_iterate(apply, r, jnp.zeros_like(r), r, anderson(), tol, jnp.max(left))
            redo = out.code != SUCCESS
            return Solved(jnp.where(redo[:, None], x1 + more.value, x1), jnp.where(redo, more.code, out.code),
                          jnp.where(redo, out.num_steps + 1 + more.num_steps, out.num_steps),
                          jnp.where(redo, more.residual, out.residual))

        out = jax.lax.cond(jnp.any((out.code != SUCCESS) & ~bad), accelerate, lambda out: out, out)
    return Solved(jnp.where(bad[:, None], jnp.nan, out.value), jnp.where(bad, DIVERGED, out.code),
                  out.num_steps, jnp.where(bad, jnp.nan, out.residual))


#: the plain adjoint iteration's rates (deqcore.adjoint.steady_state): a row keeps iterating while its residual
#: shrinks by this factor in its first step, and by the second factor in each later one
RICHARDSON_RATE, RICHARDSON_KEEP_RATE = 0.5, 0.9


def _linear_iterate(apply, b, x0, r0, method, tol, max_steps, slow=None):
    batch, dtype = b.shape[0], b.dtype
    test = _Test(_l2, tol, 0.0, jnp.zeros(batch, dtype), jnp.full(batch, jnp.inf, dtype))
    return _iterate(lambda x: b + apply(x), x0, r0, method, test, max_steps, max_steps + 1, slow)


def solve_linear(apply: Callable, rhs: Any, method: Method, *, atol: float, rtol: float,
                 max_steps: int) -> Solved:
    """x with x − apply(x) = rhs for one system (apply: Jᵀ for the adjoint, J for a tangent), by
    :func:`linear_rows`'s iteration and test."""
    out = linear_rows(_one_row(apply, rhs.shape, rhs.dtype), rhs.reshape(1, -1), method, atol=atol, rtol=rtol,
                      max_steps=max_steps)
    return _squeeze(out, rhs.shape)


def dense_solve(apply: Callable, rhs: Any) -> Solved:
    """x with x − apply(x) = rhs by a dense LU solve of I − M, M formed by one batched application of ``apply``
    on the identity (for small states: n applications' work)."""
    shape, dtype = rhs.shape, rhs.dtype
    n = int(np.prod(shape))
    eye = jnp.eye(n, dtype=dtype)
    columns = jax.vmap(lambda e: jnp.ravel(apply(e.reshape(shape))).astype(dtype))(eye)     # row i: M e_i
    x = jnp.linalg.solve(eye - columns.T, jnp.ravel(rhs))
    ok = jnp.all(jnp.isfinite(x))
    residual = _l2((jnp.ravel(rhs) - x + jnp.ravel(apply(x.reshape(shape))))[None])[0]
    return Solved(x.reshape(shape), jnp.where(ok, SUCCESS, DIVERGED).astype(jnp.int32), jnp.int32(1), residual)


def gmres_solve(apply: Callable, rhs: Any, *, atol: float, rtol: float, restart: int, max_steps: int) -> Solved:
    """x with x − apply(x) = rhs by ``jax.scipy.sparse.linalg.gmres`` (restarted; about ``max_steps``
    applications), its test ‖rhs − (I − M)x‖₂ <= max(atol, rtol·‖rhs‖₂) checked on the true residual after."""
    from jax.scipy.sparse.linalg import gmres

    shape, dtype = rhs.shape, rhs.dtype
    b = jnp.ravel(rhs)
    n = b.shape[0]
    restart = max(1, min(restart, n))

    def matvec(x):
        return x - jnp.ravel(apply(x.reshape(shape))).astype(dtype)

    x, _ = gmres(matvec, b, tol=rtol, atol=atol, restart=restart, maxiter=max(1, -(-max_steps // restart)),
                 solve_method="batched")
    residual = _l2((b - matvec(x))[None])[0]
    tol = jnp.maximum(jnp.asarray(atol, dtype), (rtol * _l2(b[None])[0]).astype(dtype))
    code = jnp.where(jnp.all(jnp.isfinite(x)), jnp.where(residual <= tol, SUCCESS, MAX_STEPS), DIVERGED)
    return Solved(x.reshape(shape), code.astype(jnp.int32), jnp.int32(max_steps), residual)


# ---- the adapter's engine: deqcore's solver and adjoint objects mapped onto the loops above ---------------

@dataclass(frozen=True)
class LinearSpec:
    """How a linear (adjoint or tangent) solve runs: ``kind`` "dense", "iterate" (``method``), "gmres"
    (``restart``), "onestep" (x = rhs) or "default" (plain iteration, then Anderson where it slows: see
    :func:`linear_rows`), with the test's ``atol``/``rtol`` and the budget ``max_steps``."""

    kind: str
    method: Method | None = None
    atol: float = 0.0
    rtol: float = 1e-5
    max_steps: int = 100
    restart: int = 30

    def by_rows(self, n: int) -> bool:
        """Whether systems of n elements are solved by the row-batched iteration (:func:`linear_rows`) —
        else one system at a time (vmapped when batched)."""
        return self.kind in ("iterate", "default")

    def _rtol(self, dtype):
        return max(self.rtol, 4 * float(np.finfo(dtype).eps))

    def solve(self, apply, rhs) -> Solved:
        """One system: x with x − apply(x) = rhs."""
        n = int(np.prod(rhs.shape))
        if self.kind == "onestep":
            return Solved(rhs, jnp.int32(SUCCESS), jnp.int32(0), jnp.asarray(0, rhs.dtype))
        if self.by_rows(n):
            return solve_linear(apply, rhs, self.method, atol=self.atol, rtol=self._rtol(rhs.dtype),
                                max_steps=self.max_steps)
        if self.kind == "gmres":                      # max_steps 0: GMRES's own default, 10 n
            return gmres_solve(apply, rhs, atol=self.atol, rtol=self._rtol(rhs.dtype), restart=self.restart,
                               max_steps=self.max_steps or max(10 * n, 2))
        return dense_solve(apply, rhs)

    def solve_rows(self, apply_rows, b) -> Solved:
        """Every row of b (B, n) its own system (only where :meth:`by_rows`)."""
        return linear_rows(apply_rows, b, self.method, atol=self.atol, rtol=self._rtol(b.dtype),
                           max_steps=self.max_steps)


def forward_method(solver) -> Method | None:
    """The XLA version of a deqcore fixed-point solver, or None where there is none."""
    from ..root import Anderson, FixedPointIteration

    if type(solver) is Anderson:
        return anderson(solver.history_size, solver.beta, solver.ridge)
    if type(solver) is FixedPointIteration:
        return iteration(solver.damping)
    return None


def linear_spec(adjoint) -> LinearSpec | None:
    """The XLA version of a deqcore adjoint (its tolerances already filled in from the forward solve), or None
    where there is none."""
    from ..adjoint.steady_state import (CHEAP_GMRES, FALLBACK_MAX_STEPS, FALLBACK_RTOL,
                                        OneStepGradient, SteadyStateAdjoint)
    from ..linalg import GMRES, LU

    if isinstance(adjoint, OneStepGradient):
        return LinearSpec("onestep")
    if not isinstance(adjoint, SteadyStateAdjoint):
        return None
    solver = adjoint.linear_solver
    cheap = adjoint.accuracy == "cheap"
    atol = adjoint.atol if adjoint.atol is not None else (1e-3 if cheap else 0.0)
    rtol = adjoint.rtol if adjoint.rtol is not None else (1e-3 if cheap else FALLBACK_RTOL)
    max_steps = adjoint.max_steps if adjoint.max_steps is not None else (10 if cheap else FALLBACK_MAX_STEPS)
    if solver is None and cheap:
        solver = CHEAP_GMRES
    if solver is None:
        return LinearSpec("default", None, atol, rtol, max_steps)
    if isinstance(solver, LU):
        return LinearSpec("dense")
    if isinstance(solver, GMRES):
        return LinearSpec("gmres", None, solver.atol, solver.rtol, solver.max_steps or 0, restart=solver.restart)
    method = forward_method(solver)
    if method is None:
        return None
    return LinearSpec("iterate", method, atol, rtol, max_steps)


@dataclass(frozen=True)
class EngineConfig:
    """What one ``fixed_point`` call on the XLA engine needs (hashable: compiled functions are cached on it)."""

    method: Method
    adjoint: LinearSpec
    atol: float
    rtol: float
    max_steps: int
    throw: bool
    warn: bool = True       # with throw False: warn once per call site on failure (False: codes returned)


FORWARD = "the forward solve of deqcore.interop.jax.fixed_point"
ADJOINT = "the adjoint solve of deqcore.interop.jax.fixed_point"
_ADVICE = {FORWARD: "The best iterate is returned and its gradient is not the implicit gradient: raise "
                    "max_steps or loosen atol/rtol",
           ADJOINT: "Their gradients are not the implicit gradient: raise the adjoint's max_steps or the forward "
                    "solve's accuracy, or pass linear_solver=dq.LU()"}


def _report(what, throw, codes):
    """Host side of :func:`checked`: raise ``SolveError`` (``throw``) or warn once per call site on failed codes;
    returns zeros shaped like ``codes``."""
    from ..adjoint._warn import warn_failed
    from ..results import Solution, SolveError
    from ._common import raise_from_callback

    codes = np.asarray(codes)
    flat = codes.reshape(-1)
    if np.any(flat != SUCCESS):
        sol = Solution(value=None, result=flat if flat.size > 1 else ReturnCode(int(flat[0])),
                       batched=flat.size > 1)
        if throw:
            raise_from_callback(SolveError(f"deqcore.interop.jax.fixed_point: {sol.failure_message()}", sol))
        warn_failed(what, flat, _ADVICE[what])
    return np.zeros(codes.shape, np.int32)


def _varying_axes(x):
    """The manual mesh axes ``x`` varies over inside ``shard_map`` (empty outside it)."""
    kind = getattr(jax.typeof(x), "manual_axis_type", None)
    if kind is not None:
        return frozenset(kind.varying)
    return frozenset(getattr(jax.typeof(x), "vma", ()))


def _varying_like(x, *like):
    """``x`` marked as varying over the mesh axes ``like`` varies over (a host callback's result carries no
    such mark inside ``shard_map``, and the pullback of f needs its cotangent typed like f's output)."""
    wanted = frozenset().union(*(_varying_axes(y) for y in like if hasattr(y, "dtype")))
    missing = tuple(sorted(wanted - _varying_axes(x)))
    if not missing:
        return x
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, missing, to="varying")
    return jax.lax.pvary(x, missing)  # pragma: no cover - older JAX


def checked(x, code, what, throw):
    """``x``, after the return ``code`` was checked: a failure raises ``dq.SolveError`` (``throw``; JAX re-raises
    it as a ``JaxRuntimeError``, or a ``ValueError`` once compiled, carrying its message) or warns once per call
    site. Only a failure calls back to the host (a ``lax.cond`` on "all codes SUCCESS"), and under ``jax.vmap``
    the whole batch's codes are checked at once (one callback, which sees every code). The check's (zero) result
    is added to x so XLA keeps it."""
    return x + _check(what, throw)(code).astype(x.dtype)


@functools.lru_cache(maxsize=8)
def _check(what, throw):
    """``code -> zeros like code``, with the host report on failure, batched by ``custom_vmap`` as one check."""

    def check_all(codes):
        def report(codes):
            shape = jax.ShapeDtypeStruct(codes.shape, jnp.int32)
            return _varying_like(jax.pure_callback(functools.partial(_report, what, throw), shape, codes,
                                                   vmap_method="expand_dims"), codes)

        return jax.lax.cond(jnp.all(codes == SUCCESS), jnp.zeros_like, report, codes)

    @jax.custom_batching.custom_vmap
    def check(code):
        return check_all(code)

    @check.def_vmap
    def check_batched(axis_size, in_batched, code):
        return check_all(code) if in_batched[0] else check(code), in_batched[0]

    return check


def _batched_inputs(axis_size, arrays, batched, args_batched):
    """In a ``custom_vmap`` rule: ``arrays`` with the batch on axis 0 (broadcast where not ``batched``), and the
    ``in_axes`` of the arguments for ``jax.vmap`` (0 or None per leaf) from their flags ``args_batched``."""
    arrays = tuple(a if b else jnp.broadcast_to(a, (axis_size,) + a.shape) for a, b in zip(arrays, batched))
    axes = jax.tree_util.tree_map(lambda b: 0 if b else None, args_batched)
    return arrays, axes


def _all_batched(out):
    return jax.tree_util.tree_map(lambda _: True, out)


@functools.lru_cache(maxsize=64)
def forward_run(f: Callable, config: "EngineConfig") -> Callable:
    """``run(z0, args) -> Solved``: the forward solve of one system; under ``jax.vmap`` (a ``custom_vmap``
    rule) one row-batched loop over the mapped systems, f vmapped over them with shared arguments unbatched.
    The loop never selects its history rings per system (as vmap's generic rule for a while loop would)."""
    options = dict(atol=config.atol, rtol=config.rtol, max_steps=config.max_steps)

    @jax.custom_batching.custom_vmap
    def run(z0, args):
        return solve_fixed_point(lambda z: f(z, args), z0, config.method, **options)

    @run.def_vmap
    def run_batched(axis_size, in_batched, z0, args):
        (z0,), axes = _batched_inputs(axis_size, (z0,), in_batched[:1], in_batched[1])
        shape, dtype = z0.shape, z0.dtype
        fb = jax.vmap(f, in_axes=(0, axes))

        def G(y):
            return fb(y.reshape(shape), args).reshape(axis_size, -1).astype(dtype)

        out = solve_rows(G, z0.reshape(axis_size, -1), config.method, **options)
        out = out._replace(value=out.value.reshape(shape))
        return out, _all_batched(out)

    return run


@functools.lru_cache(maxsize=64)
def linear_run(f: Callable, spec: LinearSpec, transpose: bool) -> Callable:
    """``run(z, args, rhs) -> Solved``: x with (I − M) x = rhs, M = ∂f/∂zᵀ at z (``transpose``: the adjoint;
    f's VJP linearised once) or ∂f/∂z (a tangent; f linearised once), by ``spec``; under ``jax.vmap`` one
    row-batched loop where the spec iterates (else the systems one by one, vmapped)."""

    def linearised(fz, z):
        if transpose:
            pullback = jax.vjp(fz, z)[1]
            return lambda v: pullback(v)[0]
        return jax.linearize(fz, z)[1]

    def one(z, args, rhs):
        return spec.solve(linearised(lambda zz: f(zz, args), z), rhs)

    @jax.custom_batching.custom_vmap
    def run(z, args, rhs):
        return one(z, args, rhs)

    @run.def_vmap
    def run_batched(axis_size, in_batched, z, args, rhs):
        (z, rhs), axes = _batched_inputs(axis_size, (z, rhs), (in_batched[0], in_batched[2]), in_batched[1])
        if not spec.by_rows(int(np.prod(z.shape[1:]))):
            out = jax.vmap(one, in_axes=(0, axes, 0))(z, args, rhs)
            return out, _all_batched(out)
        shape = z.shape
        apply = linearised(lambda zz: jax.vmap(f, in_axes=(0, axes))(zz, args), z)

        def apply_rows(v):
            return apply(v.reshape(shape)).reshape(axis_size, -1).astype(rhs.dtype)

        out = spec.solve_rows(apply_rows, rhs.reshape(axis_size, -1))
        out = out._replace(value=out.value.reshape(shape))
        return out, _all_batched(out)

    return run


_CACHE: dict = {}


def implicit_fixed_point(f: Callable, config: EngineConfig) -> Callable:
    """``solve(z0, args) -> Solved`` with z* differentiable (jvp, grad, vmap, jit) through the implicit
    function theorem: the tangent of z* solves (I − ∂f/∂z) ż = ∂f/∂args·ȧrgs through
    ``jax.lax.custom_linear_solve``, whose transpose solves the adjoint (I − ∂f/∂zᵀ) λ = g with f's VJP
    linearised once at z*, all inside XLA. Cached per (f, config)."""
    key = (f, config)
    if key in _CACHE:
        return _CACHE[key]
    run = forward_run(f, config)

    def forward(z0, args):
        out = run(z0, args)
        if not (config.throw or config.warn):
            return out
        return out._replace(value=checked(out.value, out.code, FORWARD, config.throw))

    def as_floats(out):
        # the codes and counts cross the custom_jvp as floats (exact for these small integers): their zero
        # tangents are then ordinary arrays, typed like them (inside shard_map too, where float0 is not)
        return out._replace(code=out.code.astype(out.residual.dtype),
                            num_steps=out.num_steps.astype(out.residual.dtype))

    @jax.custom_jvp
    def solve_floats(z0, args):
        return as_floats(forward(z0, args))

    def solve_jvp(primals, tangents):
        z0, args = primals
        out = as_floats(forward(z0, args))
        z = out.value
        zero_tangents = (jnp.zeros_like(out.code), jnp.zeros_like(out.num_steps), jnp.zeros_like(out.residual))
        b = _args_tangent(f, z, args, tangents[1])
        if b is None:
            return out, Solved(jnp.zeros_like(z), *zero_tangents)
        if config.adjoint.kind == "onestep":
            return out, Solved(b, *zero_tangents)

        def matvec(v):                                   # only traced (for its transpose), never run
            return v - jax.jvp(lambda zz: f(zz, args), (z,), (v,))[1]

        def tangent_solve(_, rhs):
            return linear_run(f, config.adjoint, False)(z, args, rhs).value

        def adjoint_solve(_, g):
            lam = linear_run(f, config.adjoint, True)(z, args, g)
            return checked(lam.value, lam.code, ADJOINT, False)

        dz = jax.lax.custom_linear_solve(matvec, b, solve=tangent_solve, transpose_solve=adjoint_solve)
        return out, Solved(dz, *zero_tangents)

    solve_floats.defjvp(solve_jvp, symbolic_zeros=True)

    def solve(z0, args):
        out = solve_floats(z0, args)
        return out._replace(code=out.code.astype(jnp.int32), num_steps=out.num_steps.astype(jnp.int32))

    if len(_CACHE) > 64:
        _CACHE.clear()
    _CACHE[key] = solve
    return solve


def _args_tangent(f, z, args, dargs):
    """∂f/∂args · ȧrgs at z, over the leaves whose tangent is not a symbolic zero (None when none is)."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    tangents = treedef.flatten_up_to(dargs)
    live = [i for i, t in enumerate(tangents) if not isinstance(t, jax.custom_derivatives.SymbolicZero)]
    if not live:
        return None

    def f_of_live(*values):
        full = list(leaves)
        for i, v in zip(live, values):
            full[i] = v
        return f(z, jax.tree_util.tree_unflatten(treedef, full))

    return jax.jvp(f_of_live, tuple(leaves[i] for i in live), tuple(tangents[i] for i in live))[1]
