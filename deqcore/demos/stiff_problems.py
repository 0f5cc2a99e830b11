"""Stiff test problems from the literature, shared by the tests and the stiff-ODE benchmark.

>>> import numpy as np
>>> hires(0.0, HIRES_Y0).shape
(8,)
"""

from __future__ import annotations

import numpy as np

__all__ = ["hires", "HIRES_Y0", "HIRES_T1", "brusselator_2d"]

#: HIRES (Schäfer 1975; Hairer–Wanner II): the initial state and the end of the usual span
HIRES_Y0 = np.array([1.0, 0, 0, 0, 0, 0, 0, 0.0057])
HIRES_T1 = 321.8122


def hires(t, y):
    """The HIRES right-hand side: 8 chemical species, stiff (eigenvalues down to about −10⁴)."""
    return np.array([
        -1.71 * y[0] + 0.43 * y[1] + 8.32 * y[2] + 0.0007,
        1.71 * y[0] - 8.75 * y[1],
        -10.03 * y[2] + 0.43 * y[3] + 0.035 * y[4],
        8.32 * y[1] + 1.71 * y[2] - 1.12 * y[3],
        -1.745 * y[4] + 0.43 * y[5] + 0.43 * y[6],
        -280.0 * y[5] * y[7] + 0.69 * y[3] + 1.71 * y[4] - 0.43 * y[5] + 0.69 * y[6],
        280.0 * y[5] * y[7] - 1.81 * y[6],
        -280.0 * y[5] * y[7] + 1.81 * y[6]])


def brusselator_2d(N=16, A=3.4, B=1.0, alpha=10.0):
    """The 2-D Brusselator on a periodic N × N grid (2N² unknowns, u then v): ``(f, y0, pattern)`` with the
    sparsity pattern of ∂f/∂y (a CSR boolean matrix).

    >>> f, y0, pattern = brusselator_2d(4)
    >>> y0.shape, pattern.shape, f(0.0, y0).shape
    ((32,), (32, 32), (32,))
    """
    import scipy.sparse as sp

    c = alpha * (N - 1) ** 2

    def lap(w):
        return c * (np.roll(w, 1, 0) + np.roll(w, -1, 0) + np.roll(w, 1, 1) + np.roll(w, -1, 1) - 4 * w)

    def f(t, y):
        u, v = y[:N * N].reshape(N, N), y[N * N:].reshape(N, N)
        uuv = u * u * v
        return np.concatenate([(B + uuv - (A + 1.0) * u + lap(u)).ravel(), (A * u - uuv + lap(v)).ravel()])

    x = np.linspace(0, 1, N)
    X, Y = np.meshgrid(x, x, indexing="ij")
    y0 = np.concatenate([(22 * (Y * (1 - Y)) ** 1.5).ravel(), (27 * (X * (1 - X)) ** 1.5).ravel()])
    ring = sp.diags([1, 1, 1, 1, 1], [-N + 1, -1, 0, 1, N - 1], shape=(N, N), dtype=float)
    grid = (sp.kron(ring, sp.identity(N)) + sp.kron(sp.identity(N), ring)) != 0
    return f, y0, sp.bmat([[grid, sp.identity(N * N)], [sp.identity(N * N), grid]]).tocsr() != 0
