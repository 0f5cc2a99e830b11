"""Butcher tableaus of the explicit Runge–Kutta methods (Tsit5, Bogacki–Shampine 3(2)).

``a`` is strictly lower triangular, ``b`` the propagating weights, ``b_err = b − b̂`` the weights of the
embedded error estimate. Tsit5 also carries its free interpolant: stage weights ``b_i(θ)`` as polynomials.

>>> import numpy as np
>>> np.allclose(TSIT5.a.sum(axis=1), TSIT5.c)
True
>>> np.allclose(TSIT5.interpolation_weights(1.0), TSIT5.b)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ButcherTableau", "TSIT5", "BS3"]


@dataclass(frozen=True, eq=False)
class ButcherTableau:
    """An explicit embedded Runge–Kutta pair.

    Attributes:
        a, b, c, b_err: the tableau (``b_err = b − b̂``); the last stage of an FSAL method is f(y_new).
        order: order of ``b``; ``error_order`` the order of the embedded ``b̂``.
        interp: optional ``(stages, degree + 1)`` polynomial coefficients in θ (lowest first) of the dense
            output weights, so that ``y(t + θh) = y + h Σ b_i(θ) k_i``.
    """

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    b_err: np.ndarray
    order: int
    error_order: int
    fsal: bool
    interp: np.ndarray | None = None

    @property
    def stages(self) -> int:
        return len(self.c)

    def interpolation_weights(self, theta) -> np.ndarray:
        """The weights ``b_i(θ)`` (shape ``(stages,) + θ.shape``); Hermite weights are used elsewhere."""
        theta = np.asarray(theta, dtype=float)
        powers = theta[..., None] ** np.arange(self.interp.shape[1])
        return np.moveaxis(powers @ self.interp.T, -1, 0)


def _poly(*factors) -> np.ndarray:
    """Coefficients (lowest first) of a product of polynomials given lowest-first."""
    out = np.array([1.0])
    for f in factors:
        out = np.convolve(out, np.asarray(f, dtype=float))
    return out


def _tsit5() -> ButcherTableau:
    # Ch. Tsitouras, "Runge–Kutta pairs of order 5(4) satisfying only the first column simplifying
    # assumption", Comput. Math. Appl. 62 (2011) 770–775.
    c = np.array([0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0])
    a = np.zeros((7, 7))
    a[1, 0] = 0.161
    a[2, :2] = [-0.008480655492356989, 0.335480655492357]
    a[3, :3] = [2.897153057105493, -6.359448489975075, 4.3622954328695815]
    a[4, :4] = [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525]
    a[5, :5] = [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
                -0.028269050394068383]
    a[6, :6] = [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
                2.324710524099774]
    b = a[6].copy()
    b_err = np.array([-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995,
                      -0.1447110071732629, 0.5823571654525552, -0.45808210592918697, 1.0 / 66.0])
    theta = [0.0, 1.0]
    interp = [
        -1.0530884977290216 * _poly(theta, [-1.3299890189751412, 1.0],
                                    [0.7139816917074209, -1.4364028541716351, 1.0]),
        0.1017 * _poly(theta, theta, [1.2949852507374631, -2.1966568338249754, 1.0]),
        2.490627285651252793 * _poly(theta, theta, [1.57803468208092486, -2.38535645472061657, 1.0]),
        -16.54810288924490272 * _poly(theta, theta, [-1.21712927295533244, 1.0], [-0.61620406037800089, 1.0]),
        47.37952196281928122 * _poly(theta, theta, [-1.203071208372362603, 1.0],
                                     [-0.658047292653547382, 1.0]),
        -34.87065786149660974 * _poly(theta, theta, [-1.2, 1.0], [-2.0 / 3.0, 1.0]),
        2.5 * _poly(theta, theta, [-1.0, 1.0], [-0.6, 1.0]),
    ]
    interp = np.array([np.pad(p, (0, 5 - len(p))) for p in interp])
    return ButcherTableau(a, b, c, b_err, order=5, error_order=4, fsal=True, interp=interp)


def _bs3() -> ButcherTableau:
    # P. Bogacki, L. F. Shampine, "A 3(2) pair of Runge–Kutta formulas", Appl. Math. Lett. 2 (1989).
    c = np.array([0.0, 0.5, 0.75, 1.0])
    a = np.zeros((4, 4))
    a[1, 0] = 0.5
    a[2, :2] = [0.0, 0.75]
    a[3, :3] = [2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0]
    b = a[3].copy()
    b_hat = np.array([7.0 / 24.0, 0.25, 1.0 / 3.0, 0.125])
    return ButcherTableau(a, b, c, b - b_hat, order=3, error_order=2, fsal=True)


TSIT5 = _tsit5()
BS3 = _bs3()
