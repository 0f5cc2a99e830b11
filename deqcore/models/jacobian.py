"""Jacobian regularisation (Bai et al. 2021): a Hutchinson estimate of ‖∂f/∂z(z*)‖_F² / numel(z*) and the
gradient of that estimate with respect to f's inputs other than z (parameters and x), z* held fixed.

The estimate draws ε ~ N(0, I) and uses ‖J ε‖² ("forward": one JVP; "finite_diff": one extra f-evaluation)
or ‖Jᵀ ε‖² ("reverse": one VJP); both have expectation ‖J‖_F². Its gradient needs the derivative of a
Jacobian-vector product with respect to the parameters; we take it as a central difference of two VJPs along
the probing direction, which costs two VJPs and is accurate to O(h²).
"""

from __future__ import annotations

import numpy as np

from .._tree import tree_map
from ..backend import get_namespace
from ..ode.finite_diff import jvp_step

__all__ = ["JACOBIAN_MODES", "hutchinson_probe", "jacobian_loss_gradient"]

JACOBIAN_MODES = (None, "forward", "finite_diff", "reverse")


def _per_sample_mean(u):
    """mean over the batch of ‖u_b‖² / numel(u_b) (a 0-d array: no host synchronisation)."""
    return (u.reshape(u.shape[0], -1) ** 2).mean()


def hutchinson_probe(mode, z, eps, f_z, f, jvp_z, vjp_z):
    """``(loss, direction, cotangent)``: the estimate and what its gradient needs.

    ``f_z`` is f(z) (already computed by the caller), ``f``, ``jvp_z(v) = J v`` and ``vjp_z(v) = Jᵀ v``
    evaluate f at fixed x and parameters.
    """
    if mode == "reverse":
        u = vjp_z(eps)
        return _per_sample_mean(u), u, eps          # ∂/∂θ ⟨ε, J u⟩: move z along u, pull back ε
    if mode == "forward":
        u = jvp_z(eps)
    else:
        # the package's one rule for directional differences: a step per sample scaled to ‖z_b‖ / ‖ε_b‖
        xp = get_namespace(z)
        rows = z.shape[0]
        h = jvp_step(xp, z.reshape(rows, -1), eps.reshape(rows, -1)).reshape((rows,) + (1,) * (z.ndim - 1))
        u = (f(z + h * eps) - f_z) / xp.where(h > 0, h, 1.0)
    return _per_sample_mean(u), eps, u              # ∂/∂θ ⟨u, J ε⟩: move z along ε, pull back u


def jacobian_loss_gradient(pullback_theta_at, z, direction, cotangent, weight):
    """``weight * ∂loss/∂θ`` by a central difference of θ-VJPs: ``pullback_theta_at(z)(v)`` is ∂f/∂θᵀ v at z.

    With loss = mean_b ‖u_b‖²/n and u = J ε, ∂loss/∂θ = (2/(B n)) ∂/∂θ ⟨u, J ε⟩ (u held fixed).
    """
    dtype = np.dtype(z.dtype)
    scale = float(abs(direction).max()) or 1.0
    h = float(np.cbrt(np.finfo(dtype).eps)) * (1.0 + float(abs(z).max())) / scale
    plus = pullback_theta_at(z + h * direction)(cotangent)
    minus = pullback_theta_at(z - h * direction)(cotangent)
    factor = 2.0 * weight / (2.0 * h * z.size)
    return tree_map(lambda a, b: (a - b) * factor, plus, minus)
