"""Numba CPU version of the batched back substitution (loaded lazily through the kernel registry)."""

from __future__ import annotations

import numpy as np

from ..backend.numba_tools import CACHE, numba

__all__ = ["back_substitute_numba_cpu"]


@numba.njit(cache=CACHE)
def _back_substitute_loop(R, g, y):
    m = R.shape[1]
    for b in range(R.shape[0]):
        for i in range(m - 1, -1, -1):
            acc = g[b, i]
            for j in range(i + 1, m):
                acc -= R[b, i, j] * y[b, j]
            y[b, i] = acc / R[b, i, i]


def back_substitute_numba_cpu(R, g):
    y = np.empty(g.shape, dtype=np.result_type(R.dtype, g.dtype))
    _back_substitute_loop(R, g, y)
    return y
