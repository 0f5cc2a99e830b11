"""Fused kernel of Anderson mixing: the weights of the small per-sample least-squares problem.

``anderson_weights(gram, newest, ridge, floor) -> alpha`` solves (H + λI) w = 1 for every sample's Gram matrix H
(B, c, c) of its last c residuals, with λ = ridge·trace(H)/c + floor (scaled to the Gram matrix, never absolute),
and returns α = w / Σw (so Σα = 1). A sample whose system is singular or non-finite gets α = e_newest (a plain
step from the newest iterate). NumPy's batched ``linalg.solve`` costs far more than the arithmetic for these
tiny systems (and raises for the whole batch when one is singular); the Numba versions eliminate each system
in place with partial pivoting.

>>> import numpy as np
>>> anderson_weights_reference(np.array([[[2.0, 0.0], [0.0, 1.0]]]), 1, 0.0, 0.0)
array([[0.33333333, 0.66666667]])
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace, register_kernel

__all__ = ["anderson_weights_reference", "anderson_weights"]


def anderson_weights_reference(gram, newest, ridge, floor):
    """Reference (array-namespace) implementation."""
    xp = get_namespace(gram)
    batch, count, _ = gram.shape
    lam = ridge * xp.trace(gram, axis1=1, axis2=2) / count + floor
    system = gram + lam[:, None, None] * xp.eye(count, dtype=gram.dtype)
    fallback = xp.zeros((batch, count), dtype=gram.dtype)
    fallback[:, newest] = 1
    try:
        w = xp.linalg.solve(system, xp.ones((batch, count, 1), dtype=gram.dtype))[:, :, 0]
    except np.linalg.LinAlgError:
        return fallback
    total = w.sum(axis=1, keepdims=True)
    ok = xp.isfinite(total) & (total != 0)
    alpha = w / xp.where(ok, total, 1)
    good = ok[:, 0] & xp.isfinite(alpha).all(axis=1)
    return xp.where(good[:, None], alpha, fallback)


def anderson_weights(gram, newest, ridge, floor):
    """The registered implementation for the namespace of ``gram``."""
    from ..backend import get_kernel

    return get_kernel("anderson_weights", get_namespace(gram))(gram, newest, ridge, floor)


def example(rng, dtype):
    a = rng.standard_normal((40, 6, 9)).astype(dtype)
    gram = a @ a.transpose(0, 2, 1)
    gram[3] = 0.0                          # singular: falls back to the newest slot
    return gram, 2, 1e-8, float(np.sqrt(np.finfo(dtype).tiny))


_SIG = "void({t}[:, :, :], {t}[:, :, :], int64, float64, float64, {t}[:, :])"
register_kernel(
    "anderson_weights",
    reference=anderson_weights_reference,
    numba_cpu="deqcore.root.anderson_kernels_numba:anderson_weights_numba_cpu",
    numba_cuda="deqcore.root.anderson_kernels_numba:anderson_weights_numba_cuda",
    cuda_ptx_targets=[("deqcore.root.anderson_kernels_numba:anderson_weights_cuda_kernel", _SIG.format(t=t))
                      for t in ("float64", "float32")],
    example="deqcore.root.anderson_kernels:example",
)
