"""Layers with a weight, an optional bias and an activation: :class:`Dense` (and, in ``conv.py``, Conv2d).

Both compute ``y = act(linear(x, W) + b)``; they differ only in the bilinear map ``linear``, so the
forward pass, the pullback and the tangent are written once in :class:`WeightedLayer`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .activations import activation as _activation
from .core import Layer, check_array_input, check_input_dtype, check_params, shape_error, with_input_only
from .reparam import weight_scheme

__all__ = ["Dense", "WeightedLayer", "INITIALISERS"]


def _glorot_uniform(rng, shape, fan_in, fan_out):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def _glorot_normal(rng, shape, fan_in, fan_out):
    return rng.standard_normal(shape) * math.sqrt(2.0 / (fan_in + fan_out))


def _kaiming_uniform(rng, shape, fan_in, fan_out):
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=shape)


def _kaiming_normal(rng, shape, fan_in, fan_out):
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


INITIALISERS = {
    "glorot_uniform": _glorot_uniform,
    "glorot_normal": _glorot_normal,
    "kaiming_uniform": _kaiming_uniform,
    "kaiming_normal": _kaiming_normal,
    "zeros": lambda rng, shape, fan_in, fan_out: np.zeros(shape),
}


def check_size(value, name: str) -> int:
    """A positive integer size argument (errors name it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _check_init(init):
    if callable(init):
        return init
    if isinstance(init, str) and init in INITIALISERS:
        return init
    raise ValueError(f"init must be one of {', '.join(map(repr, INITIALISERS))} or a callable "
                     f"(rng, shape) -> array; got {init!r}")


class WeightedLayer(Layer):
    """``y = act(linear(x, W) + b)``. Subclasses set ``weight_shape``, ``fans``, ``bias_axis`` (the axis of z
    the bias runs along) and implement ``_prepare(x) -> ctx``, ``_contract(ctx, W) -> z``,
    ``_transpose(dz, ctx, W) -> (dx, dW)``, ``_bias(b)`` (b broadcast against z) and ``_bias_grad(dz)``."""

    def __init__(self, activation, use_bias, init, weight_norm, spectral_norm):
        self.activation = _activation(activation)
        if not isinstance(use_bias, bool):
            raise TypeError(f"use_bias must be True or False, got {type(use_bias).__name__}")
        self.use_bias = use_bias
        self.init_weight = _check_init(init)
        self.weight_norm, self.spectral_norm = weight_norm, spectral_norm
        self._scheme = weight_scheme(weight_norm, spectral_norm)
        if init == "zeros" and (weight_norm or spectral_norm):
            raise ValueError(f"init='zeros' with {'weight_norm' if weight_norm else 'spectral_norm'}=True: a zero "
                             "weight has no norm to divide by and stays zero; choose another init")

    def _options(self):
        parts = [] if self.activation.is_identity else [self.activation.name]
        parts += [] if self.use_bias else ["use_bias=False"]
        parts += ["weight_norm=True"] if self.weight_norm else []
        parts += ["spectral_norm=True"] if self.spectral_norm else []
        return "".join(", " + p for p in parts)

    def init(self, rng):
        fan_in, fan_out = self.fans
        if callable(self.init_weight):
            w = np.asarray(self.init_weight(rng, self.weight_shape), dtype=np.float64)
            if w.shape != self.weight_shape:
                raise ValueError(f"{self!r}: init returned shape {w.shape}, expected {self.weight_shape}")
            if not np.isfinite(w).all():
                raise ValueError(f"{self!r}: init returned a weight holding NaN or infinity")
        else:
            w = INITIALISERS[self.init_weight](rng, self.weight_shape, fan_in, fan_out)
        params, state = self._scheme.init(w, rng)
        if self.use_bias:
            params["bias"] = np.zeros(self.weight_shape[0])
        return params, state

    def _bias_of(self, params):
        return params["bias"] if self.use_bias else None

    def _checked(self, params):
        """``params`` with this layer's keys and shapes (errors name the key)."""
        shapes = getattr(self, "_param_shapes", None)
        if shapes is None:
            out = self.weight_shape[0]
            shapes = ({"weight_v": self.weight_shape, "weight_g": (out,)} if self.weight_norm
                      else {"weight": self.weight_shape})
            if self.use_bias:
                shapes["bias"] = (out,)
            self._param_shapes = shapes
        return check_params(self, params, shapes)

    # the bias add, the activation and its derivative run as one fused pass (nn.activation_kernels)
    def _input(self, x, w):
        """``_prepare(x)`` for an ``x`` whose dtype is the weight's (NumPy would promote a float32 side to
        float64: a float64 output, float64 gradients for float32 parameters)."""
        ctx = self._prepare(x)
        check_input_dtype(self, x, w.dtype)
        return ctx

    def __call__(self, x, params, state):
        self._checked(params)
        w, state = self._scheme.weight(params, state)
        ctx = self._input(x, w)
        return self.activation.apply(self._contract(ctx, w), self._bias_of(params), self.bias_axis), state

    def bind(self, params, state):
        self._checked(params)
        w, _ = self._scheme.weight_jvp(params, state, None)    # the normalisation once, no state update
        return self._bound(w, self._bias_of(params))

    def linearize(self, x, params, state):
        self._checked(params)
        w, _ = self._scheme.weight_jvp(params, state, None)
        ctx = self._input(x, w)
        y, d = self.activation.forward(self._contract(ctx, w), self._bias_of(params), self.bias_axis)
        return y, self._tangent_fn(d, w)

    def _tangent_fn(self, d, w):
        """``dx -> dy`` at the effective weight ``w`` and activation derivative ``d`` (subclasses specialise it)."""
        scale = self.activation.scale
        return lambda dx: scale(d, self._contract(self._prepare(dx), w))

    def _bound(self, w, bias):
        """``x -> y`` at the effective weight ``w`` (subclasses specialise it)."""
        value = self.activation.value_fn(bias, self.bias_axis)
        return lambda x: value(self._contract(self._prepare(x), w))

    def vjp(self, x, params, state):
        self._checked(params)
        w, weight_pullback, state = self._scheme.weight_vjp(params, state)
        ctx = self._input(x, w)
        return self._vjp_at(ctx, params, w, weight_pullback, state)

    def bind_vjp(self, params, state):
        self._checked(params)
        w, weight_pullback, new_state = self._scheme.weight_vjp(params, state)     # the normalisation once
        return lambda x: self._vjp_at(self._input(x, w), params, w, weight_pullback, new_state)

    def _vjp_at(self, ctx, params, w, weight_pullback, state):
        """:meth:`vjp` at the checked input ``ctx`` and the effective weight ``w`` with its pullback."""
        y, d = self.activation.forward(self._contract(ctx, w), self._bias_of(params), self.bias_axis)

        def pullback(dy):
            dz = self.activation.scale(d, dy)
            dx, dw = self._transpose(dz, ctx, w)
            dparams = weight_pullback(dw)
            if self.use_bias:
                dparams["bias"] = self._bias_grad(dz)
            return dx, dparams

        def input_only(dy, wanted=None):
            return self._transpose_input(self.activation.scale(d, dy), ctx, w)

        def partial(dy, wanted):
            if wanted is not False:
                return pullback(dy)
            dz = self.activation.scale(d, dy)
            dparams = weight_pullback(self._transpose_weight(dz, ctx, w))
            if self.use_bias:
                dparams["bias"] = self._bias_grad(dz)
            return None, dparams

        return y, with_input_only(pullback, input_only, partial, lambda wanted=None: self._input_fn(d, ctx, w)), state

    def _input_fn(self, d, ctx, w):
        """``dy -> dx`` at this point, built once (subclasses specialise it)."""
        scale = self.activation.scale
        return lambda dy: self._transpose_input(scale(d, dy), ctx, w)

    def _transpose_input(self, dz, ctx, w):
        """The input part of ``_transpose`` alone (subclasses override it when it is cheaper)."""
        return self._transpose(dz, ctx, w)[0]

    def _transpose_weight(self, dz, ctx, w):
        """The weight part of ``_transpose`` alone (subclasses override it when it is cheaper)."""
        return self._transpose(dz, ctx, w)[1]

    def jvp(self, x, params, state, dx, dparams=None):
        self._checked(params)
        w, dw = self._scheme.weight_jvp(params, state, dparams)
        ctx = self._input(x, w)
        y, d = self.activation.forward(self._contract(ctx, w), self._bias_of(params), self.bias_axis)
        dz = self._contract(self._prepare(dx), w)
        if dw is not None:
            dz = dz + self._contract(ctx, dw)
        if dparams is not None and self.use_bias:
            dz = dz + self._bias(dparams["bias"])
        return y, self.activation.scale(d, dz)


class Dense(WeightedLayer):
    """Fully connected layer ``y = act(x Wᵀ + b)`` on the last axis: ``(..., in) -> (..., out)``.

    Args:
        in_features, out_features: sizes of the last axis in and out.
        activation: a name (see ``nn.ACTIVATIONS``), an ``nn.Activation`` or None (identity).
        use_bias: add ``bias`` (initialised to zeros).
        init: the weight initialiser, one of ``nn.linear.INITIALISERS`` ("glorot_uniform", the default,
            "glorot_normal", "kaiming_uniform", "kaiming_normal", "zeros") or ``init(rng, shape) -> array``.
        weight_norm: parametrise the weight as ``weight_g * weight_v / ‖weight_v‖`` (row-wise).
        spectral_norm: divide the weight by a power-iteration estimate of its largest singular value
            (vector ``u`` in the state, refined by one step per training-mode call); keeps DEQs contractive.

    Parameters: ``weight`` of shape ``(out, in)`` and ``bias`` of shape ``(out,)``.

    >>> import numpy as np
    >>> from deqcore import nn
    >>> layer = nn.Dense(4, 3, "tanh")
    >>> params, state = nn.setup(np.random.default_rng(0), layer)
    >>> layer(np.ones((2, 4)), params, state)[0].shape
    (2, 3)
    >>> layer(np.ones((2, 5)), params, state)
    Traceback (most recent call last):
    ...
    deqcore.nn.core.ShapeError: Dense(4 => 3, tanh): expected an input of shape (B, 4) ...; got shape (2, 5)
    """

    def __init__(self, in_features, out_features, activation=None, use_bias=True, init="glorot_uniform",
                 weight_norm=False, spectral_norm=False):
        self.in_features = check_size(in_features, "in_features")
        self.out_features = check_size(out_features, "out_features")
        super().__init__(activation, use_bias, init, weight_norm, spectral_norm)
        self.weight_shape = (self.out_features, self.in_features)
        self.fans = (self.in_features, self.out_features)
        self.bias_axis = -1

    def __repr__(self):
        return f"Dense({self.in_features} => {self.out_features}{self._options()})"

    def _prepare(self, x):
        check_array_input(self, x)
        if x.ndim < 2 or x.shape[-1] != self.in_features:
            raise shape_error(self, f"(B, {self.in_features}) (features on the last axis)", x)
        return x

    def _contract(self, x, w):
        return x @ w.T

    def _bound(self, w, bias):
        wt = w.T
        if self.activation.is_identity:
            return (lambda x: x @ wt) if bias is None else (lambda x: x @ wt + bias)
        value = self.activation.value_fn(bias, -1)
        return lambda x: value(x @ wt)

    def _tangent_fn(self, d, w):
        wt = w.T
        if d is None:
            return lambda dx: dx @ wt
        return lambda dx: d * (dx @ wt)

    def _input_fn(self, d, x, w):
        if d is None:
            return lambda dy: dy @ w
        return lambda dy: (d * dy) @ w

    def _transpose(self, dz, x, w):
        dw = dz.reshape(-1, self.out_features).T @ x.reshape(-1, self.in_features)
        return dz @ w, dw

    def _transpose_input(self, dz, x, w):
        return dz @ w

    def _transpose_weight(self, dz, x, w):
        return dz.reshape(-1, self.out_features).T @ x.reshape(-1, self.in_features)

    def _bias(self, b):
        return b

    def _bias_grad(self, dz):
        return dz.reshape(-1, self.out_features).sum(axis=0)
