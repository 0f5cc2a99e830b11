"""Adjoints: gradients through ODE solutions (:func:`ode_gradients`) and through fixed points / steady
states (:class:`SteadyStateAdjoint`, :class:`OneStepGradient`, :class:`PhantomGradient`, all returning an
:class:`AdjointInfo` with ``Solution``'s contract)."""

from .ode import BacksolveAdjoint, DiscreteAdjoint, GaussAdjoint, ode_gradients
from .steady_state import AdjointInfo, FixedPointVJP, OneStepGradient, PhantomGradient, SteadyStateAdjoint

__all__ = ["GaussAdjoint", "BacksolveAdjoint", "DiscreteAdjoint", "ode_gradients", "AdjointInfo", "FixedPointVJP",
           "OneStepGradient", "PhantomGradient", "SteadyStateAdjoint"]
