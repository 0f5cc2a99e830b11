"""Linear solvers: matrix-free operators, dense batched LU, batched GMRES, and ``linear_solve``.

Vectors are ``(n,)`` for one system or ``(B, n)`` for ``B`` independent systems (batch first).

>>> import numpy as np
>>> from deqcore.linalg import GMRES, LU, linear_solve
>>> A = np.stack([np.diag([1.0, 2.0]), np.diag([4.0, 5.0])])
>>> linear_solve(A, np.ones((2, 2)), LU()).value
array([[1.  , 0.5 ],
       [0.25, 0.2 ]])
>>> np.allclose(linear_solve(A, np.ones((2, 2)), GMRES(rtol=1e-10)).value, [[1, 0.5], [0.25, 0.2]])
True
"""

from .base import LinearSolver
from .gmres import GMRES
from .lu import LU, LUFactorization
from .operator import LinearOperator
from .solve import linear_solve

__all__ = ["GMRES", "LU", "LUFactorization", "LinearOperator", "LinearSolver", "linear_solve"]
