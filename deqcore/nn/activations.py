"""Elementwise activations by name, with exact derivatives, and the :class:`Activation` layer.

>>> import numpy as np
>>> from deqcore import nn
>>> act = nn.Activation("tanh")
>>> y, _ = act(np.zeros((1, 2)), {}, {})
>>> y
array([[0., 0.]])
"""

from __future__ import annotations

import operator
from functools import partial

from .activation_kernels import REFERENCE, activation_forward_fn, activation_value_fn, fused_activation
from .core import Layer, check_array_input, identity, with_input_only

__all__ = ["Activation", "ACTIVATIONS", "activation"]

#: name -> (f(xp, z), f'(xp, z, y) with y = f(z)), the reference formulas; the layers run them through the fused
#: kernels of ``activation_kernels`` (value and derivative in one pass)
ACTIVATIONS = dict(REFERENCE)


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
    def apply(self, z, bias=None, axis=-1):
        """``f(z + bias)``, the bias (1-d, optional) broadcast along ``axis``."""
        if self.is_identity:
            return z if bias is None else z + _along(bias, z.ndim, axis)
        return fused_activation(z, self.name, bias, axis, derivative=False)

    def forward(self, z, bias=None, axis=-1):
        """``(f(z + bias), f'(z + bias))`` in one pass; the derivative is None for the identity."""
        if self.is_identity:
            return (z if bias is None else z + _along(bias, z.ndim, axis)), None
        return fused_activation(z, self.name, bias, axis)

    @staticmethod
    def scale(d, t):
        """``d * t`` (the VJP and the JVP of an elementwise map), where ``d`` from :meth:`forward` is None for
        the identity."""
        return t if d is None else d * t

    @staticmethod
    def scale_fn(d):
        """``t -> d * t`` as one C-level callable (the identity when ``d`` is None)."""
        return identity if d is None else partial(operator.mul, d)

    def value_fn(self, bias=None, axis=-1):
        """``z -> f(z + bias)``, equal to :meth:`apply`, its options resolved once."""
        if self.is_identity:
            if bias is None:
                return identity
            return lambda z: z + _along(bias, z.ndim, axis)
        return activation_value_fn(self.name, bias, axis)

    # Layer protocol
    def __call__(self, x, params, state):
        return self.apply(check_array_input(self, x)), state

    def bind(self, params, state):
        return self.value_fn()

    def linearize(self, x, params, state):
        y, d = self.forward(check_array_input(self, x))
        return y, self.scale_fn(d)

    def vjp(self, x, params, state):
        y, d = self.forward(check_array_input(self, x))
        return y, self._pullback(d), state

    def bind_vjp(self, params, state):
        if self.is_identity:
            return super().bind_vjp(params, state)
        forward = activation_forward_fn(self.name)      # (the kernel chosen once)

        def vjp(x):
            y, d = forward(check_array_input(self, x))
            return y, self._pullback(d), state

        return vjp

    def _pullback(self, d):
        """The pullback at the derivative ``d`` (None for the identity)."""
        scale = self.scale
        return with_input_only(lambda dy: (scale(d, dy), {}), lambda dy, wanted=None: scale(d, dy),
                               lambda dy, wanted: (None if wanted is False else scale(d, dy), {}),
                               lambda wanted=None: self.scale_fn(d))

    def jvp(self, x, params, state, dx, dparams=None):
        y, d = self.forward(check_array_input(self, x))
        return y, self.scale(d, dx)


def _along(bias, ndim, axis):
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return bias.reshape(shape)
