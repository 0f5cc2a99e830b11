"""Newton–Raphson (dense LU or matrix-free GMRES, optional backtracking line search) and a dogleg trust region.

>>> import numpy as np, deqcore as dq
>>> fn = lambda y: np.array([y[0] ** 2 + y[1] ** 2 - 4.0, y[0] - y[1]])
>>> sol = dq.root_find(fn, np.array([1.0, 0.5]), dq.NewtonRaphson(), atol=1e-12)
>>> bool(np.allclose(sol.value, np.sqrt(2.0)))
True
>>> bool(np.allclose(dq.root_find(fn, np.array([1.0, 0.5]), dq.TrustRegion(), atol=1e-12).value, np.sqrt(2.0)))
True
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Any

import numpy as np

from .._checks import check_choice, check_positive_int, check_tolerance
from ..linalg import GMRES, LU, LinearOperator
from ..linalg.norms import row_norms
from ..results import ReturnCode
from .base import IterateState, RootSolver

__all__ = ["NewtonRaphson", "TrustRegion", "NewtonState", "TrustRegionState", "DENSE_LIMIT"]

#: NewtonRaphson(linear_solver=None) builds dense Jacobians up to this many unknowns per system, else uses GMRES
DENSE_LIMIT = 64


def _sq(a):
    return (a * a).sum(axis=1)


def _cauchy(xp, g, Jg):
    """The steepest-descent minimiser of ½‖F + J p‖² along −g: −g·‖g‖²/‖Jg‖² (ratios of scaled norms)."""
    g_norm, jg_norm = row_norms(xp, g), row_norms(xp, Jg)
    ratio = g_norm / xp.where(jg_norm > 0, jg_norm, 1)
    return -g * xp.where(jg_norm > 0, ratio * ratio, 0)[:, None]


def _dense_step(xp, J, f):
    """Solve J δ = −f by LU; singular samples get the Cauchy (steepest-descent) step of ½‖F‖² instead."""
    factors = LU().factor(J)
    delta = factors.solve(-f)
    singular = xp.asarray(factors.singular).reshape(-1)
    if bool(singular.any()):
        g = xp.matmul(xp.swapaxes(J, 1, 2), f[:, :, None])[:, :, 0]
        delta = xp.where(singular[:, None], _cauchy(xp, g, xp.matmul(J, g[:, :, None])[:, :, 0]), delta)
    return delta, factors


@dataclass
class NewtonState(IterateState):
    """Newton's state: the iterate and residual, and the LU factors of the last dense Jacobian (None with GMRES)."""

    factors: Any = None


@dataclass
class TrustRegionState(IterateState):
    """The dogleg's state: per-sample radius (B,) and its cap (B,), the dense Jacobian at y (B, n, n), its last LU
    factors."""

    radius: Any = None
    J: Any = None
    factors: Any = None
    max_radius: Any = None


@dataclass(frozen=True)
class NewtonRaphson(RootSolver):
    """Newton's method: solve J δ = −F(y), then y ← y + t·δ.

    Args:
        linear_solver: ``None`` (dense LU up to ``DENSE_LIMIT`` unknowns per system or when ``jac=`` is given, else
            GMRES), ``dq.LU()`` (dense Jacobian from ``jac=`` or batched finite differences), or
            ``dq.GMRES(...)`` (matrix-free Newton–Krylov on finite-difference JVPs).
        linesearch: "backtracking" (Armijo on ½‖F‖², halving t per sample up to ``max_backtracks`` times) or
            None (full steps).

    >>> import numpy as np, deqcore as dq
    >>> fn = lambda y: y ** 2 - np.array([4.0, 9.0])
    >>> sol = dq.root_find(fn, np.ones(2), dq.NewtonRaphson(), jac=lambda y: np.diag(2 * y), atol=1e-10)
    >>> bool(np.allclose(sol.value, [2.0, 3.0])), sol.success
    (True, True)
    """

    linear_solver: Any = None
    linesearch: Any = "backtracking"
    max_backtracks: int = 10
    linsolve: InitVar[Any] = None          # the former name: refused with a pointer to ``linear_solver``

    def __post_init__(self, linsolve):
        if linsolve is not None:
            raise TypeError("NewtonRaphson's linsolve= is now called linear_solver=: pass "
                            "NewtonRaphson(linear_solver=...)")
        if self.linear_solver is not None and not isinstance(self.linear_solver, (LU, GMRES)):
            raise TypeError("linear_solver must be None, dq.LU() or dq.GMRES(...), got "
                            f"{type(self.linear_solver).__name__}")
        check_choice(self.linesearch, "linesearch", ("backtracking", None))
        check_positive_int(self.max_backtracks, "max_backtracks")

    def _dense(self, problem):
        if self.linear_solver is None:
            return problem.has_jac or problem.n <= DENSE_LIMIT
        return isinstance(self.linear_solver, LU)

    def init(self, problem, y, f) -> NewtonState:
        return NewtonState(y, f)

    def step(self, problem, state: NewtonState):
        """One Newton step; samples whose linear solve gave a non-finite step are reported as failed."""
        xp = problem.xp
        y, f = state.y, state.f
        if self._dense(problem):
            delta, state.factors = _dense_step(xp, problem.jacobian(y, f), f)
        else:
            gmres = self.linear_solver if isinstance(self.linear_solver, GMRES) else GMRES(rtol=1e-3, restart=20, max_steps=40)
            n = problem.n
            op = LinearOperator(lambda v: problem.jvp(y, f, v), shape=(n, n), dtype=problem.dtype)
            delta = gmres.solve(op, -f).value
        finite = xp.isfinite(delta).all(axis=1)
        failed = xp.where(finite, 0, int(ReturnCode.LINEAR_SOLVE_FAILED))
        delta = xp.where(finite[:, None], delta, 0)
        if self.linesearch is None:
            y_new = y + delta
            state.y, state.f = y_new, problem.F(y_new)
        else:
            state.y, state.f = self._backtrack(problem, y, f, delta)
        return state, failed

    def _backtrack(self, problem, y, f, delta):
        """Armijo backtracking per sample: accept t when ‖F(y + tδ)‖² ≤ (1 − 2·1e-4·t)‖F(y)‖² (norms relative to
        ‖F(y)‖, so the test reads the same at any scale of F)."""
        xp = problem.xp
        norm0 = row_norms(xp, f)
        unit = xp.where(norm0 > 0, norm0, 1)
        t = xp.ones(y.shape[0], dtype=y.dtype)
        accepted = xp.zeros(y.shape[0], dtype=bool)
        y_best, f_best, phi_best = y, f, xp.where(norm0 > 0, 1.0, 0.0)
        for _ in range(self.max_backtracks + 1):
            trial = y + t[:, None] * delta
            f_trial = problem.F(trial)
            phi = (row_norms(xp, f_trial) / unit) ** 2
            ok = ~accepted & xp.isfinite(phi) & (phi <= 1 - 2e-4 * t)
            take = ok | (~accepted & xp.isfinite(phi) & (phi < phi_best))
            phi_best = xp.where(take, phi, phi_best)
            y_best = xp.where(take[:, None], trial, y_best)
            f_best = xp.where(take[:, None], f_trial, f_best)
            accepted = accepted | ok
            if bool(accepted.all()):
                break
            t = xp.where(accepted, t, 0.5 * t)
        return y_best, f_best

    def learned(self, state) -> dict:
        """``lu``: the LU factors of the last dense Jacobian of F (reusable for transpose solves)."""
        return {} if state.factors is None else {"lu": state.factors}


@dataclass(frozen=True)
class TrustRegion(RootSolver):
    """Dogleg trust region on ½‖F‖² with a dense Jacobian (Nocedal & Wright, Algorithms 4.1 and 11.5).

    The radius shrinks to a quarter of the step when the model predicts badly (ρ < 1/4) and doubles, up to
    ``max_radius``, when it predicts well (ρ > 3/4) and the step reached the boundary; steps with ρ ≤ ``eta``
    are rejected. The first radius is ``initial_radius``·max(1, ‖y0‖), its cap ``max_radius``·max(1, ‖y0‖); the
    model's reductions are measured relative to ‖F(y)‖², so the iteration reads the same at any scale of y and F.

    >>> import numpy as np, deqcore as dq
    >>> fn = lambda y: np.array([10.0 * (y[1] - y[0] ** 2), 1.0 - y[0]])      # Rosenbrock's root (1, 1)
    >>> sol = dq.root_find(fn, np.array([-1.2, 1.0]), dq.TrustRegion(), atol=1e-10)
    >>> bool(np.allclose(sol.value, [1.0, 1.0]))
    True
    """

    initial_radius: float = 1.0
    max_radius: float = 1e10
    eta: float = 1e-4

    def __post_init__(self):
        for name in ("initial_radius", "max_radius"):
            if check_tolerance(getattr(self, name), name) == 0:
                raise ValueError(f"{name} must be > 0")
        if not 0 <= check_tolerance(self.eta, "eta") < 0.25:
            raise ValueError(f"eta must lie in [0, 0.25), got {self.eta}")

    def init(self, problem, y, f) -> TrustRegionState:
        xp = problem.xp
        scale = xp.maximum(row_norms(xp, y), 1.0)
        return TrustRegionState(y, f, radius=self.initial_radius * scale, J=problem.jacobian(y, f),
                                max_radius=self.max_radius * scale)

    def step(self, problem, state: TrustRegionState):
        xp = problem.xp
        y, f, J, radius = state.y, state.f, state.J, state.radius
        gauss_newton, state.factors = _dense_step(xp, J, f)
        g = xp.matmul(xp.swapaxes(J, 1, 2), f[:, :, None])[:, :, 0]
        cauchy = _cauchy(xp, g, xp.matmul(J, g[:, :, None])[:, :, 0])
        p = self._dogleg(xp, gauss_newton, cauchy, g, radius)
        y_trial = y + p
        f_trial = problem.F(y_trial)
        model = f + xp.matmul(J, p[:, :, None])[:, :, 0]
        # reductions of ‖F‖² relative to ‖F(y)‖² (squares of raw norms overflow or underflow at extreme scales)
        unit = row_norms(xp, f)
        unit = xp.where(unit > 0, unit, 1)
        predicted = 1 - (row_norms(xp, model) / unit) ** 2
        actual = 1 - (row_norms(xp, f_trial) / unit) ** 2
        rho = xp.where(predicted > 0, actual / xp.where(predicted > 0, predicted, 1), -1.0)
        rho = xp.where(xp.isfinite(rho), rho, -1.0)
        step_norm = row_norms(xp, p)
        radius = xp.where(rho < 0.25, 0.25 * step_norm,
                          xp.where((rho > 0.75) & (step_norm >= 0.99 * radius),
                                   xp.minimum(2 * radius, state.max_radius), radius))
        accept = (rho > self.eta)[:, None]
        state.y = xp.where(accept, y_trial, y)
        state.f = xp.where(accept, f_trial, f)
        state.radius = xp.maximum(radius, float(np.finfo(y.dtype).tiny))
        if bool(accept.any()):
            state.J = xp.where(accept[:, :, None], problem.jacobian(state.y, state.f, adapt=accept[:, 0]), J)
        return state, None

    @staticmethod
    def _dogleg(xp, gauss_newton, cauchy, g, radius):
        gn_norm, c_norm, g_norm = row_norms(xp, gauss_newton), row_norms(xp, cauchy), row_norms(xp, g)
        boundary_sd = -g * (radius / xp.where(g_norm > 0, g_norm, 1))[:, None]
        # τ ∈ [0, 1] with ‖c + τ(gn − c)‖ = radius, in units of the radius (no squares of raw lengths)
        d, c_unit = (gauss_newton - cauchy) / radius[:, None], cauchy / radius[:, None]
        a, b, c = _sq(d), 2 * (c_unit * d).sum(axis=1), _sq(c_unit) - 1
        disc = xp.sqrt(xp.maximum(b * b - 4 * a * c, 0))
        tau = xp.clip((-b + disc) / xp.where(a > 0, 2 * a, 1), 0, 1)
        between = cauchy + tau[:, None] * (gauss_newton - cauchy)
        return xp.where((gn_norm <= radius)[:, None], gauss_newton,
                        xp.where((c_norm >= radius)[:, None], boundary_sd, between))
