"""Root finding and fixed points: one driver loop and small solver classes.

``root_find(fn, y0, solver)`` solves fn(y) = 0; ``fixed_point(fn, y0, solver)`` solves fn(y) = y. Solvers:
:class:`NewtonRaphson`, :class:`TrustRegion`, :class:`Broyden`, :class:`LimitedMemoryBroyden`,
:class:`Anderson`, :class:`FixedPointIteration`.

Low-level entry (for DEQ models and adjoints that solve many times): :class:`RootProblem` holds the residual
F on (B, n) arrays (one system per row) and :func:`run` iterates a solver on it without validating or
re-wrapping anything. It returns a :class:`RootLoopResult` (``value``, ``codes``, ``residual``,
``num_steps``, ``state``), and ``solver.learned(result.state)`` hands over what the solve learnt, for an
adjoint solve to reuse: ``"lu"`` (Newton's last LU factors of F's Jacobian; ``.solve(b, transpose=True)``
for the adjoint), ``"inverse_jacobian"`` (Broyden's ``(U, V)`` with F's inverse Jacobian ≈ −I + Σ uᵢ vᵢᵀ),
``"anderson_history"`` (Anderson's ring). The high-level calls return the same dict as ``sol.learned``. With
active-set compaction (``compact=True``) a sample's learnt state is the one it had when it finished.

>>> import numpy as np
>>> from deqcore.root import Broyden, RootProblem, run
>>> A = np.array([[3.0, 1.0], [1.0, 2.0]])
>>> problem = RootProblem(lambda y: y @ A.T - 1.0, np, np.float64, 1, 2)      # F(y) = A y − 1, one system
>>> out = run(problem, Broyden(), np.zeros((1, 2)), atol=1e-10, rtol=0.0, max_steps=50)
>>> bool(np.allclose(out.value[0], np.linalg.solve(A, np.ones(2)))), int(out.codes[0])
(True, 0)
>>> U, V = Broyden().learned(out.state)["inverse_jacobian"]
>>> U.shape                                   # (batch, memory, n)
(1, 100, 2)
"""

from .api import default_solvers, fixed_point, root_find
from .base import IterateState, RootSolver
from .broyden import Broyden, LimitedMemoryBroyden
from .driver import RootLoopResult, run
from .fixed_point_solvers import Anderson, FixedPointIteration
from .newton import NewtonRaphson, TrustRegion
from .problem import RootProblem
from . import anderson_kernels, driver_kernels  # noqa: F401  (register the fused kernels)

__all__ = ["root_find", "fixed_point", "default_solvers", "RootSolver", "IterateState", "RootProblem", "run",
           "RootLoopResult", "NewtonRaphson",
           "TrustRegion", "Broyden", "LimitedMemoryBroyden", "Anderson", "FixedPointIteration"]
