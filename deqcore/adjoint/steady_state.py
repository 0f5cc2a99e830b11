"""Gradients through a fixed point z* = f(z*, θ) without backpropagating through the solver's iterations.

With g = ∂L/∂z*, the implicit function theorem gives ∂L/∂θ = λᵀ ∂f/∂θ where λ solves
(I − ∂f/∂zᵀ) λ = g. Three ways to get it, all taking the same :class:`FixedPointVJP` description of f:

* :class:`SteadyStateAdjoint` — solve for λ (any linear solver: dense LU for small states, batched
  matrix-free GMRES on VJPs otherwise; or any fixed-point solver on λ = g + ∂f/∂zᵀ λ), by default to the
  forward solve's tolerance;
* :class:`OneStepGradient` — the Jacobian-free approximation λ ≈ g (one VJP);
* :class:`PhantomGradient` — backpropagate through k damped steps z ← (1−α) z + α f(z) from z*.

>>> import numpy as np
>>> A = np.array([[0.5, 0.1], [0.0, 0.3]]); theta = np.array([1.0, 2.0])
>>> z_star = np.linalg.solve(np.eye(2) - A, theta)            # z* = A z* + θ
>>> problem = FixedPointVJP(z_star, lambda z: (A @ z + theta, lambda v: (A.T @ v, v)))
>>> grad, info = SteadyStateAdjoint().gradient(problem, np.ones(2))
>>> np.allclose(grad, np.linalg.solve((np.eye(2) - A).T, np.ones(2)))    # dL/dθ = (I − A)^-T g
True
>>> info
AdjointInfo(value=<float64 (2,)>, result=SUCCESS, residual=0, stats={'num_steps': 1, 'nvjp': 3, 'nfev': 1})
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from .._checks import check_choice, check_positive_int, check_probability, check_tolerance
from .._tree import tree_add, tree_scale
from ..backend import default_kernel, get_namespace
from . import richardson_kernels  # noqa: F401  (registers richardson_step)
from ..linalg import GMRES, LU, LinearOperator, LinearSolver
from ..linalg.gmres import as_preconditioner
from ..results import ReturnCode, Solution, _codes_host, _host
from ..root import RootSolver, fixed_point
from ._warn import warn_failed

__all__ = [
    "FixedPointVJP",
    "AdjointInfo",
    "SteadyStateAdjoint",
    "OneStepGradient",
    "PhantomGradient",
    "default_adjoint_linear_solver",
    "preconditioner_from_forward",
    "DENSE_ADJOINT_LIMIT",
]

#: the default adjoint factors the dense (I − ∂f/∂z) up to this many state elements per sample (as the reference)
DENSE_ADJOINT_LIMIT = 50
#: DeepEquilibriumNetworks.jl's cheap GMRES budget, ``accuracy="cheap"``
CHEAP_GMRES = GMRES(rtol=1e-3, atol=1e-3, restart=10, max_steps=10)
#: tolerances of the default adjoint when it is used without a forward solve to follow
FALLBACK_RTOL, FALLBACK_MAX_STEPS = 1e-5, 100
#: the default GMRES's Krylov dimension per cycle (capped at the state size)
ADJOINT_RESTART = 30
#: the default accurate adjoint first iterates λ ← g + ∂f/∂zᵀ λ (one VJP and an addition per step) and hands a
#: sample to GMRES when its residual shrinks by less than this factor in its first step. A GMRES
#: step costs a VJP plus an orthogonalisation against the Krylov basis (a fraction of a VJP), and GMRES gains little over the plain iteration on a well-contracting map (the easy DEQ map: 12
#: VJPs each), much on a slow or divergent one (the hard map: the iteration diverges at once and GMRES takes over).
RICHARDSON_RATE = 0.5
#: after its first step, a sample keeps iterating while its residual shrinks by at least this factor a step (a
#: sample that slows down later waits for a GMRES round of its own, after the running one; ARCHITECTURE.md,
#: "Constants set by measurement", has the figures behind both rates)
RICHARDSON_KEEP_RATE = 0.9


@dataclass
class FixedPointVJP:
    """What an adjoint needs to know about f at its fixed point.

    Args:
        z_star: the fixed point, shape ``(B, ...)`` when ``batched`` (one system per sample), else any shape.
        vjp: ``vjp(z) -> (f(z), pullback)`` with ``pullback(v) -> (∂f/∂zᵀ v, ∂f/∂θᵀ v)``; the θ part is any
            tree of arrays (or None).
        batched: whether the leading axis holds independent systems.
        pullback: the pullback of f at z* when the caller already has it (saves one evaluation of f).
        pullback_z: ``v -> ∂f/∂zᵀ v`` at z* alone, when the caller can compute it without the θ part (the
            adjoint solve needs many of these and one θ cotangent at the end); given with ``pullback``.
    """

    z_star: Any
    vjp: Callable
    batched: bool = False
    pullback: Callable | None = None
    pullback_z: Callable | None = None

    def pullback_at_fixed_point(self):
        """The pullback of f at z* (computed on first use when not given)."""
        if self.pullback is None:
            self.pullback = self.vjp(self.z_star)[1]
        return self.pullback


@dataclass(repr=False)
class AdjointInfo(Solution):
    """The adjoint solve, with :class:`~deqcore.results.Solution`'s contract.

    Attributes:
        value: λ (shaped like the cotangent g); ``lam`` is the same array.
        result: ReturnCode (an int array ``(B,)`` when batched): SUCCESS when λ meets the adjoint's tolerance.
        residual: per-sample norm of g − (I − ∂f/∂zᵀ) λ (L2 for the linear solvers, max-norm for fixed-point
            solvers); zero for the approximate gradients, which solve no system.
        stats: ``num_steps`` (solver iterations), ``nvjp`` (VJPs of f), ``nfev`` (evaluations of f itself).
    """

    @property
    def lam(self):
        """The adjoint vector λ (``value``)."""
        return self.value

    @property
    def nvjp(self) -> int:
        """VJPs of f used by the adjoint."""
        return int(self.stats.get("nvjp", 0))

    @property
    def num_steps(self) -> int:
        """Iterations of the adjoint's solver."""
        return int(self.stats.get("num_steps", 0))


def _info(lam, codes, residual, stats, batched) -> AdjointInfo:
    """An AdjointInfo from per-row codes/residuals ``(B,)`` (one row when unbatched)."""
    if batched:
        return AdjointInfo(value=lam, result=codes, stats=stats, residual=residual, batched=True)
    return AdjointInfo(value=lam, result=ReturnCode(int(_codes_host(codes)[0])), stats=stats,
                       residual=float(_host(residual).reshape(-1)[0]))


def default_adjoint_linear_solver(state_size: int, *, accuracy="forward", rtol=FALLBACK_RTOL, atol=0.0,
                                  max_steps=FALLBACK_MAX_STEPS):
    """The linear solver of ``SteadyStateAdjoint(linear_solver=None)``: dense LU up to
    :data:`DENSE_ADJOINT_LIMIT` state elements per sample (exact; one VJP per element), otherwise GMRES on VJPs.
    ``accuracy="forward"`` solves GMRES to ``rtol``/``atol`` within ``max_steps`` VJPs (the forward solve's,
    when a model or adapter passes them); ``accuracy="cheap"`` is DeepEquilibriumNetworks.jl's rule: at most 10
    iterations with tolerance 1e-3 (gradients 7e-4 off on an easy DEQ map, 31% off on a hard one).

    >>> type(default_adjoint_linear_solver(10)).__name__, default_adjoint_linear_solver(1000, accuracy="cheap")
    ('LU', GMRES(rtol=0.001, atol=0.001, restart=10, max_steps=10))
    """
    if state_size <= DENSE_ADJOINT_LIMIT:
        return LU()
    if accuracy == "cheap":
        return CHEAP_GMRES
    return GMRES(rtol=rtol, atol=atol, restart=min(ADJOINT_RESTART, state_size), max_steps=max_steps)


def preconditioner_from_forward(learned: dict, *, low_rank: bool = False):
    """An approximation of (I − ∂f/∂zᵀ)⁻¹ from what a forward fixed-point solve learnt (``sol.learned``), or
    None. With F(z) = f(z) − z the adjoint matrix is −∂F/∂zᵀ, so Newton's LU factors of ∂F/∂z give
    −(∂F/∂z)⁻ᵀ directly, and Broyden's inverse-Jacobian estimate H ≈ (∂F/∂z)⁻¹ gives −Hᵀ. Works on flat
    (B, n) vectors, the layout of a batched solve.

    The LU factors are always used: one application is a triangular solve of the state's size. Broyden's
    estimate only with ``low_rank=True``: each application reads its per-sample factors whole (2·B·rank·n
    numbers), which costs more than the VJPs it saves whenever f shares its weights across the batch (a DEQ
    layer), and roughly halves GMRES's VJPs where f is expensive per sample.

    >>> import numpy as np
    >>> U, V = np.zeros((1, 1, 2)), np.zeros((1, 1, 2))          # H = −I: the identity preconditioner
    >>> preconditioner_from_forward({"inverse_jacobian": (U, V)}) is None
    True
    >>> preconditioner_from_forward({"inverse_jacobian": (U, V)}, low_rank=True)(np.ones((1, 2)))
    array([[1., 1.]])
    """
    if "lu" in learned:
        factors = learned["lu"]
        return lambda v: -factors.solve(v, transpose=True)
    if low_rank and "inverse_jacobian" in learned:
        U, V = learned["inverse_jacobian"]
        xp = get_namespace(U)
        # only the ring slots the forward solve filled (a memory of 100 with 12 updates costs 12, not 100), and
        # Vᵀ laid out once: each application is then two small batched products
        used = xp.nonzero(xp.any(U != 0, axis=(0, 2)))[0]
        rank = int(used.max()) + 1 if used.size else 0
        if rank == 0:
            return lambda v: v
        U = xp.ascontiguousarray(U[:, :rank])
        Vt = xp.ascontiguousarray(xp.swapaxes(V[:, :rank], 1, 2))                 # (B, n, rank)

        def apply(v):
            coefficients = xp.matmul(U, v[:, :, None])                     # (B, rank, 1): uᵢ·v
            return v - xp.matmul(Vt, coefficients)[:, :, 0]

        return apply
    return None


def _rows(z):
    """``(B, n)`` rows of a batched array, or one row for an unbatched one."""
    return z.reshape(z.shape[0], -1) if z.ndim > 1 else z.reshape(1, -1)


_ACCURACIES = ("forward", "cheap")
_DEFAULT_SOLVERS: dict = {}     # (settings, state size, dtype) -> the default linear solver (frozen, shareable)
_WITH_FORWARD: dict = {}        # (adjoint, forward atol, rtol, max_steps) -> SteadyStateAdjoint.with_forward's result


@dataclass(frozen=True)
class SteadyStateAdjoint:
    """Implicit gradient: solve (I − ∂f/∂zᵀ) λ = g, then ∂L/∂θ = ∂f/∂θᵀ λ.

    Args:
        linear_solver: ``None`` (dense LU up to 50 state elements per sample, else, with ``accuracy="forward"``,
            the plain iteration λ ← g + ∂f/∂zᵀ λ for the samples it contracts fast (one VJP and an addition a
            step) and GMRES on VJPs for the others, to the tolerances below), any linear solver (``dq.LU()``: exact, one VJP per state element;
            ``dq.GMRES(...)``: matrix-free, with its own tolerances), or a fixed-point solver (``dq.Anderson()``,
            ``dq.FixedPointIteration()``, ...) applied to λ = g + ∂f/∂zᵀ λ with the tolerances below.
        accuracy: ``"forward"`` (default): solve to the forward solve's tolerance with a budget like the
            forward's (a DEQ model or adapter fills in its ``atol``/``rtol``/``max_steps``; used alone: relative
            residual 1e-5 within 100 VJPs). ``"cheap"``: DeepEquilibriumNetworks.jl's default — GMRES capped at 10
            iterations with tolerance 1e-3 — fast but inexact (biased gradients on slowly contracting maps).
        atol, rtol, max_steps: override the tolerances and budget (None: from ``accuracy``). The adjoint's test
            is ``||g − (I − ∂f/∂zᵀ) λ|| <= max(atol, rtol·||g||)`` per sample; following a forward solve,
            ``rtol = max(forward rtol, forward atol)``, ``atol = 0`` and ``max_steps`` = the forward's.

    A sample whose adjoint does not converge keeps its code in the returned :class:`AdjointInfo` (and in
    ``state["solution"].adjoint`` / ``layer.last_adjoint``) and raises a ``RuntimeWarning`` once per call site.

    >>> import numpy as np, deqcore as dq
    >>> A = np.array([[[0.5, 0.2], [0.0, 0.4]]]); theta = np.ones((1, 2))       # f(z) = A z + θ, one sample
    >>> z_star = np.linalg.solve(np.eye(2) - A[0], theta[0])[None]
    >>> problem = FixedPointVJP(z_star, lambda z: (z @ A[0].T + theta, lambda v: (v @ A[0], v)), batched=True)
    >>> exact = np.linalg.solve((np.eye(2) - A[0]).T, np.ones(2))
    >>> for solver in (dq.LU(), dq.GMRES(rtol=1e-12), dq.Anderson()):
    ...     grad, info = dq.SteadyStateAdjoint(solver, atol=1e-12).gradient(problem, np.ones((1, 2)))
    ...     print(type(solver).__name__, bool(np.allclose(grad[0], exact)), info.success.tolist())
    LU True [True]
    GMRES True [True]
    Anderson True [True]
    >>> dq.SteadyStateAdjoint(atol=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: atol must be a finite number >= 0, got -1.0
    """

    linear_solver: Any = None
    accuracy: str = "forward"
    atol: float | None = None
    rtol: float | None = None
    max_steps: int | None = None

    def __post_init__(self):
        if self.linear_solver is not None and not isinstance(self.linear_solver, (LinearSolver, RootSolver)):
            raise TypeError(
                "linear_solver must be None, a linear solver (dq.LU(), dq.GMRES(...)) or a fixed-point solver "
                f"such as dq.Anderson(); got {type(self.linear_solver).__name__}")
        check_choice(self.accuracy, "accuracy", _ACCURACIES)
        for name in ("atol", "rtol"):
            if getattr(self, name) is not None:
                check_tolerance(getattr(self, name), name)
        if self.max_steps is not None:
            check_positive_int(self.max_steps, "max_steps")

    def with_forward(self, atol: float, rtol: float, max_steps: int) -> "SteadyStateAdjoint":
        """A copy whose unset tolerances follow a forward solve's ``atol``/``rtol``/``max_steps`` (for
        ``accuracy="forward"``; otherwise ``self``). DEQ models and the adapters call this.

        >>> SteadyStateAdjoint().with_forward(1e-6, 1e-5, 100)
        SteadyStateAdjoint(linear_solver=None, accuracy='forward', atol=0.0, rtol=1e-05, max_steps=100)
        """
        if self.accuracy != "forward":
            return self
        try:                                # (the adapters ask at every backward pass: built once per settings)
            key = (self, atol, rtol, max_steps)
            return _WITH_FORWARD[key]
        except KeyError:
            pass
        except TypeError:                   # unhashable settings: no cache
            key = None
        adjoint = replace(self, atol=0.0 if self.atol is None else self.atol,
                          rtol=max(float(rtol), float(atol)) if self.rtol is None else self.rtol,
                          max_steps=max_steps if self.max_steps is None else self.max_steps)
        if key is not None:
            if len(_WITH_FORWARD) >= 64:
                _WITH_FORWARD.clear()
            _WITH_FORWARD[key] = adjoint
        return adjoint

    def _tolerances(self, dtype):
        """(atol, rtol, max_steps) of this adjoint, with the dtype's floor on rtol."""
        cheap = self.accuracy == "cheap"
        atol = self.atol if self.atol is not None else (1e-3 if cheap else 0.0)
        rtol = self.rtol if self.rtol is not None else (1e-3 if cheap else FALLBACK_RTOL)
        max_steps = self.max_steps if self.max_steps is not None else (10 if cheap else FALLBACK_MAX_STEPS)
        return atol, max(rtol, 4 * float(np.finfo(dtype).eps)), max_steps

    def linear_solver_for(self, state_size: int, dtype=np.float64):
        """The solver this adjoint uses for states of ``state_size`` elements per sample."""
        if self.linear_solver is not None:
            return self.linear_solver
        key = (self.accuracy, self.atol, self.rtol, self.max_steps, state_size, np.dtype(dtype).char)
        solver = _DEFAULT_SOLVERS.get(key)
        if solver is None:                 # (built once per settings: a training loop asks at every step)
            atol, rtol, max_steps = self._tolerances(dtype)
            solver = default_adjoint_linear_solver(state_size, accuracy=self.accuracy, rtol=rtol, atol=atol,
                                                   max_steps=max_steps)
            if len(_DEFAULT_SOLVERS) >= 64:
                _DEFAULT_SOLVERS.clear()
            _DEFAULT_SOLVERS[key] = solver
        return solver

    def _iterate_first(self, solver) -> bool:
        """Whether the solve starts with plain iterations (the default accurate adjoint's GMRES only)."""
        return self.linear_solver is None and self.accuracy == "forward" and isinstance(solver, GMRES)

    def _direct_solve_codes(self, xp, codes, residual, g_rows):
        """LU's codes with this adjoint's test applied to its residual: LU flags only pivots below eps, so a
        nearly singular I − ∂f/∂zᵀ (an eigenvalue of ∂f/∂z at 1 up to rounding) gave SUCCESS with a λ whose
        residual is of the order of g; such rows are LINEAR_SOLVE_FAILED."""
        atol, rtol, _ = self._tolerances(g_rows.dtype)
        limit = xp.maximum(xp.asarray(atol, dtype=residual.dtype), rtol * _row_norms(xp, g_rows))
        passed = residual <= limit
        return xp.where((codes == int(ReturnCode.SUCCESS)) & ~passed, int(ReturnCode.LINEAR_SOLVE_FAILED), codes)

    def gradient(self, problem: FixedPointVJP, g: Any, x0: Any = None,
                 preconditioner: Callable | None = None) -> tuple[Any, AdjointInfo]:
        """``(∂L/∂θ, AdjointInfo)`` for the cotangent ``g = ∂L/∂z*``; ``x0`` warm-starts λ (e.g. the last one);
        ``preconditioner`` (flat (B, n) → (B, n), see :func:`preconditioner_from_forward`) approximates
        (I − ∂f/∂zᵀ)⁻¹ for GMRES."""
        info = self.solve_adjoint(problem, g, x0, preconditioner)
        info.stats["nvjp"] += 1
        return problem.pullback_at_fixed_point()(info.lam)[1], info

    def solve_adjoint(self, problem: FixedPointVJP, g: Any, x0: Any = None,
                      preconditioner: Callable | None = None) -> AdjointInfo:
        """Only λ with (I − ∂f/∂zᵀ) λ = g (no final parameter VJP): for callers that pull λ back through f
        themselves, such as the PyTorch and JAX adapters."""
        evaluated = problem.pullback is None
        pullback = problem.pullback_at_fixed_point()
        pullback_z = problem.pullback_z if problem.pullback_z is not None and not evaluated else (
            lambda v: pullback(v)[0])
        batched = problem.batched
        xp = np if type(g) is np.ndarray else get_namespace(g)
        z_star = problem.z_star
        if tuple(getattr(g, "shape", ())) != tuple(z_star.shape):
            raise ValueError(f"g (the cotangent of z*) must have z*'s shape {tuple(z_star.shape)}, got "
                             f"{tuple(getattr(g, 'shape', ()))}")
        if g.dtype != z_star.dtype:         # (a float32 g for a float64 z*: solved in z*'s dtype)
            g = g.astype(z_star.dtype)
        shape = g.shape
        g_rows = _rows(g) if batched else g.reshape(1, -1)
        batch, n = g_rows.shape
        solver = self.linear_solver_for(n, g.dtype)
        count = {"nvjp": 0}

        if shape == (batch, n):
            def vjp_rows(v_rows):
                count["nvjp"] += 1
                u = pullback_z(v_rows)
                return u if u.shape == shape else u.reshape(batch, n)
        else:
            def vjp_rows(v_rows):
                count["nvjp"] += 1
                return pullback_z(v_rows.reshape(shape)).reshape(batch, n)

        x0_rows = None if x0 is None else x0.reshape(batch, n)
        if self._iterate_first(solver):
            lam, codes, residual, steps = _richardson_then_gmres(solver, vjp_rows, g_rows, x0_rows,
                                                                 preconditioner if batched else None, xp)
        elif isinstance(solver, LinearSolver):
            op = LinearOperator(lambda v: v - vjp_rows(v), shape=(n, n), dtype=g.dtype)
            op.batch_size = batch
            sol = solver.solve(op, g_rows, x0=x0_rows, preconditioner=preconditioner if batched else None)
            lam, codes, residual = sol.value, sol.result, sol.residual
            steps = int(sol.stats.get("num_steps", 0))
            if isinstance(solver, LU):
                codes = self._direct_solve_codes(xp, codes, residual, g_rows)
        else:
            atol, rtol, max_steps = self._tolerances(g.dtype)
            bad = ~xp.isfinite(g_rows).all(axis=1)     # a non-finite cotangent is that sample's failure alone
            rhs = xp.where(bad[:, None], xp.zeros((), dtype=g.dtype), g_rows)
            start = rhs if x0_rows is None else xp.where(xp.isfinite(x0_rows), x0_rows, 0)
            sol = fixed_point(lambda lam: rhs + vjp_rows(lam), start, solver, atol=atol, rtol=rtol,
                              max_steps=max_steps, batched=True, throw=False)
            lam = xp.where(bad[:, None], xp.asarray(np.nan, dtype=g.dtype), sol.value)
            codes = xp.where(bad, int(ReturnCode.DIVERGED), sol.result)
            residual = xp.where(bad, xp.asarray(np.nan, dtype=g.dtype), sol.residual)
            steps = int(sol.stats.get("num_steps", 0))
        stats = {"num_steps": steps, "nvjp": count["nvjp"], "nfev": int(evaluated)}
        info = _info(lam.reshape(shape), codes, residual, stats, batched)
        warn_failed("the adjoint solve", codes, "Their gradients are not the implicit gradient: raise the "
                    "adjoint's max_steps or the forward solve's accuracy, or pass linear_solver=dq.LU()")
        return info


def _row_norms(xp, a):
    return xp.sqrt(xp.einsum("ij,ij->i", a, a))


def _richardson_then_gmres(gmres, vjp_rows, g, x0, preconditioner, xp):
    """λ with ||g − (I − Jᵀ)λ|| <= max(atol, rtol·||g||) per row (GMRES's test and budget): each row iterates
    λ ← λ + r, r = g + Jᵀλ − λ, while its residual shrinks by :data:`RICHARDSON_RATE` in its first step and by
    :data:`RICHARDSON_KEEP_RATE` in the later ones; the rows that slow down then solve their correction
    (I − Jᵀ) δ = r by GMRES from zero (no VJP spent on a restart residual). Rows never wait on or change one
    another (a row's result is its solo solve's). Each residual is computed from a VJP, so the test is on true
    residuals. A step of the iteration is one VJP and one fused kernel (``richardson_step``), with one read of
    two counts by the host. Returns ``(λ, codes, residual norms, num_steps)``; a row with a non-finite g is
    DIVERGED with a NaN λ, alone."""
    if preconditioner is not None:      # (checked as GMRES.solve checks it, its shape errors naming it)
        preconditioner = as_preconditioner(preconditioner, g.shape[1], g).matvec
    dtype = g.dtype
    zero = dtype.type(0) if xp is np else xp.zeros((), dtype=dtype)     # (a NumPy scalar: no array made)
    gnorm = _row_norms(xp, g)
    bad = None
    if not bool(xp.isfinite(gnorm.sum())):     # a non-finite norm: a non-finite g, or one whose squares overflow
        bad = ~xp.isfinite(g).all(axis=1)
        g = xp.where(bad[:, None], zero, g)
        gnorm = _row_norms(xp, g)
    tol = (gmres.rtol * gnorm).astype(dtype, copy=False)
    if gmres.atol:
        tol = xp.maximum(xp.asarray(gmres.atol, dtype=dtype), tol)
    budget = gmres.max_steps if gmres.max_steps is not None else max(10 * g.shape[1], 2)
    it = _Iteration(g, gnorm, tol, bad, x0, vjp_rows, xp)
    codes = xp.full(g.shape[0], int(ReturnCode.SUCCESS), dtype=np.int64)
    while it.steps < budget and (it.n_going or it.n_slow):
        if not it.n_slow:
            it.step()
        else:
            # the rows that slowed down solve their correction by GMRES; the rows still iterating ride along in
            # its VJP calls (a row's path never depends on the others); rows that slow down meanwhile wait for
            # the next round
            if it.compiled is None:
                waiting = it.slow.copy()
                it.slow &= ~waiting                             # handed over
                it.done |= waiting
                rhs, rhs_tol = xp.where(waiting[:, None], it.r, zero), xp.where(waiting, tol, 1)
            else:
                waiting, rhs, rhs_tol = it.compiled.hand_over(it.slow, it.done, it.r, tol)
                if it.inputs is None:       # GMRES's VJP input, made at its first round (zero: every row finite)
                    it.inputs = xp.zeros(g.shape, dtype=g.dtype)
            it.n_slow = 0
            # without a preconditioner Arnoldi runs on Jᵀ itself (the operator I − Jᵀ, shifted: the same Krylov
            # space, without the cancellation of v − Jᵀv that made nearly every step orthogonalise twice); the
            # VJP's own output is then never written (a pullback may return an array it keeps)
            shifted = preconditioner is None
            delta, gcodes, gnorm, stats = gmres._run(
                xp, it.step if shifted else (lambda v: v - it.step(v)), preconditioner, rhs, None,
                budget - it.steps, min(gmres.restart, g.shape[1]), tol=rhs_tol,
                shifted=shifted, inputs=it.inputs if shifted else None)
            if it.compiled is None:
                it.lam += xp.where(waiting[:, None], delta, zero)
                it.rnorm = xp.where(waiting, gnorm, it.rnorm)
                codes = xp.where(waiting, gcodes, codes)
            else:
                it.compiled.take_back(waiting, it.lam, delta, it.rnorm, gnorm, codes, gcodes)
            it.restart()
    lam, rnorm, steps = it.lam, it.rnorm, it.steps
    codes = xp.where(it.done, codes, int(ReturnCode.MAX_STEPS))       # 0 (SUCCESS) for the iterated rows
    if bad is not None:
        codes = xp.where(bad, int(ReturnCode.DIVERGED), codes)
        lam = xp.where(bad[:, None], xp.asarray(np.nan, dtype=dtype), lam)
        rnorm = xp.where(bad, xp.asarray(np.nan, dtype=dtype), rnorm)
    return lam, codes, rnorm, steps


class _Iteration:
    """The state of the plain iteration λ ← g + Jᵀλ of :func:`_richardson_then_gmres`, one row per sample:
    λ, r = g + Jᵀλ − λ, ‖r‖, the flags ``going`` (iterating), ``slow`` (waiting for GMRES) and ``done``, the
    next trial iterate (λ + r where going) and the host's counts of going and waiting rows."""

    def __init__(self, g, gnorm, tol, bad, x0, vjp_rows, xp):
        """``gnorm``: the row norms of ``g``; ``bad``: the rows with a non-finite cotangent (None: none)."""
        self.g, self.tol, self.vjp_rows, self.xp = g, tol, vjp_rows, xp
        self.kernel = default_kernel("richardson_step", xp)     # (looked up once per namespace)
        # the compiled loop without its argument conversions, and (compiled, NumPy) the row selection of the
        # shared steps and the hand-over to GMRES and back, each one pass
        self.compiled = self.kernel if hasattr(self.kernel, "select_rows") else None
        self.kernel = getattr(self.kernel, "bound", self.kernel)
        self.buffers = self.inputs = None
        if self.compiled is not None:
            # two (B, n) buffers take turns as the next trial and the shared steps' VJP input (each written
            # only when it is neither the VJP input being read nor the trial still to be read); the VJP
            # input of GMRES's steps (its rows the compiled Arnoldi step writes, the iterating rows' trials
            # the iteration's step writes) is made at GMRES's first round (most easy solves never get there)
            self.buffers = (xp.empty_like(g), xp.empty_like(g))
        self.trial = None
        self.steps = 0
        if x0 is None:
            self.lam, self.r, self.rnorm = xp.zeros(g.shape, dtype=g.dtype), g.copy(), gnorm.copy()
        else:
            self.lam = xp.where(xp.isfinite(x0), x0, xp.zeros((), dtype=g.dtype)).astype(g.dtype, copy=False)
            self.r = g + vjp_rows(self.lam) - self.lam
            self.rnorm = _row_norms(xp, self.r)
            self.steps += 1
        self.done = self.rnorm <= tol
        if bad is not None:
            self.done |= bad
        self.slow = xp.zeros(self.done.shape, dtype=bool)
        self.first = self.steps + 1
        self.counts = np.zeros(2, dtype=np.int64) if xp is np else xp.zeros(2, dtype=np.int64)
        if x0 is None:                      # λ = 0, r = g: the first trial iterate λ + r is g (read, never written)
            self.going = ~self.done
            self.n_going, self.n_slow = int(xp.count_nonzero(self.going)), 0
            self.trial = g if self.n_going == g.shape[0] else xp.where(self.going[:, None], g, self.lam)
        else:
            self.restart()

    def restart(self):
        """The trial iterates and counts from the flags (at the start and after a GMRES round)."""
        xp = self.xp
        self.going = ~self.done & ~self.slow
        self.n_going = int(xp.count_nonzero(self.going))
        self.n_slow = int(xp.count_nonzero(self.slow))
        if not self.n_going:                # (no step reads a trial then: the next one takes GMRES's vectors)
            return
        if self.compiled is not None:
            buffers = self.buffers
            self.trial = self.compiled.trial(self.going, self.lam, self.r,
                                             buffers[1] if self.trial is buffers[0] else buffers[0])
        elif self.n_going == self.going.shape[0]:
            self.trial = self.lam + self.r
        else:
            self.trial = xp.where(self.going[:, None], self.lam + self.r, self.lam)

    def step(self, vectors=None):
        """One step for the rows still iterating, in one VJP call with ``vectors`` (B, n) for the other rows
        (GMRES's, riding along); returns that call's VJPs."""
        xp, buffers = self.xp, self.buffers
        if vectors is None:
            trial = self.trial
        elif not self.n_going:
            trial = vectors
        elif buffers is None:
            trial = xp.where(self.going[:, None], self.trial, vectors)
        elif vectors is self.inputs:        # (GMRES wrote its rows; the iterating rows' trials are there but
            if self.trial is not vectors:   # at the first step of a cycle)
                self.compiled.select_rows(self.going, self.trial, vectors, vectors)
            trial = vectors
        else:
            trial = self.compiled.select_rows(self.going, self.trial, vectors,
                                     buffers[1] if self.trial is buffers[0] else buffers[0])
        u = self.vjp_rows(trial)
        self.steps += 1
        if not self.n_going:
            return u
        rate = RICHARDSON_RATE if self.steps == self.first else RICHARDSON_KEEP_RATE
        if buffers is None:
            self.trial = xp.empty_like(self.lam)    # a fresh buffer: the last one may still be read by the VJP
        elif trial is self.inputs:                  # (the kernel reads each row before writing it)
            self.trial = trial
        else:                                       # (the buffer the VJP did not read)
            self.trial = buffers[1] if trial is buffers[0] else buffers[0]
        self.kernel(trial, u, self.g, self.lam, self.r, self.rnorm, self.tol, self.going, self.slow, self.done,
                    rate, self.trial, self.counts)
        counts = self.counts if xp is np else self.counts.get()
        self.n_going, self.n_slow = int(counts[0]), int(counts[1])
        return u


@dataclass(frozen=True)
class OneStepGradient:
    """Jacobian-free gradient (Fung et al. 2022): λ ≈ g, i.e. one VJP of f at z*. Cheap, biased; works well
    when f is strongly contractive.

    >>> import numpy as np
    >>> p = FixedPointVJP(np.zeros(2), lambda z: (z, lambda v: (0.5 * v, 2.0 * v)))
    >>> grad, info = OneStepGradient().gradient(p, np.ones(2))
    >>> grad, info.nvjp
    (array([2., 2.]), 1)
    """

    def gradient(self, problem: FixedPointVJP, g: Any, x0: Any = None) -> tuple[Any, AdjointInfo]:
        evaluated = problem.pullback is None
        grad_theta = problem.pullback_at_fixed_point()(g)[1]
        return grad_theta, _approximate_info(g, problem.batched, {"num_steps": 0, "nvjp": 1, "nfev": int(evaluated)})


@dataclass(frozen=True)
class PhantomGradient:
    """Phantom gradient (Geng et al. 2021): backpropagate through ``steps`` damped iterations
    z ← (1 − damping)·z + damping·f(z) started at z*. Costs ``steps`` f-evaluations and VJPs.

    >>> import numpy as np
    >>> p = FixedPointVJP(np.zeros(1), lambda z: (0.5 * z + 1, lambda v: (0.5 * v, v)))
    >>> float(PhantomGradient(steps=40, damping=1.0).gradient(p, np.ones(1))[0][0])  # exact: 1/(1-0.5)
    2.0
    """

    steps: int = 5
    damping: float = 0.5

    def __post_init__(self):
        check_positive_int(self.steps, "steps")
        check_probability(self.damping, "damping")

    def gradient(self, problem: FixedPointVJP, g: Any, x0: Any = None) -> tuple[Any, AdjointInfo]:
        alpha = self.damping
        z = problem.z_star
        pullbacks = []
        for _ in range(self.steps):
            fz, pullback = problem.vjp(z)
            pullbacks.append(pullback)
            z = (1 - alpha) * z + alpha * fz
        v = g
        grad_theta = None
        for pullback in reversed(pullbacks):
            dz, dtheta = pullback(v)
            grad_theta = tree_add(grad_theta, tree_scale(dtheta, alpha))
            v = (1 - alpha) * v + alpha * dz
        stats = {"num_steps": self.steps, "nvjp": self.steps, "nfev": self.steps}
        return grad_theta, _approximate_info(v, problem.batched, stats)


def _approximate_info(lam, batched, stats) -> AdjointInfo:
    """The AdjointInfo of a gradient that solves no system (SUCCESS, zero residual)."""
    xp = get_namespace(lam)
    rows = lam.shape[0] if batched else 1
    return _info(lam, xp.zeros(rows, dtype=np.int64), xp.zeros(rows), stats, batched)
