"""Elementwise activations by name, with exact derivatives, and the :class:`Activation` layer.

>>> import numpy as np
>>> from deqcore import nn
>>> act = nn.Activation("tanh")
>>> y, _ = act(np.zeros((1, 2)), {}, {})
>>> y
array([[0., 0.]])
"""

from __future__ import annotations

import math

from ..backend import get_namespace
from .core import Layer, check_array_input

__all__ = ["Activation", "ACTIVATIONS", "activation"]

_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _sigmoid(xp, z):
    return 0.5 * (1.0 + xp.tanh(0.5 * z))


def _softplus(xp, z):
    return xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))


def _gelu(xp, z):
    return 0.5 * z * (1.0 + xp.tanh(_GELU_K * (z + _GELU_C * z ** 3)))


def _gelu_derivative(xp, z, y):
    t = xp.tanh(_GELU_K * (z + _GELU_C * z ** 3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _GELU_K * (1.0 + 3.0 * _GELU_C * z * z)


# name -> (f(xp, z), f'(xp, z, y) with y = f(z))
ACTIVATIONS = {
    "identity": (lambda xp, z: z, None),
    "tanh": (lambda xp, z: xp.tanh(z), lambda xp, z, y: 1.0 - y * y),
    "relu": (lambda xp, z: xp.maximum(z, 0), lambda xp, z, y: (z > 0).astype(z.dtype)),
    "sigmoid": (_sigmoid, lambda xp, z, y: y * (1.0 - y)),
    "softplus": (_softplus, lambda xp, z, y: _sigmoid(xp, z)),
    "elu": (lambda xp, z: xp.where(z > 0, z, xp.expm1(xp.minimum(z, 0))),
            lambda xp, z, y: xp.exp(xp.minimum(z, 0))),
    "gelu": (_gelu, _gelu_derivative),
}


def activation(name):
    """The :class:`Activation` for ``name`` (None means identity; an Activation passes through)."""
    if name is None:
        return Activation("identity")
    if isinstance(name, Activation):
        return name
    if isinstance(name, str):
        return Activation(name)
    raise TypeError(f"activation must be a name ({', '.join(map(repr, ACTIVATIONS))}), an nn.Activation "
                    f"or None; got {type(name).__name__}")


class Activation(Layer):
    """An elementwise activation as a layer: ``"tanh"``, ``"relu"``, ``"gelu"`` (tanh approximation, as in
    Lux/Flux), ``"sigmoid"``, ``"softplus"``, ``"elu"`` (α = 1) or ``"identity"``.

    >>> import numpy as np
    >>> Activation("relu")(np.array([[-1.0, 2.0]]), {}, {})[0]
    array([[0., 2.]])
    >>> Activation("swish")
    Traceback (most recent call last):
    ...
    ValueError: unknown activation 'swish'; choose one of 'identity', 'tanh', 'relu', 'sigmoid', ...
    """

    def __init__(self, name: str):
        if not isinstance(name, str):
            raise TypeError(f"activation name must be a str, got {type(name).__name__}")
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; choose one of "
                             f"{', '.join(map(repr, ACTIVATIONS))}")
        self.name = name
        self._f, self._df = ACTIVATIONS[name]

    def __repr__(self):
        return f"Activation({self.name!r})"

    def __eq__(self, other):
        return isinstance(other, Activation) and other.name == self.name

    def __hash__(self):
        return hash(("Activation", self.name))

    @property
    def is_identity(self) -> bool:
        return self.name == "identity"

    # elementwise helpers shared with Dense and Conv2d
    def apply(self, z):
        """``f(z)``."""
        return self._f(get_namespace(z), z)

    def scale(self, z, y, t):
        """``f'(z) * t`` (both the VJP and the JVP of an elementwise map)."""
        if self._df is None:
            return t
        return self._df(get_namespace(z), z, y) * t

    # Layer protocol
    def __call__(self, x, params, state):
        return self.apply(check_array_input(self, x)), state

    def vjp(self, x, params, state):
        x = check_array_input(self, x)
        y = self.apply(x)
        return y, lambda dy: (self.scale(x, y, dy), {}), state

    def jvp(self, x, params, state, dx, dparams=None):
        x = check_array_input(self, x)
        y = self.apply(x)
        return y, self.scale(x, y, dx)
