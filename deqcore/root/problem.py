"""A nonlinear problem as the root solvers see it: batched flat arrays and counted evaluations.

Every problem is held as ``(B, n)`` arrays, one system per row (an unbatched problem is one row). The
residual is F(y) (zero at a solution); the associated fixed-point map is G(y) = y + F(y). For
``fixed_point(fn)`` that is F(y) = fn(y) − y and G = fn; for ``root_find(fn)`` it is F = fn.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace

__all__ = ["RootProblem", "flat_problem"]


class RootProblem:
    """F(y) = 0 on (B, n) arrays, with a fixed-point view, Jacobians and JVPs; counts evaluations.

    Args:
        residual: ``F(y2d) -> (B, n)``.
        batch, n: sizes.
        jac: optional ``jac(y2d) -> (B, n, n)`` Jacobian of F.
        fixed_point_map: optional cheaper ``G(y2d)`` (defaults to y + F(y)).
    """

    def __init__(self, residual, xp, dtype, batch, n, *, jac=None, fixed_point_map=None):
        self._residual = residual
        self._jac = jac
        self._map = fixed_point_map
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.batch = batch
        self.n = n
        self.nfev = 0
        self.njev = 0
        self.eps = float(np.finfo(self.dtype).eps)

    @property
    def has_jac(self) -> bool:
        """True when the user supplied the Jacobian."""
        return self._jac is not None

    def F(self, y):
        self.nfev += 1
        return self._residual(y)

    def G(self, y):
        """The fixed-point map; returns (G(y), F(y))."""
        if self._map is not None:
            self.nfev += 1
            g = self._map(y)
            return g, g - y
        f = self.F(y)
        return y + f, f

    def jacobian(self, y, fy):
        """Dense Jacobian of F, (B, n, n): the user's ``jac``, else forward differences, perturbing
        coordinate j of every sample at once (the systems are independent, so n evaluations suffice)."""
        self.njev += 1
        if self._jac is not None:
            return self._jac(y)
        xp = self.xp
        h = xp.sqrt(xp.asarray(self.eps, dtype=self.dtype)) * xp.maximum(xp.abs(y), 1.0)
        J = xp.empty((self.batch, self.n, self.n), dtype=self.dtype)
        for j in range(self.n):
            step = y.copy()
            step[:, j] += h[:, j]
            J[:, :, j] = (self.F(step) - fy) / (step[:, j] - y[:, j])[:, None]
        return J

    def jvp(self, y, fy, v):
        """J(y) v per sample by a forward difference scaled to each sample's sizes."""
        xp = self.xp
        vnorm = xp.sqrt((v * v).sum(axis=1))
        ynorm = xp.sqrt((y * y).sum(axis=1))
        h = float(np.sqrt(self.eps)) * (1.0 + ynorm) / xp.where(vnorm > 0, vnorm, 1.0)
        return (self.F(y + h[:, None] * v) - fy) / h[:, None]


def flat_problem(fn, y0, args, batched, *, mode, jac=None):
    """(RootProblem, y0 as (B, n), unflatten) for ``fn`` of the user's shapes.

    ``mode="root"``: F = fn; ``mode="fixed_point"``: F = fn(y) − y with G = fn.
    """
    xp = get_namespace(y0)
    shape = y0.shape
    batch = shape[0] if batched else 1
    n = int(np.prod(shape[1:])) if batched else int(np.prod(shape))

    def unflatten(y2d):
        return y2d.reshape(shape)

    def call(y2d):
        return fn(unflatten(y2d), *args).reshape(batch, n)

    user_jac = None
    if jac is not None:  # root mode only: fixed_point takes no Jacobian
        def user_jac(y2d):
            J = jac(unflatten(y2d), *args)
            return J.reshape(batch, n, n)

    if mode == "root":
        problem = RootProblem(call, xp, y0.dtype, batch, n, jac=user_jac)
    else:
        problem = RootProblem(lambda y: call(y) - y, xp, y0.dtype, batch, n, jac=user_jac, fixed_point_map=call)
    return problem, y0.reshape(batch, n), unflatten
