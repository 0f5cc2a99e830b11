"""Normalisation layers: :class:`LayerNorm` (trailing axes of each sample), :class:`GroupNorm` (groups of
channels) and :class:`BatchNorm` (each channel over the batch, running statistics in the state), each with
an optional per-element/per-channel affine map ``* scale + bias``.

Standardising x ↦ (x − mean)/std over some axes has a symmetric Jacobian, so one function gives both the
pullback and the tangent.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .._checks import check_probability, check_tolerance
from ..backend import get_namespace
from .core import Layer, check_array_input, check_input_dtype, check_params, shape_error
from .linear import check_size

__all__ = ["LayerNorm", "GroupNorm", "BatchNorm"]


def _standardise(x, axes, eps):
    xp = get_namespace(x)
    mean = xp.mean(x, axis=axes, keepdims=True)
    centred = x - mean
    var = xp.mean(centred * centred, axis=axes, keepdims=True)
    return centred / xp.sqrt(var + eps), mean, var


def _standardise_linear(t, xhat, inv_std, axes):
    """The (symmetric) Jacobian of standardisation over ``axes`` applied to ``t``."""
    xp = get_namespace(t)
    return inv_std * (t - xp.mean(t, axis=axes, keepdims=True)
                      - xhat * xp.mean(t * xhat, axis=axes, keepdims=True))


def _standardised(x, grouped, axes, eps):
    """``(xhat, jacobian, mean, var)`` for standardising the ``grouped`` view of ``x`` over ``axes``."""
    xp = get_namespace(x)
    xhat, mean, var = _standardise(grouped, axes, eps)
    inv_std = 1.0 / xp.sqrt(var + eps)

    def jacobian(t):
        return _standardise_linear(t.reshape(grouped.shape), xhat, inv_std, axes).reshape(x.shape)

    return xhat.reshape(x.shape), jacobian, mean, var


class _Normalisation(Layer):
    """Shared passes. Subclasses implement ``_normalise(x, state) -> (xhat, jacobian, new_state)``,
    ``_view(p, ndim)`` (a parameter broadcast against x) and ``_reduce(t)`` (sum to a parameter's shape)."""

    def __init__(self, eps, affine):
        self.eps = check_tolerance(eps, "eps")
        if self.eps == 0:
            raise ValueError("eps must be > 0")
        if not isinstance(affine, bool):
            raise TypeError(f"affine must be True or False, got {type(affine).__name__}")
        self.affine = affine

    def init(self, rng):
        if not self.affine:
            return {}, {}
        return {"scale": np.ones(self.param_shape), "bias": np.zeros(self.param_shape)}, {}

    def _affine(self, xhat, params):
        if not self.affine:
            return xhat
        return xhat * self._view(params["scale"], xhat.ndim) + self._view(params["bias"], xhat.ndim)

    def _held_dtype(self, params, state):
        """The dtype of what this layer holds (parameters, running statistics), or None."""
        return params["scale"].dtype if self.affine else None

    def _check_dtype(self, x, params, state):
        if self.affine:
            check_params(self, params, {"scale": tuple(self.param_shape), "bias": tuple(self.param_shape)})
        held = self._held_dtype(params, state)
        if held is not None and hasattr(x, "dtype"):
            check_input_dtype(self, x, held)

    def __call__(self, x, params, state):
        self._check_dtype(x, params, state)
        xhat, _, state = self._normalise(x, state)
        return self._affine(xhat, params), state

    def vjp(self, x, params, state):
        self._check_dtype(x, params, state)
        xhat, jacobian, state = self._normalise(x, state)

        def pullback(dy):
            if not self.affine:
                return jacobian(dy), {}
            dx = jacobian(dy * self._view(params["scale"], dy.ndim))
            return dx, {"scale": self._reduce(dy * xhat), "bias": self._reduce(dy)}

        return self._affine(xhat, params), pullback, state

    def jvp(self, x, params, state, dx, dparams=None):
        self._check_dtype(x, params, state)
        xhat, jacobian, _ = self._normalise(x, state)
        dxhat = jacobian(dx)
        if not self.affine:
            return xhat, dxhat
        n = x.ndim
        dy = dxhat * self._view(params["scale"], n)
        if dparams is not None:
            dy = dy + xhat * self._view(dparams["scale"], n) + self._view(dparams["bias"], n)
        return self._affine(xhat, params), dy


class LayerNorm(_Normalisation):
    """Standardise each sample over its trailing ``shape`` axes, then ``* scale + bias`` (both of that
    shape) when ``affine``.

    >>> import numpy as np
    >>> from deqcore import nn
    >>> ln = nn.LayerNorm(4)
    >>> params, state = nn.setup(np.random.default_rng(0), ln)
    >>> y, _ = ln(np.arange(8.0).reshape(2, 4), params, state)
    >>> np.allclose(y.mean(axis=1), 0), np.allclose(y.std(axis=1), 1, atol=1e-4)
    (True, True)
    """

    def __init__(self, shape, eps=1e-5, affine=True):
        if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
            shape = (shape,)
        if not isinstance(shape, (tuple, list)) or not shape:
            raise TypeError(f"shape must be an int or a non-empty tuple of ints, got {shape!r}")
        self.shape = tuple(check_size(s, "shape") for s in shape)
        self.param_shape = self.shape
        super().__init__(eps, affine)

    def __repr__(self):
        return f"LayerNorm({self.shape})"

    def _normalise(self, x, state):
        check_array_input(self, x)
        n = len(self.shape)
        if x.ndim < n + 1 or tuple(x.shape[-n:]) != self.shape:
            raise shape_error(self, f"(B, ..., {', '.join(map(str, self.shape))})", x)
        xhat, jacobian, _, _ = _standardised(x, x, tuple(range(x.ndim - n, x.ndim)), self.eps)
        return xhat, jacobian, state

    def _view(self, p, ndim):
        return p

    def _reduce(self, t):
        return t.reshape((-1,) + self.shape).sum(axis=0)


class _ChannelNorm(_Normalisation):
    """Parameters per channel (axis 1)."""

    def __init__(self, channels, eps, affine):
        self.channels = check_size(channels, "channels")
        self.param_shape = (self.channels,)
        super().__init__(eps, affine)

    def _check(self, x):
        check_array_input(self, x)
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise shape_error(self, f"(B, {self.channels}, ...)", x)

    def _view(self, p, ndim):
        return p.reshape((-1,) + (1,) * (ndim - 2))

    def _reduce(self, t):
        return t.sum(axis=(0,) + tuple(range(2, t.ndim)))


class GroupNorm(_ChannelNorm):
    """Split the channels (axis 1) of ``(B, C, ...)`` inputs into ``groups``, standardise each group over
    its channels and remaining axes, then ``* scale + bias`` per channel when ``affine``. Samples stay
    independent (unlike BatchNorm), which suits DEQs.

    >>> import numpy as np
    >>> from deqcore import nn
    >>> gn = nn.GroupNorm(4, 2)
    >>> params, state = nn.setup(np.random.default_rng(0), gn)
    >>> gn(np.random.default_rng(1).normal(size=(3, 4, 5, 5)), params, state)[0].shape
    (3, 4, 5, 5)
    """

    def __init__(self, channels, groups, eps=1e-5, affine=True):
        super().__init__(channels, eps, affine)
        self.groups = check_size(groups, "groups")
        if self.channels % self.groups:
            raise ValueError(f"channels ({self.channels}) must be divisible by groups ({self.groups})")

    def __repr__(self):
        return f"GroupNorm({self.channels}, groups={self.groups})"

    def _normalise(self, x, state):
        self._check(x)
        per_group = math.prod(x.shape[1:]) // self.groups      # (not -1: NumPy cannot infer it for an empty batch)
        xhat, jacobian, _, _ = _standardised(x, x.reshape((x.shape[0], self.groups, per_group)), (2,), self.eps)
        return xhat, jacobian, state


class BatchNorm(_ChannelNorm):
    """Standardise each channel (axis 1) over the batch and remaining axes. In training mode the batch's
    statistics are used and the running mean/variance in the state move by ``momentum`` (the variance
    unbiased, as in PyTorch); in test mode (``nn.testmode(state)``) the running statistics are used.

    Training-mode batch statistics couple the samples of a batch; inside DEQs prefer GroupNorm/LayerNorm.

    >>> import numpy as np
    >>> from deqcore import nn
    >>> bn = nn.BatchNorm(3)
    >>> params, state = nn.setup(np.random.default_rng(0), bn)
    >>> x = np.random.default_rng(1).normal(2.0, 1.0, size=(64, 3))
    >>> y, state = bn(x, params, state)
    >>> np.allclose(y.mean(axis=0), 0), bool(np.all(np.abs(state["running_mean"] - 0.2) < 0.05))
    (True, True)
    """

    def __init__(self, channels, momentum=0.1, eps=1e-5, affine=True):
        super().__init__(channels, eps, affine)
        self.momentum = check_probability(momentum, "momentum", open_low=False)

    def __repr__(self):
        return f"BatchNorm({self.channels})"

    def row_coupling(self, state):
        return f"{self!r} in training mode (batch statistics)" if state.get("training", False) else None

    def _held_dtype(self, params, state):
        return state["running_mean"].dtype        # (a float64 batch would turn float32 running statistics into float64)

    def init(self, rng):
        params, _ = super().init(rng)
        return params, {"running_mean": np.zeros(self.channels), "running_var": np.ones(self.channels),
                        "training": True}

    def _normalise(self, x, state):
        self._check(x)
        xp = get_namespace(x)
        view = (1, -1) + (1,) * (x.ndim - 2)
        if not state["training"]:
            inv_std = (1.0 / xp.sqrt(state["running_var"] + self.eps)).reshape(view)
            xhat = (x - state["running_mean"].reshape(view)) * inv_std
            return xhat, lambda t: t * inv_std, state
        count = x.size // self.channels
        if count < 2:
            raise shape_error(self, f"(B, {self.channels}, ...) with more than one value per channel in "
                              "training mode", x)
        axes = (0,) + tuple(range(2, x.ndim))
        xhat, jacobian, mean, var = _standardised(x, x, axes, self.eps)
        m, unbiased = self.momentum, count / (count - 1)
        new_state = {**state, "running_mean": (1 - m) * state["running_mean"] + m * mean.reshape(-1),
                     "running_var": (1 - m) * state["running_var"] + (m * unbiased) * var.reshape(-1)}
        return xhat, jacobian, new_state
