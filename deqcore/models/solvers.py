"""How a DEQ model runs its solver: fixed-point solvers on z = f(z), ODE solvers on dz/dt = f(z) − z.

Every model's forward solve goes through :func:`solve_equilibrium` (or :func:`integrate_span` for a neural
ODE), batched (one system per sample) and without raising on non-convergence: the return codes are recorded in
the model's solution.
"""

from __future__ import annotations

from ..adjoint import ode_gradients
from ..ode import integrate, steady_state
from ..ode.base import ODEMethod
from ..root import RootSolver, fixed_point

__all__ = ["check_solver", "is_ode_solver", "solve_equilibrium", "integrate_span", "ode_parameter_gradient"]


def is_ode_solver(solver) -> bool:
    """True for deqcore's ODE solvers (Tsit5, VCAB3, VCABM3, Rodas3)."""
    return isinstance(solver, ODEMethod)


def check_solver(solver) -> None:
    """Accept deqcore's root finders and ODE solvers; anything else is a TypeError naming ``solver``."""
    if not isinstance(solver, (RootSolver, ODEMethod)):
        raise TypeError("solver must be a deqcore root finder (dq.Anderson(), dq.Broyden(), dq.NewtonRaphson(), ...) "
                        f"or an ODE solver (dq.VCABM3(), dq.Tsit5(), ...); got {type(solver).__name__}")


def solve_equilibrium(f, u0, solver, *, atol, rtol, max_steps, args=(), compact=False):
    """z* with z* = f(z*, *args), per sample, as a ``deqcore.Solution`` (stats["nfev"] counts f-evaluations,
    stats["row_evaluations"] the rows evaluated). ``compact=True`` (root solvers only): f's rows are independent
    and every element of ``args`` holds the batch on its leading axis, so finished samples drop out of the
    evaluations (see :func:`deqcore.fixed_point`)."""
    if is_ode_solver(solver):
        if compact:
            raise ValueError(f"compact=True needs a root solver; the ODE solver {type(solver).__name__} evaluates "
                             "every sample")
        return steady_state(lambda t, z, *a: f(z, *a) - z, u0, solver, args=args, atol=atol, rtol=rtol,
                            max_steps=max_steps, batched=True, throw=False)
    return fixed_point(f, u0, solver, args=args, atol=atol, rtol=rtol, max_steps=max_steps, batched=True,
                       throw=False, compact=compact)


def integrate_span(f, u0, solver, tspan, *, atol, rtol, max_steps):
    """Integrate dz/dt = f(z) − z over ``tspan`` (a vanilla neural ODE); the ODE solution has ``.value`` (the
    state at t1), ``.residual`` and ``.stats`` like a steady-state solve."""
    return integrate(lambda t, z: f(z) - z, u0, tspan, solver, atol=atol, rtol=rtol, max_steps=max_steps,
                     throw=False)


def ode_parameter_gradient(theta_vjp, ode_solution, g, adjoint):
    """``(∂<g, z(t1)>/∂θ, None)`` through the ODE solution, by ``adjoint``; ``theta_vjp`` is f's VJP."""

    def vjp(t, z, args=None):
        fz, pullback = theta_vjp(z)
        return fz - z, lambda a: _minus_identity(pullback(a), a)

    _, dtheta = ode_gradients(vjp, ode_solution, g, adjoint=adjoint)
    return dtheta, None


def _minus_identity(result, a):
    dz, dtheta = result
    return dz - a, dtheta
