"""Adjoints: gradients through ODE solutions (:func:`ode_gradients`) and through fixed points / steady
states (``deqcore.adjoint.steady_state``)."""

from .ode import BacksolveAdjoint, DiscreteAdjoint, GaussAdjoint, ode_gradients

__all__ = ["GaussAdjoint", "BacksolveAdjoint", "DiscreteAdjoint", "ode_gradients"]
