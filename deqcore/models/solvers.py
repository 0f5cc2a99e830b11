"""How a DEQ model runs its solver: fixed-point solvers on z = f(z), ODE solvers on dz/dt = f(z) − z.

Every model's forward solve goes through :func:`run_solver`, batched (one system per sample) and without
raising on non-convergence: the return codes are recorded in the model's solution.
"""

from __future__ import annotations

from ..adjoint import ode_gradients
from ..ode import integrate, steady_state
from ..ode.base import ODEMethod
from ..root import RootSolver, fixed_point

__all__ = ["run_solver", "is_ode_solver", "is_root_solver"]


def is_ode_solver(solver) -> bool:
    """True for deqcore's ODE solvers (Tsit5, VCAB3, VCABM3, Rodas3)."""
    return isinstance(solver, ODEMethod)


def is_root_solver(solver) -> bool:
    """True for deqcore's root-finding and fixed-point solvers."""
    return isinstance(solver, RootSolver)


class _RunSolver:
    """Callable namespace: ``run_solver(f, u0, solver, ...)``, ``run_solver.integrate(...)``, ..."""

    @staticmethod
    def check(solver) -> None:
        if not (is_root_solver(solver) or is_ode_solver(solver)):
            raise TypeError("solver must be a deqcore root finder (dq.Anderson(), dq.Broyden(), dq.NewtonRaphson(),"
                            " ...) or an ODE solver (dq.VCABM3(), dq.Tsit5(), ...); got "
                            f"{type(solver).__name__}")

    def __call__(self, f, u0, solver, *, atol, rtol, max_steps):
        """z* with z* = f(z*), per sample, as a ``deqcore.Solution`` (stats["nfev"] counts f-evaluations)."""
        if is_ode_solver(solver):
            return steady_state(lambda t, z: f(z) - z, u0, solver, atol=atol, rtol=rtol, max_steps=max_steps,
                                batched=True, throw=False)
        return fixed_point(f, u0, solver, atol=atol, rtol=rtol, max_steps=max_steps, batched=True, throw=False)

    @staticmethod
    def integrate(f, u0, solver, tspan, *, atol, rtol, max_steps):
        """Integrate dz/dt = f(z) − z over ``tspan`` (a vanilla neural ODE); returns the ODE solution with
        ``.value`` (the state at t1), ``.residual`` and ``.stats`` like a steady-state solve."""
        return integrate(lambda t, z: f(z) - z, u0, tspan, solver, atol=atol, rtol=rtol, max_steps=max_steps,
                         throw=False)

    @staticmethod
    def ode_gradient(theta_vjp, ode_solution, g, adjoint):
        """``(∂<g, z(t1)>/∂θ, info)`` through the ODE solution, by ``adjoint``."""
        def vjp(t, z, args=None):
            fz, pullback = theta_vjp(z)
            return fz - z, lambda a: _minus_identity(pullback(a), a)

        _, dtheta = ode_gradients(vjp, ode_solution, g, adjoint=adjoint)
        return dtheta, None


def _minus_identity(result, a):
    dz, dtheta = result
    return dz - a, dtheta


run_solver = _RunSolver()
