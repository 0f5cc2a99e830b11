"""Classic nonlinear systems (Moré, Garbow & Hillstrom 1981 and friends) with their standard start points.

``PROBLEMS[name]()`` returns ``(fn, y0)`` for a root problem fn(y) = 0; the test suite solves each against
``scipy.optimize.root`` and ``python -m deqcore solve --problem NAME`` solves any of them.

>>> import numpy as np
>>> fn, y0 = PROBLEMS["rosenbrock"]()
>>> fn(np.ones(2))
array([0., 0.])
"""

import numpy as np


def rosenbrock(n=2):
    def fn(y):
        out = np.empty_like(y)
        out[0::2] = 10.0 * (y[1::2] - y[0::2] ** 2)
        out[1::2] = 1.0 - y[0::2]
        return out

    return fn, np.tile([-1.2, 1.0], n // 2)


def powell_singular():
    def fn(y):
        return np.array([y[0] + 10 * y[1], np.sqrt(5.0) * (y[2] - y[3]), (y[1] - 2 * y[2]) ** 2,
                         np.sqrt(10.0) * (y[0] - y[3]) ** 2])

    return fn, np.array([3.0, -1.0, 0.0, 1.0])


def powell_badly_scaled():
    def fn(y):
        return np.array([1e4 * y[0] * y[1] - 1, np.exp(-y[0]) + np.exp(-y[1]) - 1.0001])

    return fn, np.array([0.0, 1.0])


def helical_valley():
    def fn(y):
        theta = np.arctan2(y[1], y[0]) / (2 * np.pi)
        return np.array([10 * (y[2] - 10 * theta), 10 * (np.hypot(y[0], y[1]) - 1), y[2]])

    return fn, np.array([-1.0, 0.0, 0.0])


def broyden_tridiagonal(n=10):
    def fn(y):
        padded = np.concatenate([[0.0], y, [0.0]])
        return (3 - 2 * y) * y - padded[:-2] - 2 * padded[2:] + 1

    return fn, -np.ones(n)


def broyden_banded(n=10):
    def fn(y):
        out = np.empty_like(y)
        for i in range(n):
            lo, hi = max(0, i - 5), min(n, i + 2)
            idx = [j for j in range(lo, hi) if j != i]
            out[i] = y[i] * (2 + 5 * y[i] ** 2) + 1 - sum(y[j] * (1 + y[j]) for j in idx)
        return out

    return fn, -np.ones(n)


def trigonometric(n=10):
    def fn(y):
        return n - np.cos(y).sum() + np.arange(1, n + 1) * (1 - np.cos(y)) - np.sin(y)

    return fn, np.full(n, 1.0 / n)


def freudenstein_roth():
    def fn(y):
        return np.array([-13 + y[0] + ((5 - y[1]) * y[1] - 2) * y[1],
                         -29 + y[0] + ((y[1] + 1) * y[1] - 14) * y[1]])

    return fn, np.array([0.5, -2.0])


def discrete_boundary_value(n=10):
    h = 1.0 / (n + 1)
    t = np.arange(1, n + 1) * h

    def fn(y):
        padded = np.concatenate([[0.0], y, [0.0]])
        return 2 * y - padded[:-2] - padded[2:] + h ** 2 * (y + t + 1) ** 3 / 2

    return fn, t * (t - 1)


def extended_powell_singular(n=8):
    def fn(y):
        out = np.empty_like(y)
        out[0::4] = y[0::4] + 10 * y[1::4]
        out[1::4] = np.sqrt(5.0) * (y[2::4] - y[3::4])
        out[2::4] = (y[1::4] - 2 * y[2::4]) ** 2
        out[3::4] = np.sqrt(10.0) * (y[0::4] - y[3::4]) ** 2
        return out

    return fn, np.tile([3.0, -1.0, 0.0, 1.0], n // 4)


def chandrasekhar_h(n=10, c=0.9):
    mu = (np.arange(1, n + 1) - 0.5) / n

    def fn(y):
        inner = (mu[:, None] * y[None, :] / (mu[:, None] + mu[None, :])).sum(axis=1)
        return y - 1 / (1 - c / (2 * n) * inner)

    return fn, np.ones(n)


PROBLEMS = {
    "rosenbrock": rosenbrock,
    "generalised_rosenbrock_10": lambda: rosenbrock(10),
    "powell_singular": powell_singular,
    "extended_powell_singular": extended_powell_singular,
    "powell_badly_scaled": powell_badly_scaled,
    "helical_valley": helical_valley,
    "broyden_tridiagonal": broyden_tridiagonal,
    "broyden_banded": broyden_banded,
    "trigonometric": trigonometric,
    "freudenstein_roth": freudenstein_roth,
    "discrete_boundary_value": discrete_boundary_value,
    "chandrasekhar_h": chandrasekhar_h,
}
