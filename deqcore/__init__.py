"""deqcore: Deep Equilibrium Models and the solvers under them, on NumPy and CuPy arrays.

>>> import numpy as np, deqcore as dq
>>> isinstance(dq.__version__, str)
True
"""

from ._version import __version__
from .backend import get_namespace
from .results import ReturnCode, SolveError, Solution

__all__ = ["__version__", "get_namespace", "ReturnCode", "SolveError", "Solution"]

# --- linalg ---
from .linalg import GMRES, LU, LinearOperator, linear_solve  # noqa: E402

__all__ += ["GMRES", "LU", "LinearOperator", "linear_solve"]
# --- root ---
from .root import (  # noqa: E402
    Anderson, Broyden, FixedPointIteration, LimitedMemoryBroyden, NewtonRaphson, TrustRegion, fixed_point, root_find,
)

__all__ += ["Anderson", "Broyden", "FixedPointIteration", "LimitedMemoryBroyden", "NewtonRaphson", "TrustRegion",
            "fixed_point", "root_find"]
# --- ode ---
from .ode import BDF, Radau, VCAB3, VCABM3, ODESolution, Rodas3, Rodas4, Rodas5P, Tsit5, integrate, steady_state  # noqa: E402

__all__ += ["BDF", "Radau", "VCAB3", "VCABM3", "ODESolution", "Rodas3", "Rodas4", "Rodas5P", "Tsit5", "integrate", "steady_state"]
# --- adjoint ---
from .adjoint import BacksolveAdjoint, DiscreteAdjoint, GaussAdjoint, ode_gradients  # noqa: E402

__all__ += ["BacksolveAdjoint", "DiscreteAdjoint", "GaussAdjoint", "ode_gradients"]
# --- nn ---
from . import nn  # noqa: E402
from .nn.tree import (  # noqa: E402
    ravel, to_namespace, tree_add, tree_dot, tree_flatten, tree_leaves, tree_map, tree_norm, tree_scale,
    tree_sub, tree_unflatten, unravel, zeros_like,
)

__all__ += ["nn", "ravel", "to_namespace", "tree_add", "tree_dot", "tree_flatten", "tree_leaves", "tree_map",
            "tree_norm", "tree_scale", "tree_sub", "tree_unflatten", "unravel", "zeros_like"]
# --- models ---
from .adjoint.steady_state import OneStepGradient, PhantomGradient, SteadyStateAdjoint  # noqa: E402
from .models import (  # noqa: E402
    DeepEquilibriumNetwork, DeepEquilibriumSolution, MultiScaleDeepEquilibriumNetwork, MultiScaleNeuralODE,
    MultiScaleSkipDeepEquilibriumNetwork, SkipDeepEquilibriumNetwork, with_fixed_depth,
)
from . import models  # noqa: E402

__all__ += ["SteadyStateAdjoint", "OneStepGradient", "PhantomGradient", "DeepEquilibriumNetwork",
            "DeepEquilibriumSolution", "MultiScaleDeepEquilibriumNetwork", "MultiScaleNeuralODE",
            "MultiScaleSkipDeepEquilibriumNetwork", "SkipDeepEquilibriumNetwork", "with_fixed_depth", "models"]
