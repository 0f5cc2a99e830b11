"""Dropout with its randomness in the state: the mask is a counter-based hash of (seed, counter, element),
computed on the arrays' device (identical on NumPy and CuPy, no host generator, no transfers).

Calls with the same state use the same mask, which is what a DEQ's fixed-point iterations need (the
"variational" dropout of Bai et al.); each call in training mode returns the state with the counter advanced.
"""

from __future__ import annotations

from .._checks import check_probability
from ..backend import get_namespace
from .core import Layer, check_array_input

__all__ = ["Dropout", "uniform_hash"]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def uniform_hash(xp, shape, seed: int, counter: int):
    """Uniform numbers in [0, 1) from splitmix64 of (seed, counter, flat index), on namespace ``xp``.

    >>> import numpy as np
    >>> u = uniform_hash(np, (1000,), seed=1, counter=0)
    >>> bool(0.45 < u.mean() < 0.55), bool((uniform_hash(np, (1000,), 1, 0) == u).all())
    (True, True)
    """
    size = 1
    for s in shape:
        size *= int(s)
    base = (seed * _GOLDEN + (counter + 1) * 0xD1B54A32D192ED03) & _MASK64
    z = xp.arange(size, dtype=xp.uint64) * xp.uint64(_GOLDEN) + xp.uint64(base)
    z = (z ^ (z >> xp.uint64(30))) * xp.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> xp.uint64(27))) * xp.uint64(0x94D049BB133111EB)
    z = z ^ (z >> xp.uint64(31))
    return ((z >> xp.uint64(11)).astype(xp.float64) * (1.0 / (1 << 53))).reshape(shape)


class Dropout(Layer):
    """Zero each element with probability ``p`` and scale the rest by 1/(1−p), in training mode only
    (``state["training"]``; see :func:`deqcore.nn.testmode`).

    >>> import numpy as np
    >>> from deqcore import nn
    >>> drop = nn.Dropout(0.5)
    >>> params, state = nn.setup(np.random.default_rng(0), drop)
    >>> y, new_state = drop(np.ones((2, 1000)), params, state)
    >>> sorted(set(np.unique(y).tolist())), new_state["counter"]
    ([0.0, 2.0], 1)
    >>> drop(np.ones((2, 3)), params, nn.testmode(state))[0]
    array([[1., 1., 1.],
           [1., 1., 1.]])
    """

    def __init__(self, p: float):
        self.p = check_probability(p, "p", open_low=False)
        if self.p == 1.0:
            raise ValueError("p must be < 1 (p = 1 drops everything)")

    def __repr__(self):
        return f"Dropout({self.p})"

    def row_coupling(self, state):
        if self.p == 0.0 or not state.get("training", False):
            return None
        return f"{self!r} in training mode (its mask depends on the sample's position in the batch)"

    def init(self, rng):
        return {}, {"seed": int(rng.integers(0, 2 ** 62)), "counter": 0, "training": True}

    def _mask(self, x, state):
        if not state["training"] or self.p == 0.0:
            return None
        xp = get_namespace(x)
        keep = uniform_hash(xp, x.shape, state["seed"], state["counter"]) >= self.p
        return keep.astype(x.dtype) * (1.0 / (1.0 - self.p))

    @staticmethod
    def _advance(state):
        return {**state, "counter": state["counter"] + 1} if state["training"] else state

    def __call__(self, x, params, state):
        mask = self._mask(check_array_input(self, x), state)
        return (x if mask is None else x * mask), self._advance(state)

    def vjp(self, x, params, state):
        mask = self._mask(check_array_input(self, x), state)
        if mask is None:
            return x, lambda dy: (dy, {}), self._advance(state)
        return x * mask, lambda dy: (dy * mask, {}), self._advance(state)

    def jvp(self, x, params, state, dx, dparams=None):
        mask = self._mask(check_array_input(self, x), state)
        return (x, dx) if mask is None else (x * mask, dx * mask)
