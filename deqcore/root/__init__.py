"""Root finding and fixed points: one driver loop and small solver classes.

``root_find(fn, y0, solver)`` solves fn(y) = 0; ``fixed_point(fn, y0, solver)`` solves fn(y) = y. Solvers:
:class:`NewtonRaphson`, :class:`TrustRegion`, :class:`Broyden`, :class:`LimitedMemoryBroyden`,
:class:`Anderson`, :class:`FixedPointIteration`.
"""

from .api import default_solvers, fixed_point, root_find
from .base import RootSolver
from .broyden import Broyden, LimitedMemoryBroyden
from .fixed_point_solvers import Anderson, FixedPointIteration
from .newton import NewtonRaphson, TrustRegion
from . import anderson_kernels, kernels  # noqa: F401  (register the fused kernels)

__all__ = ["root_find", "fixed_point", "default_solvers", "RootSolver", "NewtonRaphson", "TrustRegion", "Broyden",
           "LimitedMemoryBroyden", "Anderson", "FixedPointIteration"]
