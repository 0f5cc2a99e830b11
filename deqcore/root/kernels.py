"""Fused kernel of the driver loop: per-sample max-norms of the residual and of the iterate in one pass.

``row_norms(f, y) -> (max|f| per row, max|y| per row)`` (a row holding NaN gives +inf) replaces four array passes
and two temporaries of the NumPy form; the CPU version reduces on the floats' bit patterns, which vectorises. Reference, Numba CPU and Numba CUDA versions share one scalar helper.

>>> import numpy as np
>>> row_norms_reference(np.array([[1.0, -3.0], [np.nan, 0.0]]), np.array([[2.0, 0.0], [0.0, -5.0]]))
(array([ 3., inf]), array([2., 5.]))
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace, register_kernel

__all__ = ["row_norms_reference", "row_norms"]

def row_norms_reference(f, y):
    """Reference (array-namespace) implementation."""
    xp = get_namespace(f, y)
    nf, ny = xp.abs(f).max(axis=1), xp.abs(y).max(axis=1)
    return xp.where(xp.isnan(nf), xp.inf, nf), xp.where(xp.isnan(ny), xp.inf, ny)


def row_norms(f, y):
    """The registered implementation for the namespace of ``f``."""
    from ..backend import get_kernel

    return get_kernel("row_norms", get_namespace(f))(f, y)


def example(rng, dtype):
    f = rng.standard_normal((3, 45)).astype(dtype)
    f[1, 7] = np.nan
    return f, rng.standard_normal((3, 45)).astype(dtype)


register_kernel(
    "row_norms",
    reference=row_norms_reference,
    numba_cpu="deqcore.root.kernels_numba:row_norms_numba_cpu",
    numba_cuda="deqcore.root.kernels_numba:row_norms_numba_cuda",
    cuda_ptx_targets=[("deqcore.root.kernels_numba:row_norms_cuda_kernel",
                       f"void({t}[:, :], {t}[:, :], {t}[:], {t}[:])") for t in ("float64", "float32")],
    example="deqcore.root.kernels:example",
)

