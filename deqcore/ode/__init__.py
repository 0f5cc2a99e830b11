"""ODE integration: :func:`integrate` for initial value problems, :func:`steady_state` for du/dt = 0.

Methods: :class:`Tsit5` (non-stiff default), :class:`VCAB3` and :class:`VCABM3` (variable-step Adams,
cheap per step; VCABM3 is the default for steady states) and, for stiff problems, :class:`BDF`
(variable-order NDF reusing its Jacobian; unbatched NumPy), :class:`Radau` (Radau IIA of order 5 reusing its
Jacobian and LU factors; unbatched NumPy) and :class:`Rodas5P` / :class:`Rodas4` /
:class:`Rodas3` (L-stable Rosenbrock, batched too). Step sizes follow a PI controller (BDF chooses its own
order and step size, Radau its own step size); the first step is chosen automatically.

>>> import numpy as np, deqcore as dq
>>> sol = dq.integrate(lambda t, y, k: -k * y, np.ones(3), (0.0, 1.0), args=(2.0,), atol=1e-9, rtol=1e-9)
>>> bool(np.allclose(sol.ys[-1], np.exp(-2.0)))
True
"""

from . import kernels  # noqa: F401  (registers the step kernels)
from .adams import VCAB3, VCABM3
from .bdf import BDF
from .explicit import Tsit5
from .radau import Radau
from .rosenbrock import Rodas3, Rodas4, Rodas5P
from .solution import ODEProblem, ODESolution
from .solve import integrate, steady_state

__all__ = ["integrate", "steady_state", "ODESolution", "ODEProblem", "Tsit5", "VCAB3", "VCABM3", "Rodas3", "Rodas4", "BDF",
           "Rodas5P", "Radau"]
