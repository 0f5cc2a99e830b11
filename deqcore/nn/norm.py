"""Normalisation layers: :class:`LayerNorm` (trailing axes of each sample) and :class:`GroupNorm`
(groups of channels of NCHW-like inputs), with an optional elementwise/per-channel affine map.

Both standardise over some axes; the Jacobian of x ↦ (x − mean)/std is symmetric, so one function gives
both the pullback and the tangent.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._checks import check_tolerance
from ..backend import get_namespace
from .core import Layer, check_array_input, shape_error
from .linear import check_size

__all__ = ["LayerNorm", "GroupNorm"]


def _standardise(x, axes, eps):
    xp = get_namespace(x)
    mean = xp.mean(x, axis=axes, keepdims=True)
    centred = x - mean
    inv_std = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=axes, keepdims=True) + eps)
    return centred * inv_std, inv_std


def _standardise_linear(t, xhat, inv_std, axes):
    """The (symmetric) Jacobian of standardisation applied to ``t``."""
    xp = get_namespace(t)
    return inv_std * (t - xp.mean(t, axis=axes, keepdims=True)
                      - xhat * xp.mean(t * xhat, axis=axes, keepdims=True))


class _Normalisation(Layer):
    """Shared pass: reshape to groups, standardise over ``axes``, reshape back, scale and shift."""

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

    def _forward(self, x):
        grouped, axes = self._grouped(x)
        xhat, inv_std = _standardise(grouped, axes, self.eps)
        return grouped.shape, axes, xhat, inv_std

    def _affine(self, xhat, params):
        if not self.affine:
            return xhat
        return xhat * self._view(params["scale"], xhat.ndim) + self._view(params["bias"], xhat.ndim)

    def __call__(self, x, params, state):
        _, _, xhat, _ = self._forward(x)
        return self._affine(xhat.reshape(x.shape), params), state

    def vjp(self, x, params, state):
        gshape, axes, xhat, inv_std = self._forward(x)
        xhat_x = xhat.reshape(x.shape)

        def pullback(dy):
            if not self.affine:
                return _standardise_linear(dy.reshape(gshape), xhat, inv_std, axes).reshape(x.shape), {}
            dscale = self._reduce(dy * xhat_x)
            dbias = self._reduce(dy)
            dxhat = (dy * self._view(params["scale"], dy.ndim)).reshape(gshape)
            dx = _standardise_linear(dxhat, xhat, inv_std, axes).reshape(x.shape)
            return dx, {"scale": dscale, "bias": dbias}

        return self._affine(xhat_x, params), pullback, state

    def jvp(self, x, params, state, dx, dparams=None):
        gshape, axes, xhat, inv_std = self._forward(x)
        xhat_x = xhat.reshape(x.shape)
        dxhat = _standardise_linear(dx.reshape(gshape), xhat, inv_std, axes).reshape(x.shape)
        if not self.affine:
            return xhat_x, dxhat
        n = x.ndim
        dy = dxhat * self._view(params["scale"], n)
        if dparams is not None:
            dy = dy + xhat_x * self._view(dparams["scale"], n) + self._view(dparams["bias"], n)
        return self._affine(xhat_x, params), dy


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

    def _grouped(self, x):
        check_array_input(self, x)
        n = len(self.shape)
        if x.ndim < n + 1 or tuple(x.shape[-n:]) != self.shape:
            raise shape_error(self, f"(B, ..., {', '.join(map(str, self.shape))})", x)
        return x, tuple(range(x.ndim - n, x.ndim))

    def _view(self, p, ndim):
        return p

    def _reduce(self, t):
        return t.reshape((-1,) + self.shape).sum(axis=0)


class GroupNorm(_Normalisation):
    """Split the channels (axis 1) of ``(B, C, ...)`` inputs into ``groups``, standardise each group over
    its channels and remaining axes, then ``* scale + bias`` per channel when ``affine``.

    >>> import numpy as np
    >>> from deqcore import nn
    >>> gn = nn.GroupNorm(4, 2)
    >>> params, state = nn.setup(np.random.default_rng(0), gn)
    >>> gn(np.random.default_rng(1).normal(size=(3, 4, 5, 5)), params, state)[0].shape
    (3, 4, 5, 5)
    """

    def __init__(self, channels, groups, eps=1e-5, affine=True):
        self.channels = check_size(channels, "channels")
        self.groups = check_size(groups, "groups")
        if self.channels % self.groups:
            raise ValueError(f"channels ({self.channels}) must be divisible by groups ({self.groups})")
        self.param_shape = (self.channels,)
        super().__init__(eps, affine)

    def __repr__(self):
        return f"GroupNorm({self.channels}, groups={self.groups})"

    def _grouped(self, x):
        check_array_input(self, x)
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise shape_error(self, f"(B, {self.channels}, ...)", x)
        return x.reshape((x.shape[0], self.groups, -1)), (2,)

    def _view(self, p, ndim):
        return p.reshape((-1,) + (1,) * (ndim - 2))

    def _reduce(self, t):
        axes = (0,) + tuple(range(2, t.ndim))
        return t.sum(axis=axes)
