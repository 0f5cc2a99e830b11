"""JAX adapter: a differentiable fixed point z* = f(z*, args) solved by deqcore's algorithms, from JAX.

Two engines run the same solvers with the same convergence test and return codes:

* ``engine="xla"``: the whole solve inside XLA. Anderson acceleration and plain (damped) iteration are written
  with ``jax.lax.while_loop`` (:mod:`deqcore.interop.jax_xla`: a fixed-size history ring updated in place, the
  small least-squares by a regularised normal-equations solve, the host driver's test max|f(z) − z| <=
  atol + rtol·min(max|z|, s0) per system); the adjoint (I − ∂f/∂zᵀ) λ = g runs in XLA too, on f's VJP
  linearised once at z*, to the forward solve's tolerance. Under ``jax.vmap`` one loop runs all mapped systems,
  each with its own test and return code, a finished (or failed) system frozen.
* ``engine="host"``: deqcore's NumPy solvers inside one ``jax.pure_callback`` per call, every deqcore solver
  and adjoint (Broyden, Newton, ...), f evaluated by a jitted JAX function and the adjoint in a second callback
  applying a linearisation XLA made at z*.
* ``engine="auto"`` (the default): XLA when the solver and the adjoint have an XLA version (``dq.Anderson``,
  ``dq.FixedPointIteration``; the default adjoint, ``dq.LU()``, ``dq.GMRES(...)``, Anderson or
  FixedPointIteration on λ, ``dq.OneStepGradient()``), else the host (see ``benchmarks/results/jax_deq.md``).

Both work eagerly and under ``jax.jit``, ``jax.grad``, ``jax.jvp`` and ``jax.vmap``. Differentiation is implicit:
z* gets a custom JVP whose tangent solves (I − ∂f/∂z) ż = ∂f/∂args · ȧrgs through ``jax.lax.custom_linear_solve``,
so reverse mode solves the adjoint and JAX pulls λ back to ``args`` (any pytree); arguments shared by vmapped
samples stay unbatched (the gradient of a shared weight is one contraction over the batch). A failed solve
raises ``dq.SolveError`` with ``throw=True`` (under ``jax.jit`` JAX re-raises it as a ``JaxRuntimeError``,
or a ``ValueError`` from an already compiled call, carrying its message; the XLA engine calls back to the host
only when a code is not SUCCESS), or warns once per call site with ``throw=False`` and returns the best
iterate; :func:`fixed_point_solution` returns the codes themselves. Higher-order derivatives are not supported.

>>> import jax, jax.numpy as jnp
>>> from deqcore.interop import jax as dqj
>>> f = lambda z, a: 0.5 * jnp.cos(z) + a
>>> z = dqj.fixed_point(f, jnp.zeros(3), jnp.ones(3), atol=1e-6, rtol=1e-6)
>>> bool(jnp.allclose(z, f(z, jnp.ones(3)), atol=1e-5))
True
>>> g = jax.grad(lambda a: dqj.fixed_point(f, jnp.zeros(3), a, atol=1e-6, rtol=1e-6).sum())(jnp.ones(3))
>>> bool(jnp.allclose(g, 1 / (1 + 0.5 * jnp.sin(z)), atol=1e-4))     # dz*/da = 1 / (1 − f_z)
True
>>> z_host = dqj.fixed_point(f, jnp.zeros(3), jnp.ones(3), atol=1e-6, rtol=1e-6, engine="host")
>>> bool(jnp.allclose(z, z_host, atol=1e-6))
True
>>> out = jax.vmap(lambda a: dqj.fixed_point_solution(f, jnp.zeros(3), a))(jnp.array([1.0, jnp.nan]))
>>> out.code.tolist()                                  # per system: SUCCESS (0), DIVERGED (2)
[0, 2]
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._checks import check_callable
from ..adjoint.steady_state import FixedPointVJP, OneStepGradient, PhantomGradient, SteadyStateAdjoint
from ..adjoint._warn import warn_failed
from ..results import ReturnCode, Solution, SolveError
from ..root import RootSolver
from ._common import (RAISED_IN_CALLBACK, check_adjoint, check_dtype, check_options, import_framework,
                      raise_from_callback, solve)

jax = import_framework("jax", "jax")
jnp = import_framework("jax.numpy", "jax")

from . import jax_xla  # noqa: E402  (after the install hint above)
from .jax_xla import Solved, _args_tangent, _varying_axes, _varying_like  # noqa: E402

__all__ = ["fixed_point", "fixed_point_solution", "sharded_fixed_point", "choose_engine", "Solved", "ENGINES"]


@dataclass(frozen=True)
class _Config:
    solver: Any
    adjoint: Any
    atol: float
    rtol: float
    max_steps: int
    throw: bool
    codes: bool = False         # the host solve returns (value, codes) and never raises (sharded_fixed_point)


def fixed_point(f: Callable, z0: Any, args: tuple = (), solver: RootSolver | None = None, *,
                atol: float = 1e-6, rtol: float = 1e-5, max_steps: int = 100,
                adjoint: SteadyStateAdjoint | OneStepGradient | PhantomGradient | None = None,
                throw: bool = True, engine: str = "auto") -> Any:
    """z* with z* = f(z*, args), differentiable with respect to ``args`` by deqcore's implicit adjoint.

    Args:
        f: a JAX-traceable function ``f(z, args)`` returning an array shaped like z (same dtype).
        z0: start point (float32 or float64 array); no gradient flows to it.
        args: any pytree of arrays f depends on; gradients flow to its floating leaves (and to arrays f closes
            over that an enclosing ``jax.grad`` or ``jax.jit`` traces; one that ``jax.vmap`` maps is mapped as args).
        solver: a deqcore fixed-point solver (default ``dq.Anderson()``).
        atol, rtol, max_steps: the solve's tolerances and budget.
        adjoint: ``dq.SteadyStateAdjoint(...)`` (default; it also solves forward-mode tangents) or
            ``dq.OneStepGradient()``.
        throw: raise ``dq.SolveError`` when the solve fails (under ``jax.jit`` JAX re-raises the callback's
            ``dq.SolveError`` as a ``jax.errors.JaxRuntimeError``, or a ``ValueError`` once compiled, carrying its
            message); False warns once per call site and returns the best iterate.
        engine: ``"auto"`` (default: XLA where the solver and adjoint have an XLA version, else host),
            ``"xla"`` or ``"host"`` (see the module docstring); "xla" with a solver or adjoint without an XLA
            version is a ValueError naming it.

    Unmapped, the whole array is one system; under ``jax.vmap`` each mapped sample is one system.
    """
    solve, z0, args = _prepare(f, z0, args, solver, atol, rtol, max_steps, adjoint, throw, engine)
    return _run(solve, z0, args)


def fixed_point_solution(f: Callable, z0: Any, args: tuple = (), solver: RootSolver | None = None, *,
                         atol: float = 1e-6, rtol: float = 1e-5, max_steps: int = 100,
                         adjoint: SteadyStateAdjoint | OneStepGradient | None = None,
                         throw: bool = False, engine: str = "auto") -> "Solved":
    """:func:`fixed_point` with its outcome: ``Solved(value, code, num_steps, residual)``, a pytree of JAX
    arrays (under ``jax.vmap`` one of each per system): ``code`` the int32 :class:`deqcore.ReturnCode`
    (SUCCESS, MAX_STEPS, DIVERGED, STALLED), ``num_steps`` the evaluations of f after the start point's,
    ``residual`` max|f(z) − z| at ``value``. ``value`` is differentiable as :func:`fixed_point`'s. Runs on the XLA
    engine (the solver and adjoint must have XLA versions); ``throw`` defaults to False here.

    >>> import jax, jax.numpy as jnp, deqcore as dq
    >>> f = lambda z, a: 0.5 * jnp.cos(z) + a
    >>> out = jax.vmap(lambda a: fixed_point_solution(f, jnp.zeros(2), a, max_steps=3))(jnp.array([[0.0], [jnp.nan]]))
    >>> [dq.ReturnCode(int(c)).name for c in out.code]
    ['MAX_STEPS', 'DIVERGED']
    """
    if engine == "host":
        raise ValueError("engine='host' cannot report return codes to JAX: fixed_point_solution needs "
                         "engine='xla' or 'auto' (its codes reach the host path as a RuntimeWarning or, with "
                         "throw=True, a dq.SolveError)")
    solve, z0, args = _prepare(f, z0, args, solver, atol, rtol, max_steps, adjoint, throw, engine, solution=True)
    return _run(solve, z0, args)


def _run(solve, *operands):
    """``solve(*operands)``; a failure raised by a host callback while it runs (eagerly, or under a transformation
    that runs it, such as ``jax.grad`` outside ``jax.jit``) comes out as the ``dq.SolveError`` it is rather than
    JAX's ``JaxRuntimeError`` around it. Eager calls wait for their result, so the error is raised here."""
    RAISED_IN_CALLBACK.clear()
    try:
        out = solve(*operands)
        concrete = [_concrete_primal(leaf) for leaf in jax.tree_util.tree_leaves(out)]
        if all(isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) for leaf in concrete):
            jax.block_until_ready(concrete)      # (eagerly, also under jax.grad: its primal values are computed)
        return out
    except (jax.errors.JaxRuntimeError, ValueError) as err:   # a cached vmapped callback's failure: ValueError
        # (under shard_map several devices' callbacks may have raised: JAX reports one of them)
        raised = next((e for e in reversed(RAISED_IN_CALLBACK) if str(e) in str(err)), None)
        RAISED_IN_CALLBACK.clear()
        if raised is not None:
            raise raised from None
        raise


def _concrete_primal(x):
    """The value an eager transformation carries inside ``x`` (a JVP or linearisation tracer's primal, itself
    possibly a tracer of an outer transformation), or ``x``."""
    for _ in range(16):
        primal = getattr(x, "primal", None) if isinstance(x, jax.core.Tracer) else None
        if primal is None:
            return x
        x = primal
    return x


def _prepare(f, z0, args, solver, atol, rtol, max_steps, adjoint, throw, engine, solution=False, codes=False):
    """Validated options and ``(solve(z0, args), z0, args)`` for the chosen engine (``codes``: the host engine's
    ``solve`` returning ``(z, codes)``, the return codes as z's dtype, see :func:`sharded_fixed_point`); traced
    values f closes over are moved into ``args`` (:func:`_hoist_closure`)."""
    check_callable(f, "f")
    f = _hashable(f)
    solver, atol, rtol, max_steps = check_options(solver, atol, rtol, max_steps)
    adjoint = check_adjoint(adjoint, atol, rtol, max_steps)     # the default adjoint follows these tolerances
    if isinstance(adjoint, PhantomGradient):
        raise TypeError("adjoint must be dq.SteadyStateAdjoint(...) or dq.OneStepGradient() for the JAX "
                        "adapter; got PhantomGradient")
    if not isinstance(throw, bool):
        raise TypeError(f"throw must be a bool, got {type(throw).__name__}")
    if not hasattr(z0, "dtype"):
        raise TypeError(f"z0 must be a JAX or NumPy array, got {type(z0).__name__}")
    z0 = jnp.asarray(z0)
    check_dtype(str(z0.dtype), "z0", cast=".astype(jnp.float32) or .astype(jnp.float64)")
    if z0.size == 0:
        raise ValueError(f"z0 must have at least one element, got shape {z0.shape}")
    out = jax.eval_shape(f, z0, args)
    if not hasattr(out, "shape") or out.shape != z0.shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"f must preserve the shape of z: got {got} from {z0.shape}")
    if out.dtype != z0.dtype:
        raise TypeError(f"f must preserve the dtype of z: got {out.dtype} from {z0.dtype}")
    engine = choose_engine(engine, solver, adjoint, needs_xla=solution)
    f, args = _hoist_closure(f, z0, args)
    if engine == "host":
        return _implicit_fixed_point(f, _Config(solver, adjoint, atol, rtol, max_steps, throw, codes)), z0, args
    config = jax_xla.EngineConfig(jax_xla.forward_method(solver), jax_xla.linear_spec(adjoint), atol, rtol,
                                  max_steps, throw, warn=not solution)
    return _jitted(jax_xla.implicit_fixed_point(f, config), solution), z0, args


def _hoist_closure(f, z0, args):
    """``(f, args)``, or, when f closes over values a JAX transformation traces (an array differentiated by an
    enclosing ``jax.grad``, a ``jax.jit`` argument, a ``jax.vmap``-ped value), ``(g, (args, hoisted))`` with
    ``g(z, (args, hoisted)) = f(z, args)``: the custom derivative and vmap rules see them as arguments, so their
    gradients are the implicit ones (else they would get none) and no tracer reaches the host engine's callbacks.
    Outside any transformation there is nothing to hoist and f is not traced."""
    if _top_level():
        return f, args
    closed = jax.make_jaxpr(f)(z0, args)
    traced = tuple(isinstance(c, jax.core.Tracer) for c in closed.consts)
    if not any(traced):
        return f, args
    hoisted = tuple(c for c, t in zip(closed.consts, traced) if t)
    return _Hoisted(closed.jaxpr, [None if t else c for c, t in zip(closed.consts, traced)], traced), (args, hoisted)


def _top_level() -> bool:
    """True when no JAX transformation is tracing (eager code): no value f closes over can then be a tracer."""
    try:
        from jax._src.core import trace_ctx
        return bool(trace_ctx.is_top_level())
    except (ImportError, AttributeError):       # pragma: no cover - another JAX: trace f every time
        return False


class _Hoisted:
    """f with its traced closed-over values as arguments: ``g(z, (args, hoisted)) = f(z, args)``, evaluating f's
    jaxpr (hashable by identity, for the per-f caches)."""

    __slots__ = ("jaxpr", "kept", "traced", "__weakref__")

    def __init__(self, jaxpr, kept, traced):
        self.jaxpr, self.kept, self.traced = jaxpr, kept, traced

    def __call__(self, z, args_and_hoisted):
        args, hoisted = args_and_hoisted
        values = iter(hoisted)
        consts = [next(values) if t else c for c, t in zip(self.kept, self.traced)]
        return jax.core.eval_jaxpr(self.jaxpr, consts, *jax.tree_util.tree_leaves((z, args)))[0]


class _ByIdentity:
    """An unhashable callable f (e.g. a dataclass holding arrays) as a key of the per-f caches, by identity."""

    __slots__ = ("f", "__weakref__")            # jax.jit keeps weak references to the functions it compiles

    def __init__(self, f):
        self.f = f

    def __call__(self, z, args):
        return self.f(z, args)


_WRAPPED: dict = {}


def _hashable(f):
    """``f`` itself when it is hashable, else one :class:`_ByIdentity` per f object (held here, so that its id
    is not reused while it is a key): calls with the same f reuse the compiled solves."""
    try:
        hash(f)
        return f
    except TypeError:
        entry = _WRAPPED.get(id(f))
        if entry is None or entry.f is not f:
            if len(_WRAPPED) >= 64:
                _WRAPPED.clear()
            entry = _WRAPPED[id(f)] = _ByIdentity(f)
        return entry


@functools.lru_cache(maxsize=64)
def _jitted(solve, solution):
    """``solve`` (or its value alone) jitted: eager calls then reuse one compiled program per shape."""
    return jax.jit(solve if solution else (lambda z0, args: solve(z0, args).value))


ENGINES = ("auto", "xla", "host")


def choose_engine(engine: str, solver: RootSolver, adjoint: Any, needs_xla: bool = False) -> str:
    """``"xla"`` or ``"host"`` for ``engine``: "auto" (the default) runs in XLA when the solver and the adjoint
    both have an XLA version (``dq.Anderson``, ``dq.FixedPointIteration``; the default adjoint, ``dq.LU()``,
    ``dq.GMRES(...)``, Anderson or FixedPointIteration on λ, ``dq.OneStepGradient()``), else on the host;
    "xla" with a solver or adjoint that has none is a ValueError naming it.

    >>> import deqcore as dq
    >>> choose_engine("auto", dq.Anderson(), None), choose_engine("auto", dq.Broyden(), None)
    ('xla', 'host')
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    adjoint = check_adjoint(adjoint)
    missing = []
    if jax_xla.forward_method(solver) is None:
        missing.append(f"solver={type(solver).__name__}(...) has no XLA version (there: dq.Anderson, "
                       "dq.FixedPointIteration)")
    if jax_xla.linear_spec(adjoint) is None:
        missing.append(f"adjoint={adjoint!r} has no XLA version (there: the default adjoint, dq.LU(), "
                       "dq.GMRES(...), dq.Anderson() or dq.FixedPointIteration() on λ, dq.OneStepGradient())")
    if engine == "host" or (engine == "auto" and missing and not needs_xla):
        return "host"
    if missing:
        if needs_xla:        # fixed_point_solution: the host engine cannot return codes, so don't send it there
            raise ValueError("fixed_point_solution runs on the XLA engine, but " + "; ".join(missing) +
                             ": use one that has, or dqj.fixed_point(..., engine='host'), whose failures "
                             "warn (throw=False) or raise dq.SolveError")
        raise ValueError(f"engine={engine!r} needs the XLA engine, but " + "; ".join(missing) +
                         ": use engine='host' or 'auto'")
    return "xla"


@functools.lru_cache(maxsize=64)
def _implicit_fixed_point(f, config):
    """z*(z0, args) with the implicit JVP; cached per (f, config) so repeated calls reuse JAX's caches. With
    ``config.codes``, ``(z*, code)``: the return code per system as z's dtype (no tangent), from the same host
    solve."""
    codes = config.codes

    def forward(z0, args):
        if codes:
            return _callback_with_codes(f, config, z0, args)
        return _callback(_host_solve, f, config, z0, args)

    def primal_and(z_out, dz):
        if codes:
            return z_out, (dz, jnp.zeros_like(z_out[1]))
        return z_out, dz

    @jax.custom_jvp
    def fp(z0, args):
        return forward(z0, args)

    def fp_jvp(primals, tangents):
        z0, args = primals
        out = forward(z0, args)
        z = out[0] if codes else out
        b = _args_tangent(f, z, args, tangents[1])
        if b is None:                                    # no argument carries a tangent
            return primal_and(out, jnp.zeros_like(z))
        if isinstance(config.adjoint, OneStepGradient):  # (I − ∂f/∂z)⁻¹ ≈ I: λ ≈ g, ż ≈ b
            return primal_and(out, b)

        if _varying_axes(z):
            # inside shard_map the linearisation's types carry the mesh axes, which the host cannot apply: the
            # adjoint callback linearises f itself
            def transpose_solve(_, g):
                return _callback(_host_adjoint_linearising, f, config, z, args, g)
        else:
            # f linearised at z* by XLA (dropped by XLA unless the adjoint runs): its residuals go to the adjoint
            # callback, whose VJPs apply them, so that callback never evaluates f
            leaves, tree = jax.tree_util.tree_flatten(jax.vjp(lambda zz: f(zz, args), z)[1])
            residuals = tuple(leaves)

            def transpose_solve(_, g):
                return _callback(_host_adjoint, tree, config, z, residuals, g)

        def matvec(v):                                   # only traced (for its transpose), never run
            return v - jax.jvp(lambda zz: f(zz, args), (z,), (v,))[1]

        dz = jax.lax.custom_linear_solve(
            matvec, b,
            solve=lambda _, rhs: _callback(_host_tangent, f, config, z, args, rhs),
            transpose_solve=transpose_solve)
        return primal_and(out, dz)

    fp.defjvp(fp_jvp, symbolic_zeros=True)
    return fp


@functools.lru_cache(maxsize=256)
def _host_callable(host_fn, f, config, core_ndim):
    """One callable per (host function, f, config, rank): eager calls then hit JAX's compilation cache."""
    return functools.partial(host_fn, f, config, core_ndim)


def _callback(host_fn, f, config, z, args, *extra):
    """Run ``host_fn`` on host arrays; batch axes added by vmap arrive as leading axes (expand_dims)."""
    fn = _host_callable(host_fn, f, config, z.ndim)
    out = jax.pure_callback(fn, jax.ShapeDtypeStruct(z.shape, z.dtype), z, args, *extra,
                            vmap_method="expand_dims")
    # inside shard_map the result varies over the mesh axes its inputs vary over (each device's own rows)
    return _varying_like(out, *jax.tree_util.tree_leaves((z, args, extra)))


def _callback_with_codes(f, config, z, args):
    """:func:`_callback` of :func:`_host_solve` with ``config.codes``: ``(z*, codes)``, one code per system."""
    fn = _host_callable(_host_solve, f, config, z.ndim)
    shapes = (jax.ShapeDtypeStruct(z.shape, z.dtype), jax.ShapeDtypeStruct((), z.dtype))
    value, codes = jax.pure_callback(fn, shapes, z, args, vmap_method="expand_dims")
    like = jax.tree_util.tree_leaves((z, args))
    return _varying_like(value, *like), _varying_like(codes, *like)


class _HostProblem:
    """The arrays of one callback, with vmap's leading axes folded into one batch axis (or none).

    The callback hands the arguments over as JAX arrays on the CPU: unmapped ones are used as they are, vmapped
    ones are folded once per callback; each evaluation of f hands its NumPy iterate straight to the jitted f
    (compiled once per shape and argument structure, never per solve), and the VJPs and JVPs of an adjoint or
    tangent solve apply one linearisation of f computed once at z*.
    """

    def __init__(self, f, core_ndim, z, args, *others):
        z = np.asarray(z)
        leaves, treedef = jax.tree_util.tree_flatten(args)
        k = z.ndim - core_ndim                      # number of vmap axes
        self.out_shape = np.broadcast_shapes(
            *(np.shape(a)[:k] for a in (z, *leaves, *others))) + z.shape[k:]
        self.batched = k > 0
        self.core_shape = z.shape[k:]
        axes, flat = [], []
        for leaf in leaves:
            if k and any(d != 1 for d in leaf.shape[:k]):
                full = np.broadcast_to(np.asarray(leaf), self.out_shape[:k] + leaf.shape[k:])
                flat.append(full.reshape((-1,) + leaf.shape[k:]))
                axes.append(0)
            else:
                flat.append(leaf.reshape(leaf.shape[k:]) if k else leaf)
                axes.append(None)
        self.args = jax.tree_util.tree_unflatten(treedef, _on_default_device(flat))
        self.axes = tuple(axes)
        self.ops = _evaluators(f, treedef, self.axes, self.batched) if f is not None else None

    def fold(self, a):
        """``a`` with vmap's axes folded into one (or unchanged when not mapped), as a writable host array; mapped
        scalar systems as ``(B, 1)`` (the batched solvers take a system per row)."""
        a = np.broadcast_to(np.asarray(a), self.out_shape)
        return np.array(a.reshape((-1,) + (self.core_shape or (1,))) if self.batched else a)

    def unfold(self, a, dtype):
        return np.asarray(a).reshape(self.out_shape).astype(dtype, copy=False)

    def _core(self, a):
        """A folded array in f's own shape per sample (``(B,)`` for mapped scalar systems)."""
        return a.reshape(a.shape[:1]) if self.batched and not self.core_shape else a

    def _folded(self, out, like):
        return np.asarray(out).reshape(like.shape)

    def f(self, z):
        return self._folded(self.ops.f(self._core(z), self.args), z)

    def pullback_at(self, z):
        """``v -> (∂f/∂zᵀ v, None)`` at z: f linearised once, each call one transposed application."""
        linear = self.ops.linearize_vjp(self._core(z), self.args)
        return lambda v: (self._folded(self.ops.apply(linear, self._core(v)), v), None)

    def pullback_with(self, apply):
        """``v -> (∂f/∂zᵀ v, None)`` from ``apply(residuals, v)``, a pullback linearised outside the callback
        whose residuals are this callback's arguments."""
        return lambda v: (self._folded(apply(self.args, self._core(v)), v), None)

    def pushforward_at(self, z):
        """``v -> (∂f/∂z v, None)`` at z, for the tangent solve (same shape of call as the pullback)."""
        linear = self.ops.linearize_jvp(self._core(z), self.args)
        return lambda v: (self._folded(self.ops.apply(linear, self._core(v)), v), None)


def _on_default_device(leaves):
    """``leaves`` as arrays on JAX's current default device (inside a callback: the CPU). The callback hands its
    arguments over as JAX arrays on the CPU already: those are used as they are (no copy, no Python-level
    transfer per leaf); anything else moves once."""
    target = jax.config.jax_default_device
    if target is None:
        target = jax.devices()[0]
    elif isinstance(target, str):
        target = jax.devices(target)[0]
    if all(isinstance(leaf, jax.Array) and leaf.devices() == {target} for leaf in leaves):
        return leaves
    return jax.device_put(leaves, target)


@dataclass(frozen=True)
class _Evaluators:
    f: Any
    linearize_vjp: Any
    linearize_jvp: Any
    apply: Any


@functools.lru_cache(maxsize=64)
def _evaluators(f, treedef, axes, batched):
    """Jitted f(z, args) and its z-linearisations, vmapped over the folded batch axis when ``batched``
    (shared leaves, axis None, are not broadcast)."""
    fb = f
    if batched:
        fb = jax.vmap(f, in_axes=(0, jax.tree_util.tree_unflatten(treedef, list(axes))))

    def linearize_vjp(z, args):
        return jax.vjp(lambda zz: fb(zz, args), z)[1]

    def linearize_jvp(z, args):
        return jax.linearize(lambda zz: fb(zz, args), z)[1]

    def apply(linear, v):
        out = linear(v)
        return out[0] if isinstance(out, tuple) else out

    return _Evaluators(jax.jit(fb), jax.jit(linearize_vjp), jax.jit(linearize_jvp), jax.jit(apply))


def _host_solve(f, config, core_ndim, z0, args):
    """The forward solve: its best iterate; with ``config.codes`` also the return codes (as z0's dtype, shaped like
    the vmapped axes), never raising nor warning."""
    problem = _HostProblem(f, core_ndim, z0, args)
    sol = _solve_finite_starts(problem, problem.fold(z0), config)
    if not (config.throw or config.codes):
        warn_failed("the forward solve of deqcore.interop.jax.fixed_point", sol.result,
                    "The best iterate is returned and its gradient is not the implicit gradient: raise max_steps or "
                    "loosen atol/rtol")
    dtype = np.asarray(z0).dtype
    if config.codes:
        mapped = problem.out_shape[:len(problem.out_shape) - len(problem.core_shape)]
        return problem.unfold(sol.value, dtype), np.asarray(sol.result, dtype=dtype).reshape(mapped)
    if config.throw and not bool(np.all(sol.success)):
        raise_from_callback(SolveError(f"deqcore.interop.jax.fixed_point: {sol.failure_message()}", sol))
    return problem.unfold(sol.value, dtype)


def _solve_finite_starts(problem, z0, config):
    """The host solve of the folded start ``z0``, a system whose start holds NaN or infinity DIVERGED on its own with
    that start as its value (as on the XLA engine: under ``jax.vmap`` each sample is its own system); the solve
    itself runs on the others."""
    rows = z0.reshape(z0.shape[0] if problem.batched else 1, -1)
    bad = ~np.isfinite(rows).all(axis=1)
    if not bad.any():
        return solve(problem.f, z0, config.solver, atol=config.atol, rtol=config.rtol, max_steps=config.max_steps,
                     batched=problem.batched, warn=False)
    if bad.all():
        result = np.full(rows.shape[0], int(ReturnCode.DIVERGED)) if problem.batched else ReturnCode.DIVERGED
        residual = np.full(rows.shape[0], np.inf) if problem.batched else np.inf
        return Solution(value=z0, result=result, residual=residual, batched=problem.batched,
                        stats={"num_steps": 0, "nfev": 0})
    mask = bad.reshape((-1,) + (1,) * (z0.ndim - 1))
    sol = solve(problem.f, np.where(mask, 0, z0).astype(z0.dtype), config.solver, atol=config.atol, rtol=config.rtol,
                max_steps=config.max_steps, batched=True, warn=False)
    return dataclasses.replace(sol, value=np.where(mask, z0, sol.value),
                               result=np.where(bad, int(ReturnCode.DIVERGED), sol.result),
                               residual=np.where(bad, np.inf, sol.residual))


def _linear_solve(problem, z, rhs, config, linear_at):
    """x with (I − M) x = rhs, M = ∂f/∂zᵀ (the adjoint) or ∂f/∂z (a tangent), by the configured adjoint."""
    z_flat = problem.fold(z)
    fixed = FixedPointVJP(z_flat, None, batched=problem.batched, pullback=linear_at(z_flat))
    info = config.adjoint.solve_adjoint(fixed, problem.fold(rhs))
    return problem.unfold(info.lam, np.asarray(z).dtype)


def _host_adjoint(tree, config, core_ndim, z, residuals, g):
    """λ with (I − ∂f/∂zᵀ) λ = g (JAX pulls λ back to the arguments through f itself); ∂f/∂zᵀ is the pullback
    with structure ``tree`` and leaves ``residuals`` that XLA linearised at z*."""
    problem = _HostProblem(None, core_ndim, z, residuals, g)
    pullback = problem.pullback_with(_linear_pullback(tree, problem.axes, problem.batched))
    return _linear_solve(problem, z, g, config, lambda _: pullback)


def _host_adjoint_linearising(f, config, core_ndim, z, args, g):
    """As :func:`_host_adjoint`, linearising f at z* here (inside ``shard_map``)."""
    problem = _HostProblem(f, core_ndim, z, args, g)
    return _linear_solve(problem, z, g, config, problem.pullback_at)


@functools.lru_cache(maxsize=64)
def _linear_pullback(tree, axes, batched):
    """Jitted ``(residuals, v) -> ∂f/∂zᵀ v`` for a pullback of structure ``tree``, vmapped over the folded batch
    axis when ``batched`` (residuals shared by the samples, axis None, are not broadcast)."""

    def apply(residuals, v):
        return jax.tree_util.tree_unflatten(tree, list(residuals))(v)[0]

    if batched:
        apply = jax.vmap(apply, in_axes=(axes, 0))
    return jax.jit(apply)


def _host_tangent(f, config, core_ndim, z, args, b):
    """ż with (I − ∂f/∂z) ż = b (forward mode)."""
    problem = _HostProblem(f, core_ndim, z, args, b)
    return _linear_solve(problem, z, b, config, problem.pushforward_at)


def sharded_fixed_point(f: Callable, z0: Any, args: tuple = (), *, mesh: Any, axis: str = "b",
                        in_axes: Any = 0, **options: Any) -> Any:
    """Per-sample fixed points of a batch sharded over ``mesh``'s ``axis``: each device solves its own shard.

    ``z0`` has the batch on its leading axis; ``in_axes`` says which leaves of ``args`` carry the batch on
    their leading axis (0, sharded like z0) and which are shared (None, replicated), as in ``jax.vmap``. Under
    ``jax.shard_map`` every device calls the host solver on its local rows only (one batched solve per device,
    samples never gathered onto one host), and the implicit adjoint runs the same way; gradients of shared
    arguments are summed over the devices by ``shard_map``. ``options`` are those of :func:`fixed_point`; the
    engine is the host one (``engine="auto"`` or ``"host"``). The batch must split evenly over the devices.
    Arrays f closes over that a JAX transformation traces must be passed in ``args`` (a ValueError says so).
    The result equals ``jax.vmap(lambda z, a: fixed_point(f, z, a, **options))(z0, args)``. A failed solve raises
    ``dq.SolveError`` (under ``jax.jit``, JAX's error carrying its message), or warns once with ``throw=False``,
    naming the whole batch's codes: the devices share their codes first, so none is left waiting for a failed one.

    >>> import jax, jax.numpy as jnp
    >>> mesh = jax.make_mesh((1,), ("b",))
    >>> f = lambda z, a: 0.5 * jnp.cos(z) + a
    >>> a = jnp.linspace(0.0, 1.0, 4).reshape(4, 1)
    >>> a = a.astype(jnp.float32)                      # float32 (JAX's default): a tolerance float32 resolves
    >>> z = jax.jit(lambda a: sharded_fixed_point(f, jnp.zeros_like(a), a, mesh=mesh, atol=1e-5, rtol=0.0))(a)
    >>> bool(jnp.allclose(z, f(z, a), atol=1e-5)), z.shape
    (True, (4, 1))
    """
    from jax.sharding import NamedSharding, PartitionSpec

    engine = options.pop("engine", "host")
    if engine not in ("auto", "host"):
        raise ValueError(f"engine must be 'host' (or 'auto', which means 'host' here) for sharded_fixed_point, "
                         f"got {engine!r}: the XLA engine's implicit gradient does not yet run inside shard_map")
    settings = _fixed_point_defaults()
    unknown = sorted(set(options) - set(settings))
    if unknown:
        raise TypeError(f"sharded_fixed_point got unexpected keyword(s) {', '.join(unknown)}; it takes "
                        f"{', '.join(settings)} and engine, as fixed_point")
    settings.update(options)
    throw = settings.pop("throw")
    if not isinstance(throw, bool):
        raise TypeError(f"throw must be a bool, got {type(throw).__name__}")
    if not hasattr(mesh, "axis_names") or not hasattr(mesh, "shape"):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((n,), ('b',))), got "
                        f"{type(mesh).__name__}")
    if axis not in mesh.axis_names:
        raise ValueError(f"axis {axis!r} is not an axis of mesh (its axes: {mesh.axis_names})")
    if not hasattr(z0, "shape") or len(z0.shape) < 1:
        raise ValueError("z0 must have the batch on its leading axis")
    leaves, treedef = jax.tree_util.tree_flatten(args)
    flat_axes = _flat_in_axes(in_axes, args, len(leaves))
    devices, batch = mesh.shape[axis], z0.shape[0]
    if batch % devices:
        raise ValueError(f"z0 has a batch of {batch} rows, which does not split evenly over the {devices} devices "
                         f"of mesh axis {axis!r}: pad the batch to a multiple of {devices}")
    for i, (leaf, a) in enumerate(zip(leaves, flat_axes)):
        if a == 0 and (len(np.shape(leaf)) < 1 or np.shape(leaf)[0] != batch):
            raise ValueError(f"args leaf {i} is per-sample (in_axes 0), so its leading axis must be z0's batch "
                             f"({batch}); got shape {tuple(np.shape(leaf))} (mark shared leaves None in in_axes)")
    _refuse_traced_closure(f, z0, args, flat_axes)
    spec = [PartitionSpec(axis) if a == 0 else PartitionSpec() for a in flat_axes]

    def place(x, s):
        sharding = NamedSharding(mesh, s)
        explicit = any(str(t).endswith("Explicit") for t in getattr(mesh, "axis_types", ()))
        return jax.sharding.reshard(x, sharding) if explicit else jax.lax.with_sharding_constraint(x, sharding)

    z0 = place(jnp.asarray(z0), PartitionSpec(axis))
    leaves = [place(jnp.asarray(x), s) for x, s in zip(leaves, spec)]
    vmap_axes = jax.tree_util.tree_unflatten(treedef, flat_axes)

    def one(z, a):
        solve_with_codes, z, a = _prepare(f, z, a, settings["solver"], settings["atol"], settings["rtol"],
                                          settings["max_steps"], settings["adjoint"], False, "host", codes=True)
        return solve_with_codes(z, a)

    def local(z_local, *arg_leaves):
        local_args = jax.tree_util.tree_unflatten(treedef, list(arg_leaves))
        z, codes = jax.vmap(one, in_axes=(0, vmap_axes))(z_local, local_args)
        # the host solves never raise here: a callback raising on one device alone leaves the others waiting in the
        # next collective (XLA aborts the process after its timeout). Every device learns the batch's codes first,
        # then every device reports the same failure (raises dq.SolveError, or warns with throw=False).
        counts = jax.lax.psum(jnp.stack([jnp.sum(codes == c) for c in range(len(ReturnCode))]).astype(jnp.int32),
                              axis)
        return z + _report_sharded(counts, throw).astype(z.dtype)

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(axis), *spec), out_specs=PartitionSpec(axis))
    return _run(mapped, z0, *leaves)         # (eagerly a failed solve is the dq.SolveError, as for fixed_point)


def _refuse_traced_closure(f, z0, args, flat_axes):
    """A ValueError when f closes over values a JAX transformation traces: inside ``shard_map`` they cannot be
    moved into the arguments as :func:`fixed_point` does (f's traced form carries the mesh's axes)."""
    if z0.shape[0] == 0:              # (an empty batch is refused by name further on)
        return
    leaves, treedef = jax.tree_util.tree_flatten(args)
    sample = [jnp.asarray(leaf)[0] if a == 0 else leaf for leaf, a in zip(leaves, flat_axes)]
    g, _ = _hoist_closure(_hashable(f), jnp.asarray(z0)[0], jax.tree_util.tree_unflatten(treedef, sample))
    if isinstance(g, _Hoisted):
        raise ValueError("f closes over values that a JAX transformation traces (e.g. a weight differentiated "
                         "by an enclosing jax.grad, or a jax.jit argument); sharded_fixed_point needs them in args: "
                         "pass them there, marked None (shared) in in_axes")


def _fixed_point_defaults():
    """:func:`fixed_point`'s options and their defaults (solver, atol, rtol, max_steps, adjoint, throw)."""
    parameters = inspect.signature(fixed_point).parameters
    return {name: parameters[name].default for name in ("solver", "atol", "rtol", "max_steps", "adjoint", "throw")}


def _report_sharded(counts, throw):
    """A zero (added to the result, so XLA keeps it) after the host has reported the codes ``counts`` (how many
    samples of the whole sharded batch ended with each ``ReturnCode``): a failure raises ``dq.SolveError``
    (``throw``) or warns once per call site."""
    shape = jax.ShapeDtypeStruct((), jnp.int32)
    # (an io_callback: XLA may not drop it when only a gradient, which never reads the value, is wanted)
    return jax.experimental.io_callback(functools.partial(_host_report_sharded, throw), shape, counts)


def _host_report_sharded(throw, counts):
    counts = np.asarray(counts).reshape(-1)
    if counts[1:].sum() == 0:
        return np.zeros((), np.int32)
    codes = np.repeat(np.arange(counts.size), counts)
    where = "the forward solve of deqcore.interop.jax.sharded_fixed_point"
    if throw:
        sol = Solution(None, codes, {}, None, batched=True)
        raise_from_callback(SolveError(f"deqcore.interop.jax.sharded_fixed_point: {sol.failure_message()}", sol))
    warn_failed(where, codes, "The best iterate is returned and its gradient is not the implicit gradient: raise "
                "max_steps or loosen atol/rtol")
    return np.zeros((), np.int32)


def _flat_in_axes(in_axes, args, count):
    """One 0/None per leaf of ``args`` from ``in_axes`` (0, None, or a pytree prefix of args of those)."""
    shared = -1                                           # None leaves vanish from pytrees: a stand-in
    try:
        per_leaf = jax.tree_util.tree_map(
            lambda ax, sub: [shared if ax is None else ax] * len(jax.tree_util.tree_leaves(sub)),
            in_axes, args, is_leaf=lambda x: x is None)
        flat = [None if ax == shared else ax for ax in jax.tree_util.tree_leaves(per_leaf)]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"in_axes must be 0, None or a pytree prefix of args of those: {exc}") from exc
    if len(flat) != count or any(ax not in (0, None) for ax in flat):
        raise ValueError(f"in_axes must be 0, None or a pytree prefix of args of those, got {in_axes!r}")
    return flat
