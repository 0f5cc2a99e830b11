"""Gradients through ODE solutions: ``ode_gradients(vjp, solution, dL_dyT, adjoint)``.

The right-hand side enters through its vector–Jacobian product, so any model can plug in:
``vjp(t, y, args) -> (f, pullback)`` with ``f = rhs(t, y, *args)`` and
``pullback(a) -> (aᵀ ∂f/∂y, aᵀ ∂f/∂args)``. ``args`` is the tuple given to :func:`~deqcore.ode.integrate`;
the parameter cotangent may be any tree of arrays (nested dicts/lists/tuples, as deqcore stores parameters;
None for no parameters) and is returned with the same structure.

Three adjoints:

* :class:`GaussAdjoint` (default) — integrates λ backwards along the stored dense forward solution and
  accumulates ∫λᵀ ∂f/∂θ dt by Gauss–Legendre quadrature on every adjoint step. Stable and memory-light.
* :class:`BacksolveAdjoint` — integrates the augmented system [y, λ, μ] backwards from y(t1): no stored
  forward solution, but the reverse-time y can drift from the forward one on dissipative or chaotic
  problems (less stable).
* :class:`DiscreteAdjoint` — exact gradient of the discrete explicit Runge–Kutta solution
  (discretise-then-optimise): replays the accepted steps from their stored start states and backpropagates
  through the stages (accepted step sizes held fixed).

>>> import numpy as np, deqcore as dq
>>> k = np.array([0.5])
>>> sol = dq.integrate(lambda t, y, k: -k * y, np.array([2.0]), (0.0, 1.0), args=(k,), atol=1e-10, rtol=1e-10)
>>> vjp = lambda t, y, args: (-args[0] * y, lambda a: (-args[0] * a, (-(a * y),)))
>>> dy0, (dk,) = dq.ode_gradients(vjp, sol, np.ones(1))       # L = y(1) = 2 exp(-k)
>>> bool(np.allclose(dy0, np.exp(-0.5), atol=1e-7)), bool(np.allclose(dk, -2 * np.exp(-0.5), atol=1e-7))
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._checks import check_callable, check_positive_int, check_tolerance
from .._tree import tree_add, tree_leaves, tree_map
from ..backend import check_finite, check_float_array, get_namespace
from ..ode import Tsit5, integrate
from ..ode.base import ODEMethod
from ..ode.solution import ODESolution, interpolate
from ..ode.tableaus import ButcherTableau
from ..results import SolveError

__all__ = ["GaussAdjoint", "BacksolveAdjoint", "DiscreteAdjoint", "ode_gradients"]


def _check_settings(obj):
    if obj.solver is not None and not isinstance(obj.solver, ODEMethod):
        raise TypeError(f"solver must be an ODE method such as dq.Tsit5(), got {type(obj.solver).__name__}")
    for name in ("atol", "rtol"):
        if getattr(obj, name) is not None:
            check_tolerance(getattr(obj, name), name)
    check_positive_int(obj.max_steps, "max_steps")


@dataclass(frozen=True)
class GaussAdjoint:
    """Adjoint by backward integration of λ on the dense forward solution plus Gauss–Legendre quadrature
    (``quadrature_points`` nodes per adjoint step) of λᵀ ∂f/∂θ. The default ODE adjoint.

    Args:
        solver: method for the adjoint λ (default Tsit5).
        atol, rtol: adjoint tolerances (default: the forward solve's).
        quadrature_points: Gauss–Legendre nodes per step (exact for polynomials of degree 2n − 1).
        max_steps: step cap of the adjoint integration.

    >>> import numpy as np, deqcore as dq
    >>> k = np.array([0.5])
    >>> sol = dq.integrate(lambda t, y, k: -k * y, np.ones(1), (0.0, 1.0), args=(k,), atol=1e-10, rtol=1e-10)
    >>> vjp = lambda t, y, args: (-args[0] * y, lambda a: (-args[0] * a, (-(a * y),)))
    >>> _, (dk,) = dq.ode_gradients(vjp, sol, np.ones(1), dq.GaussAdjoint())   # L = y(1) = exp(-k)
    >>> bool(np.allclose(dk, -np.exp(-0.5), atol=1e-7))
    True
    """

    solver: Any = None
    atol: float | None = None
    rtol: float | None = None
    quadrature_points: int = 3
    max_steps: int = 100_000

    def __post_init__(self):
        _check_settings(self)
        check_positive_int(self.quadrature_points, "quadrature_points")

    def gradients(self, vjp: Callable, solution: ODESolution, dL_dyT: Any) -> tuple[Any, Any]:
        p = solution.problem
        args = p.args
        nodes, weights = np.polynomial.legendre.leggauss(self.quadrature_points)
        nodes, weights = (nodes + 1.0) / 2.0, weights / 2.0

        def adjoint_rhs(t, lam):
            return -vjp(t, solution(t), args)[1](lam)[0]

        back = integrate(adjoint_rhs, dL_dyT, (p.t1, p.t0), self.solver or Tsit5(),
                         atol=_or(self.atol, p.atol), rtol=_or(self.rtol, p.rtol), max_steps=self.max_steps,
                         throw=False)
        if not back.success:
            raise SolveError(f"GaussAdjoint: the backward integration of the adjoint λ failed with "
                             f"{back.result.name} at t = {back.t_final}: on a stiff problem the adjoint is "
                             "as stiff as the forward solve; pass an implicit method, e.g. "
                             "dq.GaussAdjoint(solver=dq.Radau()), or raise max_steps", back)
        dargs = None
        for step in back.steps:
            # dL/dθ = ∫_{t0}^{t1} λᵀ ∂f/∂θ dt; the adjoint runs from t1 to t0, so each of its steps adds its
            # piece of the integral with the weight −h (signed: the span may run either way)
            # (Python floats: NumPy's float64 scalars would promote a float32 problem's gradients)
            h = float(step.h)
            for node, weight in zip(nodes.tolist(), weights.tolist()):
                t = float(step.t) + node * h
                contribution = vjp(t, solution(t), args)[1](interpolate(step, t, back._tableau))[1]
                dargs = tree_add(dargs, tree_map(lambda g: (-weight * h) * g, contribution))
        return back.y_final, dargs


@dataclass(frozen=True)
class BacksolveAdjoint:
    """Adjoint by integrating the augmented system [y, λ, μ] backwards from [y(t1), ∂L/∂y(t1), 0]:
    dy/dt = f, dλ/dt = −λᵀ ∂f/∂y, dμ/dt = −λᵀ ∂f/∂θ. Needs no stored forward trajectory and is often the
    fastest, but it is less stable: y is recomputed in reverse time, which amplifies errors on dissipative
    (contracting) or chaotic dynamics, so gradients can be inaccurate there — prefer :class:`GaussAdjoint`.

    Args: as :class:`GaussAdjoint` (no quadrature).

    >>> import numpy as np, deqcore as dq
    >>> k = np.array([0.5])
    >>> sol = dq.integrate(lambda t, y, k: -k * y, np.ones(1), (0.0, 1.0), args=(k,), atol=1e-10, rtol=1e-10)
    >>> vjp = lambda t, y, args: (-args[0] * y, lambda a: (-args[0] * a, (-(a * y),)))
    >>> _, (dk,) = dq.ode_gradients(vjp, sol, np.ones(1), dq.BacksolveAdjoint())   # L = y(1) = exp(-k)
    >>> bool(np.allclose(dk, -np.exp(-0.5), atol=1e-7))
    True
    """

    solver: Any = None
    atol: float | None = None
    rtol: float | None = None
    max_steps: int = 100_000

    def __post_init__(self):
        _check_settings(self)

    def gradients(self, vjp: Callable, solution: ODESolution, dL_dyT: Any) -> tuple[Any, Any]:
        p = solution.problem
        args = p.args
        y1 = solution.y_final
        xp = get_namespace(y1)
        shape, n = y1.shape, y1.size
        template = vjp(p.t1, y1, args)[1](dL_dyT)[1]
        sizes = [leaf.size for leaf in tree_leaves(template)]

        def augmented(t, z):
            y, lam = z[:n].reshape(shape), z[n:2 * n].reshape(shape)
            f, pullback = vjp(t, y, args)
            dy, dargs = pullback(lam)
            return xp.concatenate([f.reshape(-1), -dy.reshape(-1)] +
                                  [-xp.reshape(leaf, (-1,)) for leaf in tree_leaves(dargs)])

        z1 = xp.concatenate([y1.reshape(-1), dL_dyT.reshape(-1), xp.zeros(sum(sizes), dtype=y1.dtype)])
        atol = _or(self.atol, p.atol)
        if np.ndim(atol):       # the forward's per-component atol for y and λ; its smallest for the parameters
            flat = np.ravel(atol)
            atol = np.concatenate([flat, flat, np.full(sum(sizes), flat.min())])
        back = integrate(augmented, z1, (p.t1, p.t0), self.solver or Tsit5(), atol=atol,
                         rtol=_or(self.rtol, p.rtol), max_steps=self.max_steps, throw=False)
        if not back.success:
            raise SolveError(f"BacksolveAdjoint: the reverse-time integration of [y, λ, μ] failed with "
                             f"{back.result.name} at t = {back.t_final}: y recomputed backwards from y(t1) "
                             "grows where the forward dynamics contract (stiff or dissipative problems); use "
                             "dq.GaussAdjoint(), which reads y from the stored forward solution", back)
        z0 = back.y_final
        return z0[n:2 * n].reshape(shape), _unravel(z0[2 * n:], template)


@dataclass(frozen=True)
class DiscreteAdjoint:
    """Exact gradients of the discrete solution of an explicit Runge–Kutta method (Tsit5):
    discretise-then-optimise. The forward solve keeps each accepted step's start state and size (the
    checkpoints); the reverse pass recomputes that step's stages with VJPs and backpropagates through them,
    last step first. Costs about one VJP per stage and step; the accepted step sizes are held fixed.

    >>> import numpy as np, deqcore as dq
    >>> k = np.array([0.5])
    >>> sol = dq.integrate(lambda t, y, k: -k * y, np.ones(1), (0.0, 1.0), args=(k,), atol=1e-10, rtol=1e-10)
    >>> vjp = lambda t, y, args: (-args[0] * y, lambda a: (-args[0] * a, (-(a * y),)))
    >>> _, (dk,) = dq.ode_gradients(vjp, sol, np.ones(1), dq.DiscreteAdjoint())   # L = y(1) = exp(-k)
    >>> bool(np.allclose(dk, -np.exp(-0.5), atol=1e-7))
    True
    """

    def gradients(self, vjp: Callable, solution: ODESolution, dL_dyT: Any) -> tuple[Any, Any]:
        tableau = getattr(solution.problem.solver, "tableau", None)
        if not isinstance(tableau, ButcherTableau):
            raise TypeError("DiscreteAdjoint needs an explicit Runge–Kutta forward solve (dq.Tsit5()); use "
                            "GaussAdjoint or BacksolveAdjoint for other methods")
        args = solution.problem.args
        a, b, c = tableau.a, tableau.b, tableau.c
        # stages that feed nothing (the FSAL stage f(y1)) need no recomputation
        s = max(i for i in range(tableau.stages) if b[i] != 0.0 or a[:, i].any()) + 1
        ybar, dargs = dL_dyT, None
        a, b, c = a.tolist(), b.tolist(), c.tolist()     # Python floats: a float32 problem stays float32
        for step in reversed(solution.steps):
            h = float(step.h)
            pullbacks, ks = [], []
            for i in range(s):
                stage_y = step.y0
                for j in range(i):
                    if a[i][j] != 0.0:
                        stage_y = stage_y + (h * a[i][j]) * ks[j]
                k, pullback = vjp(float(step.t) + c[i] * h, stage_y, args)
                ks.append(k)
                pullbacks.append(pullback)
            kbar = [(h * b[i]) * ybar if b[i] != 0.0 else None for i in range(s)]
            y0bar = ybar
            for i in reversed(range(s)):
                if kbar[i] is None:
                    continue
                stage_bar, darg = pullbacks[i](kbar[i])
                dargs = tree_add(dargs, darg)
                y0bar = y0bar + stage_bar
                for j in range(i):
                    if a[i][j] != 0.0:
                        contribution = (h * a[i][j]) * stage_bar
                        kbar[j] = contribution if kbar[j] is None else kbar[j] + contribution
            ybar = y0bar
        return ybar, dargs


def ode_gradients(vjp: Callable, solution: ODESolution, dL_dyT: Any,
                  adjoint: GaussAdjoint | BacksolveAdjoint | DiscreteAdjoint | None = None
                  ) -> tuple[Any, Any]:
    """Gradients of a loss ``L(y(t1))`` with respect to ``y0`` and the ``args`` of an :func:`integrate` solve.

    Args:
        vjp: ``vjp(t, y, args) -> (f, pullback)`` with ``pullback(a) -> (aᵀ ∂f/∂y, aᵀ ∂f/∂args)``; ``args`` is
            the forward solve's ``args`` tuple and the second cotangent any tree of arrays (or None).
        solution: a successful :class:`~deqcore.ode.ODESolution` from :func:`~deqcore.ode.integrate`.
        dL_dyT: ``∂L/∂y(t1)``, the shape of ``y0``.
        adjoint: :class:`GaussAdjoint` (default), :class:`BacksolveAdjoint` or :class:`DiscreteAdjoint`.

    Returns:
        ``(dL_dy0, dL_dargs)``; ``dL_dargs`` has the structure of the pullback's parameter cotangent.

    >>> import numpy as np, deqcore as dq
    >>> k = np.array([2.0])
    >>> sol = dq.integrate(lambda t, y, k: -k * y, np.ones(1), (0.0, 1.0), args=(k,), atol=1e-10, rtol=1e-10)
    >>> vjp = lambda t, y, args: (-args[0] * y, lambda a: (-args[0] * a, (-(a * y),)))
    >>> dy0, (dk,) = dq.ode_gradients(vjp, sol, np.ones(1))           # L = y(1) = y0 exp(-k)
    >>> bool(np.allclose(dy0, np.exp(-2.0), atol=1e-7)), bool(np.allclose(dk, -np.exp(-2.0), atol=1e-7))
    (True, True)
    """
    check_callable(vjp, "vjp")
    if not isinstance(solution, ODESolution):
        raise TypeError(f"solution must be an ODESolution from dq.integrate, got {type(solution).__name__}")
    if not solution.success:
        raise ValueError(f"solution did not succeed ({solution.result.name}); gradients need a complete "
                         "solve")
    adjoint = GaussAdjoint() if adjoint is None else adjoint
    if not isinstance(adjoint, (GaussAdjoint, BacksolveAdjoint, DiscreteAdjoint)):
        raise TypeError("adjoint must be dq.GaussAdjoint(), dq.BacksolveAdjoint() or dq.DiscreteAdjoint(); "
                        f"got {type(adjoint).__name__}")
    check_float_array(dL_dyT, "dL_dyT")
    check_finite(dL_dyT, "dL_dyT")
    if dL_dyT.dtype != solution.y_final.dtype:
        raise TypeError(f"dL_dyT must have the dtype of y0 ({solution.y_final.dtype}), got {dL_dyT.dtype}")
    if tuple(dL_dyT.shape) != tuple(solution.y_final.shape):
        raise ValueError(f"dL_dyT must have the shape of y0 {tuple(solution.y_final.shape)}, got "
                         f"{tuple(dL_dyT.shape)}")
    return adjoint.gradients(vjp, solution, dL_dyT)


def _or(value, default):
    return default if value is None else value


def _unravel(flat, template):
    """Split a flat vector into a tree shaped like ``template``."""
    offsets = iter(np.cumsum([0] + [leaf.size for leaf in tree_leaves(template)]).tolist())
    start = next(offsets, 0)

    def take(leaf):
        nonlocal start
        stop = next(offsets)
        piece = flat[start:stop].reshape(leaf.shape)
        start = stop
        return piece

    return tree_map(take, template)
