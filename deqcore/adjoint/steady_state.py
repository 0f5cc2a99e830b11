"""Gradients through a fixed point z* = f(z*, θ) without backpropagating through the solver's iterations.

With g = ∂L/∂z*, the implicit function theorem gives ∂L/∂θ = λᵀ ∂f/∂θ where λ solves
(I − ∂f/∂zᵀ) λ = g. Three ways to get it, all taking the same :class:`FixedPointVJP` description of f:

* :class:`SteadyStateAdjoint` — solve for λ (dense LU for small states, batched matrix-free GMRES on VJPs
  otherwise, or any fixed-point solver on λ = g + ∂f/∂zᵀ λ);
* :class:`OneStepGradient` — the Jacobian-free approximation λ ≈ g (one VJP);
* :class:`PhantomGradient` — backpropagate through k damped steps z ← (1−α) z + α f(z) from z*.

>>> import numpy as np
>>> A = np.array([[0.5, 0.1], [0.0, 0.3]]); theta = np.array([1.0, 2.0])
>>> z_star = np.linalg.solve(np.eye(2) - A, theta)            # z* = A z* + θ
>>> problem = FixedPointVJP(z_star, lambda z: (A @ z + theta, lambda v: (A.T @ v, v)))
>>> grad, info = SteadyStateAdjoint().gradient(problem, np.ones(2))
>>> np.allclose(grad, np.linalg.solve((np.eye(2) - A).T, np.ones(2)))    # dL/dθ = (I − A)^-T g
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._checks import check_positive_int, check_probability
from .._tree import tree_add, tree_scale
from ..backend import get_namespace
from ..linalg import GMRES, LU, LinearOperator
from ..results import ReturnCode
from ..root import RootSolver, fixed_point

__all__ = [
    "FixedPointVJP",
    "AdjointInfo",
    "SteadyStateAdjoint",
    "OneStepGradient",
    "PhantomGradient",
    "default_adjoint_linsolve",
    "preconditioner_from_forward",
]


@dataclass
class FixedPointVJP:
    """What an adjoint needs to know about f at its fixed point.

    Args:
        z_star: the fixed point, shape ``(B, ...)`` when ``batched`` (one system per sample), else any shape.
        vjp: ``vjp(z) -> (f(z), pullback)`` with ``pullback(v) -> (∂f/∂zᵀ v, ∂f/∂θᵀ v)``; the θ part is any
            tree of arrays (or None).
        batched: whether the leading axis holds independent systems.
        pullback: the pullback of f at z* when the caller already has it (saves one evaluation of f).
    """

    z_star: Any
    vjp: Callable
    batched: bool = False
    pullback: Callable | None = None

    def pullback_at_fixed_point(self):
        """The pullback of f at z* (computed on first use when not given)."""
        if self.pullback is None:
            self.pullback = self.vjp(self.z_star)[1]
        return self.pullback


@dataclass
class AdjointInfo:
    """Statistics of an adjoint solve: ``lam`` (the adjoint vector), ``result`` (ReturnCode, per sample when
    batched), ``nvjp`` (VJP evaluations), ``num_steps`` (linear-solver iterations)."""

    lam: Any
    result: Any
    nvjp: int
    num_steps: int = 0


def default_adjoint_linsolve(state_size: int):
    """The reference's rule: dense LU up to 50 state elements per sample, otherwise GMRES with a small budget
    (at most 10 iterations, tolerance 1e-3) — cheap solves are normal in DEQ training.

    >>> type(default_adjoint_linsolve(10)).__name__, type(default_adjoint_linsolve(1000)).__name__
    ('LU', 'GMRES')
    """
    if state_size <= 50:
        return LU()
    return GMRES(rtol=1e-3, atol=1e-3, restart=10, max_steps=10)


def preconditioner_from_forward(learned: dict):
    """An approximation of (I − ∂f/∂zᵀ)⁻¹ from what a forward fixed-point solve learnt (``sol.learned``), or
    None. With F(z) = f(z) − z the adjoint matrix is −∂F/∂zᵀ, so Broyden's inverse-Jacobian estimate
    H ≈ (∂F/∂z)⁻¹ gives −Hᵀ, and Newton's LU factors of ∂F/∂z give −(∂F/∂z)⁻ᵀ directly. Works on flat
    (B, n) vectors, the layout of a batched solve.

    >>> import numpy as np
    >>> U, V = np.zeros((1, 1, 2)), np.zeros((1, 1, 2))          # H = −I: the identity preconditioner
    >>> preconditioner_from_forward({"inverse_jacobian": (U, V)})(np.ones((1, 2)))
    array([[1., 1.]])
    """
    if "lu" in learned:
        factors = learned["lu"]
        return lambda v: -factors.solve(v, transpose=True)
    if "inverse_jacobian" in learned:
        U, V = learned["inverse_jacobian"]
        xp = get_namespace(U)

        def apply(v):
            coefficients = xp.matmul(U, v[:, :, None])                     # (B, m, 1): uᵢ·v
            return v - xp.matmul(xp.swapaxes(V, 1, 2), coefficients)[:, :, 0]

        return apply
    return None


def _flat(z, batched):
    return z.reshape(z.shape[0], -1) if batched else z.reshape(-1)


@dataclass(frozen=True)
class SteadyStateAdjoint:
    """Implicit gradient: solve (I − ∂f/∂zᵀ) λ = g, then ∂L/∂θ = ∂f/∂θᵀ λ.

    Args:
        linsolve: ``None`` (dense LU for ≤ 50 state elements per sample, else GMRES capped at 10 iterations
            with tolerance 1e-3, as in the reference), ``dq.LU()`` (exact; costs one VJP per state element),
            ``dq.GMRES(...)`` (matrix-free; tighten ``rtol``/``max_steps`` for exact gradients), or a
            fixed-point solver (``dq.Anderson()``, ``dq.FixedPointIteration()``, ...) applied to
            λ = g + ∂f/∂zᵀ λ.
        atol, rtol, max_steps: tolerances when ``linsolve`` is a fixed-point solver.

    >>> import numpy as np, deqcore as dq
    >>> A = np.array([[[0.5, 0.2], [0.0, 0.4]]]); theta = np.ones((1, 2))       # f(z) = A z + θ, one sample
    >>> z_star = np.linalg.solve(np.eye(2) - A[0], theta[0])[None]
    >>> problem = FixedPointVJP(z_star, lambda z: (z @ A[0].T + theta, lambda v: (v @ A[0], v)), batched=True)
    >>> exact = np.linalg.solve((np.eye(2) - A[0]).T, np.ones(2))
    >>> for linsolve in (dq.LU(), dq.GMRES(rtol=1e-12), dq.Anderson()):
    ...     grad, info = dq.SteadyStateAdjoint(linsolve=linsolve, atol=1e-12).gradient(problem, np.ones((1, 2)))
    ...     print(type(linsolve).__name__, bool(np.allclose(grad[0], exact)))
    LU True
    GMRES True
    Anderson True
    """

    linsolve: Any = None
    atol: float = 1e-6
    rtol: float = 1e-5
    max_steps: int = 50

    def __post_init__(self):
        if self.linsolve is not None and not isinstance(self.linsolve, (LU, GMRES, RootSolver)):
            raise TypeError(
                "linsolve must be None, dq.LU(), dq.GMRES(...) or a fixed-point solver such as dq.Anderson(); "
                f"got {type(self.linsolve).__name__}")
        check_positive_int(self.max_steps, "max_steps")

    def gradient(self, problem: FixedPointVJP, g, x0=None, preconditioner=None):
        """``(∂L/∂θ, AdjointInfo)`` for the cotangent ``g = ∂L/∂z*``; ``x0`` warm-starts λ (e.g. the last one);
        ``preconditioner`` (flat (B, n) → (B, n), see :func:`preconditioner_from_forward`) approximates
        (I − ∂f/∂zᵀ)⁻¹ for GMRES."""
        info = self.solve_adjoint(problem, g, x0, preconditioner)
        info.nvjp += 1
        return problem.pullback_at_fixed_point()(info.lam)[1], info

    def solve_adjoint(self, problem: FixedPointVJP, g, x0=None, preconditioner=None) -> AdjointInfo:
        """Only λ with (I − ∂f/∂zᵀ) λ = g (no final parameter VJP): for callers that pull λ back through f
        themselves, such as the PyTorch and JAX adapters."""
        pullback = problem.pullback_at_fixed_point()
        batched = problem.batched
        xp = get_namespace(g)
        shape = g.shape
        n = int(np.prod(shape[1:] if batched else shape))
        linsolve = self.linsolve if self.linsolve is not None else default_adjoint_linsolve(n)
        count = {"nvjp": 0}

        def vjp_z(v_flat):
            count["nvjp"] += 1
            return _flat(pullback(v_flat.reshape(shape))[0], batched)

        g_flat = _flat(g, batched)
        if isinstance(linsolve, LU):
            lam_flat, result, steps = _dense_adjoint(vjp_z, g_flat, n, batched, xp)
        elif isinstance(linsolve, GMRES):
            op = LinearOperator(lambda v: v - vjp_z(v), shape=(n, n), dtype=g.dtype)
            x0_flat = None if x0 is None else _flat(x0, batched)
            sol = linsolve.solve(op, g_flat, x0=x0_flat, preconditioner=preconditioner if batched else None)
            lam_flat, result, steps = sol.value, sol.result, int(sol.stats.get("num_steps", 0))
        else:
            lam_flat, result, steps = self._fixed_point_adjoint(linsolve, vjp_z, g_flat, x0, batched)
        return AdjointInfo(lam_flat.reshape(shape), result, count["nvjp"], steps)

    def _fixed_point_adjoint(self, solver, vjp_z, g_flat, x0, batched):
        start = g_flat if x0 is None else _flat(x0, batched)
        sol = fixed_point(lambda lam: g_flat + vjp_z(lam), start, solver, atol=self.atol, rtol=self.rtol,
                          max_steps=self.max_steps, batched=batched, throw=False)
        return sol.value, sol.result, int(sol.stats.get("num_steps", 0))


def _dense_adjoint(vjp_z, g_flat, n, batched, xp):
    """Build ∂f/∂z row by row from n VJPs with basis vectors, then solve (I − J)ᵀ λ = g by LU."""
    eye = xp.eye(n, dtype=g_flat.dtype)
    if batched:
        batch = g_flat.shape[0]
        rows = [vjp_z(xp.broadcast_to(eye[j], (batch, n)).copy()) for j in range(n)]
        jac = xp.stack(rows, axis=1)                       # (B, n, n): row j of each sample's J
        system = eye[None] - jac
    else:
        jac = xp.stack([vjp_z(eye[j]) for j in range(n)], axis=0)
        system = eye - jac
    factors = LU().factor(system)
    lam = factors.solve(g_flat, transpose=True)
    singular = factors.singular
    if batched:
        result = xp.where(xp.asarray(singular), int(ReturnCode.LINEAR_SOLVE_FAILED), int(ReturnCode.SUCCESS))
        lam = xp.where(xp.asarray(singular)[:, None], xp.zeros_like(lam), lam)
    else:
        result = ReturnCode.LINEAR_SOLVE_FAILED if bool(singular) else ReturnCode.SUCCESS
        if bool(singular):
            lam = xp.zeros_like(lam)
    return lam, result, n


@dataclass(frozen=True)
class OneStepGradient:
    """Jacobian-free gradient (Fung et al. 2022): λ ≈ g, i.e. one VJP of f at z*. Cheap, biased; works well
    when f is strongly contractive.

    >>> import numpy as np
    >>> p = FixedPointVJP(np.zeros(2), lambda z: (z, lambda v: (0.5 * v, 2.0 * v)))
    >>> OneStepGradient().gradient(p, np.ones(2))[0]
    array([2., 2.])
    """

    def gradient(self, problem: FixedPointVJP, g, x0=None):
        grad_theta = problem.pullback_at_fixed_point()(g)[1]
        ok = ReturnCode.SUCCESS
        if problem.batched:
            ok = get_namespace(g).zeros(g.shape[0], dtype=np.int64)
        return grad_theta, AdjointInfo(g, ok, 1, 0)


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

    def gradient(self, problem: FixedPointVJP, g, x0=None):
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
        ok = ReturnCode.SUCCESS
        if problem.batched:
            ok = get_namespace(g).zeros(g.shape[0], dtype=np.int64)
        return grad_theta, AdjointInfo(v, ok, self.steps, self.steps)
