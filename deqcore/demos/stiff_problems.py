"""Stiff test problems from the literature, shared by the tests and the stiff-ODE benchmark.

>>> import numpy as np
>>> hires(0.0, HIRES_Y0).shape
(8,)
"""

from __future__ import annotations

import numpy as np

__all__ = ["hires", "HIRES_Y0", "HIRES_T1"]

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
