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
* :func:`solve_linear`: the adjoint (I − Jᵀ) λ = g or a tangent (I − J) ż = b, from one linearisation of f:
  Anderson or plain iteration on λ = g + Jᵀλ (test ‖g − (I − Jᵀ)λ‖₂ <= max(atol, rtol·‖g‖₂), the host
  adjoint's), restarted GMRES, or a dense solve (one batched application on the identity; small states).

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
    """max|a| with NaN as +inf (as the host driver's row norms)."""
    m = jnp.max(jnp.abs(a))
    return jnp.where(jnp.isnan(m), jnp.inf, m)


def _l2(a):
    n = jnp.sqrt(jnp.sum(a * a))
    return jnp.where(jnp.isnan(n), jnp.inf, n)


class _Ring(NamedTuple):
    G: Any        # (m, n) mapped iterates y + beta·f
    F: Any        # (m, n) residuals
    H: Any        # (m, m) their Gram matrix (used block only; the rest zero)


def _anderson_weights(H, used, slot, ridge, floor, wide):
    """α with Σα = 1 minimising ‖Σ αᵢ fᵢ‖ (regularised), or e_slot where the small system fails."""
    m = H.shape[0]
    mask = used[:, None] & used[None, :]
    Hc = jnp.where(mask, H.astype(wide), 0)
    count = jnp.sum(used).astype(wide)
    lam = ridge * jnp.trace(Hc) / count + floor
    A = Hc + jnp.diag(jnp.where(used, lam, 1).astype(wide))
    # symmetric positive definite (a Gram matrix plus a ridge; identity on the unused slots): Cholesky, with
    # no pivoting loop (a failed factorisation gives NaN, hence the plain step below)
    w = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(A), True), used.astype(wide))
    total = jnp.sum(w)
    ok = jnp.isfinite(total) & (total != 0)
    alpha = w / jnp.where(ok, total, 1)
    good = ok & jnp.all(jnp.isfinite(alpha))
    return jnp.where(good, alpha, jax.nn.one_hot(slot, m, dtype=wide))


def _step_fn(method, n, dtype):
    """``(init(y, f) -> aux, step(y, f, aux, k) -> (y_new, aux))`` for ``method`` on systems of n elements."""
    if method.kind == "iteration":
        damping = method.damping

        def step(y, f, aux, k):
            return (y + f if damping == 1.0 else y + damping * f), aux
        return (lambda y, f: ()), step

    m, beta = method.history_size, method.beta
    finfo = np.finfo(dtype)
    ridge, floor = max(method.ridge, 10 * float(finfo.eps)), float(np.sqrt(finfo.tiny))
    wide = _wide(dtype)

    def init(y, f):
        return _Ring(jnp.zeros((m, n), dtype), jnp.zeros((m, n), dtype), jnp.zeros((m, m), dtype))

    def step(y, f, ring, k):
        slot = k % m
        used = jnp.arange(m) < jnp.minimum(k + 1, m)
        G = jax.lax.dynamic_update_slice(ring.G, (y + beta * f)[None], (slot, jnp.int32(0)))
        F = jax.lax.dynamic_update_slice(ring.F, f[None], (slot, jnp.int32(0)))
        column = jnp.where(used, F @ f, 0)
        H = jax.lax.dynamic_update_slice(ring.H, column[None], (slot, jnp.int32(0)))
        H = jax.lax.dynamic_update_slice(H, column[:, None], (jnp.int32(0), slot))
        alpha = _anderson_weights(H, used, slot, ridge, floor, wide)
        return (alpha.astype(dtype) @ G), _Ring(G, F, H)

    return init, step


class _Test(NamedTuple):
    """The per-system test: accept when ``norm(f) <= tol + rtol·min(max|y|, cap)`` and max|y| < y_limit."""

    norm: Callable
    tol: Any
    rtol: float
    cap: Any
    y_limit: Any


def _iterate(G, y0, f0, method, test, max_steps, patience):
    """The host driver's loop on one system: ``G`` the map, ``f0 = G(y0) − y0``. Returns :class:`Solved`."""
    dtype, n = y0.dtype, y0.shape[0]
    wide = _wide(dtype)
    init, step = _step_fn(method, n, dtype)

    def book(f, y, best_y, best_res, since, code, done, limit):
        res = test.norm(f)
        y_norm = _max_abs(y)
        bounded = y_norm < test.y_limit
        threshold = test.tol.astype(wide) + test.rtol * jnp.minimum(y_norm, test.cap).astype(wide)
        converged = bounded & (res.astype(wide) <= threshold)
        improved = ~done & bounded & ((res < best_res) | converged)
        best_y = jnp.where(improved, y, best_y)
        best_res = jnp.where(improved, res, best_res)
        since = jnp.where(done, since, jnp.where(improved, 0, since + 1))
        exploded = ~bounded | ~(res < limit)
        stalled = since >= patience
        finished = ~done & (converged | exploded | stalled)
        outcome = jnp.where(converged, SUCCESS, jnp.where(exploded, DIVERGED, STALLED)).astype(jnp.int32)
        return best_y, best_res, since, jnp.where(finished, outcome, code), done | finished

    inf = jnp.asarray(jnp.inf, dtype)
    best_y, best_res, since, code, done = book(f0, y0, y0, inf, jnp.int32(0), jnp.int32(MAX_STEPS),
                                               jnp.asarray(False), inf)
    limit = (DIVERGENCE_FACTOR * jnp.maximum(best_res, jnp.asarray(1e-300, dtype))).astype(dtype)

    def cond(carry):
        k, done = carry[0], carry[8]
        return ~done & (k < max_steps)

    def body(carry):
        k, y, f, aux, best_y, best_res, since, code, done = carry
        y, aux = step(y, f, aux, k)
        f = jax.lax.optimization_barrier(G(y)) - y
        best_y, best_res, since, code, done = book(f, y, best_y, best_res, since, code, done, limit)
        return k + 1, y, f, aux, best_y, best_res, since, code, done

    carry = (jnp.int32(0), y0, f0, init(y0, f0), best_y, best_res, since, code, done)
    k, _, _, _, best_y, best_res, _, code, done = jax.lax.while_loop(cond, body, carry)
    return Solved(best_y, jnp.where(done, code, MAX_STEPS).astype(jnp.int32), k, best_res)


def default_patience(max_steps: int) -> int:
    return min(max(25, max_steps // 4), PATIENCE_CAP)


def solve_fixed_point(fn: Callable, z0: Any, method: Method, *, atol: float, rtol: float, max_steps: int,
                      patience: int | None = None) -> Solved:
    """z with z = fn(z) for one system (any shape; vmap for many), by ``method``, with the host driver's test."""
    shape, dtype = z0.shape, z0.dtype
    y0 = jnp.ravel(z0)

    def G(y):
        return jnp.ravel(fn(y.reshape(shape))).astype(dtype)

    g0 = G(y0)
    f0 = g0 - y0
    s0 = jnp.maximum(jnp.max(jnp.abs(y0)), jnp.max(jnp.abs(y0 + f0)))
    s0 = jnp.where(jnp.isfinite(s0), s0, 0).astype(dtype)
    eps = float(np.finfo(dtype).eps)
    y_limit = jnp.where(s0 > 0, s0 / np.sqrt(eps), jnp.inf).astype(dtype)
    test = _Test(_max_abs, jnp.asarray(atol, dtype), float(rtol), s0, y_limit)
    out = _iterate(G, y0, f0, method, test, max_steps,
                   default_patience(max_steps) if patience is None else patience)
    return out._replace(value=out.value.reshape(shape))


def solve_linear(apply: Callable, rhs: Any, method: Method, *, atol: float, rtol: float,
                 max_steps: int) -> Solved:
    """x with x − apply(x) = rhs (apply: Jᵀ for the adjoint, J for a tangent), iterating x ← rhs + apply(x)
    from x = rhs's first step (x0 = 0, whose residual is rhs itself: no application spent on it), to
    ‖rhs − (I − M)x‖₂ <= max(atol, rtol·‖rhs‖₂). A non-finite rhs is DIVERGED with a NaN x."""
    shape, dtype = rhs.shape, rhs.dtype
    b = jnp.ravel(rhs)
    bad = ~jnp.all(jnp.isfinite(b))
    b = jnp.where(bad, 0, b)

    def G(x):
        return b + jnp.ravel(apply(x.reshape(shape))).astype(dtype)

    tol = jnp.maximum(jnp.asarray(atol, dtype), (rtol * _l2(b)).astype(dtype))
    test = _Test(_l2, tol, 0.0, jnp.asarray(0, dtype), jnp.asarray(jnp.inf, dtype))
    out = _iterate(G, jnp.zeros_like(b), b, method, test, max_steps, max_steps + 1)
    value = jnp.where(bad, jnp.nan, out.value)
    return Solved(value.reshape(shape), jnp.where(bad, DIVERGED, out.code).astype(jnp.int32), out.num_steps,
                  jnp.where(bad, jnp.nan, out.residual))


def dense_solve(apply: Callable, rhs: Any) -> Solved:
    """x with x − apply(x) = rhs by a dense LU solve of I − M, M formed by one batched application of ``apply``
    on the identity (for small states: n applications' work)."""
    shape, dtype = rhs.shape, rhs.dtype
    n = int(np.prod(shape))
    eye = jnp.eye(n, dtype=dtype)
    columns = jax.vmap(lambda e: jnp.ravel(apply(e.reshape(shape))).astype(dtype))(eye)     # row i: M e_i
    x = jnp.linalg.solve(eye - columns.T, jnp.ravel(rhs))
    ok = jnp.all(jnp.isfinite(x))
    residual = _l2(jnp.ravel(rhs) - x + jnp.ravel(apply(x.reshape(shape))))
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
    residual = _l2(b - matvec(x))
    tol = jnp.maximum(jnp.asarray(atol, dtype), (rtol * _l2(b)).astype(dtype))
    code = jnp.where(jnp.all(jnp.isfinite(x)), jnp.where(residual <= tol, SUCCESS, MAX_STEPS), DIVERGED)
    return Solved(x.reshape(shape), code.astype(jnp.int32), jnp.int32(max_steps), residual)


# ---- the adapter's engine: deqcore's solver and adjoint objects mapped onto the loops above ---------------

@dataclass(frozen=True)
class LinearSpec:
    """How a linear (adjoint or tangent) solve runs: ``kind`` "dense", "iterate" (``method``), "gmres"
    (``restart``), "onestep" (x = rhs) or "default" (dense up to ``dense_limit`` elements per system, else
    ``method``), with the test's ``atol``/``rtol`` and the budget ``max_steps``."""

    kind: str
    method: Method | None = None
    atol: float = 0.0
    rtol: float = 1e-5
    max_steps: int = 100
    restart: int = 30
    dense_limit: int = 0

    def solve(self, apply, rhs) -> Solved:
        n = int(np.prod(rhs.shape))
        if self.kind == "onestep":
            return Solved(rhs, jnp.int32(SUCCESS), jnp.int32(0), jnp.asarray(0, rhs.dtype))
        if self.kind == "dense" or (self.kind == "default" and n <= self.dense_limit):
            return dense_solve(apply, rhs)
        rtol = max(self.rtol, 4 * float(np.finfo(rhs.dtype).eps))
        if self.kind == "gmres":                      # max_steps 0: GMRES's own default, 10 n
            return gmres_solve(apply, rhs, atol=self.atol, rtol=rtol, restart=self.restart,
                               max_steps=self.max_steps or max(10 * n, 2))
        return solve_linear(apply, rhs, self.method, atol=self.atol, rtol=rtol, max_steps=self.max_steps)


#: the method of the default adjoint on states above the dense limit (see benchmarks/results/jax_deq.md)
DEFAULT_ADJOINT_METHOD = anderson()


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
    from ..adjoint.steady_state import (CHEAP_GMRES, DENSE_ADJOINT_LIMIT, FALLBACK_MAX_STEPS, FALLBACK_RTOL,
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
        return LinearSpec("default", DEFAULT_ADJOINT_METHOD, atol, rtol, max_steps,
                          dense_limit=DENSE_ADJOINT_LIMIT)
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

    codes = np.asarray(codes)
    flat = codes.reshape(-1)
    if np.any(flat != SUCCESS):
        sol = Solution(value=None, result=flat if flat.size > 1 else ReturnCode(int(flat[0])),
                       batched=flat.size > 1)
        if throw:
            raise SolveError(f"deqcore.interop.jax.fixed_point: {sol.failure_message()}", sol)
        warn_failed(what, flat, _ADVICE[what])
    return np.zeros(codes.shape, np.int32)


def checked(x, code, what, throw):
    """``x``, after the return ``code`` was checked: a failure raises ``dq.SolveError`` (``throw``; JAX re-raises
    it as a ``JaxRuntimeError`` carrying its message) or warns once per call site. Only a failure calls back to
    the host (a ``lax.cond`` on "all codes SUCCESS"), and under ``jax.vmap`` the whole batch's codes are checked
    at once (one callback, which sees every code). The check's (zero) result is added to x so XLA keeps it."""
    return x + _check(what, throw)(code).astype(x.dtype)


@functools.lru_cache(maxsize=8)
def _check(what, throw):
    """``code -> zeros like code``, with the host report on failure, batched by ``custom_vmap`` as one check."""

    def check_all(codes):
        def report(codes):
            shape = jax.ShapeDtypeStruct(codes.shape, jnp.int32)
            return jax.pure_callback(functools.partial(_report, what, throw), shape, codes,
                                     vmap_method="expand_dims")

        return jax.lax.cond(jnp.all(codes == SUCCESS), jnp.zeros_like, report, codes)

    @jax.custom_batching.custom_vmap
    def check(code):
        return check_all(code)

    @check.def_vmap
    def check_batched(axis_size, in_batched, code):
        return check_all(code) if in_batched[0] else check(code), in_batched[0]

    return check


_CACHE: dict = {}


def implicit_fixed_point(f: Callable, config: EngineConfig) -> Callable:
    """``solve(z0, args) -> Solved`` with z* differentiable (jvp, grad, vmap, jit) through the implicit
    function theorem: the tangent of z* solves (I − ∂f/∂z) ż = ∂f/∂args·ȧrgs through
    ``jax.lax.custom_linear_solve``, whose transpose solves the adjoint (I − ∂f/∂zᵀ) λ = g with f's VJP
    linearised once at z*, all inside XLA. Cached per (f, config)."""
    key = (f, config)
    if key in _CACHE:
        return _CACHE[key]

    def forward(z0, args):
        out = solve_fixed_point(lambda z: f(z, args), z0, config.method, atol=config.atol, rtol=config.rtol,
                                max_steps=config.max_steps)
        if not (config.throw or config.warn):
            return out
        return out._replace(value=checked(out.value, out.code, FORWARD, config.throw))

    @jax.custom_jvp
    def solve(z0, args):
        return forward(z0, args)

    def solve_jvp(primals, tangents):
        z0, args = primals
        out = forward(z0, args)
        z = jax.lax.stop_gradient(out.value)
        zero_tangents = (np.zeros(out.code.shape, jax.dtypes.float0), np.zeros(out.num_steps.shape,
                         jax.dtypes.float0), jnp.zeros_like(out.residual))
        b = _args_tangent(f, z, args, tangents[1])
        if b is None:
            return out, Solved(jnp.zeros_like(z), *zero_tangents)
        if config.adjoint.kind == "onestep":
            return out, Solved(b, *zero_tangents)

        def f_of_z(zz):
            return f(zz, args)

        def matvec(v):
            return v - jax.jvp(f_of_z, (z,), (v,))[1]

        def tangent_solve(_, rhs):
            jvp_at = jax.linearize(f_of_z, z)[1]
            return config.adjoint.solve(jvp_at, rhs).value

        def adjoint_solve(_, g):
            vjp_at = jax.vjp(f_of_z, z)[1]
            lam = config.adjoint.solve(lambda v: vjp_at(v)[0], g)
            return checked(lam.value, lam.code, ADJOINT, False)

        dz = jax.lax.custom_linear_solve(matvec, b, solve=tangent_solve, transpose_solve=adjoint_solve)
        return out, Solved(dz, *zero_tangents)

    solve.defjvp(solve_jvp, symbolic_zeros=True)
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
