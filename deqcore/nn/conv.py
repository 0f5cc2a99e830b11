"""2-d convolution (NCHW) by im2col + one matrix product, on NumPy and CuPy alike.

The patches are read with a strided view of the padded input (no Python loop over pixels); the pullback
scatters the patch gradients back with one strided add per kernel offset (kh·kw adds, each vectorised).
"""

from __future__ import annotations

import numbers

from ..backend import get_namespace
from .core import Layer, check_array_input, shape_error
from .linear import WeightedLayer, check_size

__all__ = ["Conv2d", "Upsample"]


def _pair(value, name, minimum):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {tuple(value)}")
    return int(value[0]), int(value[1])


class _Patches:
    """Transposed im2col matrix of one input: rows (c, ki, kj), columns (b, i, j) (the copy reads rows of
    the image contiguously, and the pullback's scatter-adds write them contiguously)."""

    def __init__(self, cols, batch, out_hw, padded_shape):
        self.cols, self.batch, self.out_hw, self.padded_shape = cols, batch, out_hw, padded_shape


class Conv2d(WeightedLayer):
    """2-d cross-correlation on ``(B, C_in, H, W)`` inputs, giving ``(B, C_out, H_out, W_out)``.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size, stride: an int or a pair ``(h, w)``.
        padding: zeros added on each side, an int, a pair, or ``"same"`` (stride 1 and odd kernels: the
            output keeps the input's height and width).
        activation, use_bias, init, weight_norm, spectral_norm: as for :class:`Dense`.

    Parameters: ``weight`` of shape ``(out, in, kh, kw)`` and ``bias`` of shape ``(out,)``.

    >>> import numpy as np
    >>> from deqcore import nn
    >>> conv = nn.Conv2d(3, 8, 3, padding=1, activation="relu")
    >>> params, state = nn.setup(np.random.default_rng(0), conv)
    >>> conv(np.ones((2, 3, 16, 16)), params, state)[0].shape
    (2, 8, 16, 16)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, activation=None,
                 use_bias=True, init="glorot_uniform", weight_norm=False, spectral_norm=False):
        self.in_channels = check_size(in_channels, "in_channels")
        self.out_channels = check_size(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        if isinstance(padding, str):
            if padding != "same":
                raise ValueError(f"padding must be an int, a pair of ints or 'same'; got {padding!r}")
            if self.stride != (1, 1) or any(k % 2 == 0 for k in self.kernel_size):
                raise ValueError("padding='same' needs stride 1 and odd kernel sizes; got "
                                 f"stride={self.stride}, kernel_size={self.kernel_size}")
            padding = tuple(k // 2 for k in self.kernel_size)
        self.padding = _pair(padding, "padding", 0)
        super().__init__(activation, use_bias, init, weight_norm, spectral_norm)
        kh, kw = self.kernel_size
        self.weight_shape = (self.out_channels, self.in_channels, kh, kw)
        self.fans = (self.in_channels * kh * kw, self.out_channels * kh * kw)
        self.bias_axis = 1

    def __repr__(self):
        extra = "" if self.stride == (1, 1) else f", stride={self.stride}"
        extra += "" if self.padding == (0, 0) else f", padding={self.padding}"
        return (f"Conv2d({self.in_channels} => {self.out_channels}, kernel_size={self.kernel_size}"
                f"{extra}{self._options()})")

    def output_shape(self, height: int, width: int):
        """``(H_out, W_out)`` for an input of the given height and width."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1

    def _prepare(self, x):
        check_array_input(self, x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise shape_error(self, f"(B, {self.in_channels}, H, W) (NCHW)", x)
        ho, wo = self.output_shape(x.shape[2], x.shape[3])
        if ho < 1 or wo < 1:
            raise shape_error(self, f"(B, {self.in_channels}, H, W) with H, W large enough for kernel "
                              f"{self.kernel_size} after padding {self.padding}", x)
        xp = get_namespace(x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        xpad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else xp.ascontiguousarray(x)
        b, c = x.shape[:2]
        s = xpad.strides
        windows = xp.lib.stride_tricks.as_strided(
            xpad, shape=(c, kh, kw, b, ho, wo), strides=(s[1], s[2], s[3], s[0], s[2] * sh, s[3] * sw))
        cols = windows.reshape(c * kh * kw, b * ho * wo)  # copies: the (transposed) im2col matrix
        return _Patches(cols, b, (ho, wo), xpad.shape)

    def _contract(self, patches, w):
        ho, wo = patches.out_hw
        z = w.reshape(self.out_channels, -1) @ patches.cols
        return z.reshape(self.out_channels, patches.batch, ho, wo).transpose(1, 0, 2, 3)

    def _transpose(self, dz, patches, w):
        xp = get_namespace(dz)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho, wo = patches.out_hw
        dz_mat = dz.transpose(1, 0, 2, 3).reshape(self.out_channels, -1)
        dw = (dz_mat @ patches.cols.T).reshape(w.shape)
        dcols = (w.reshape(self.out_channels, -1).T @ dz_mat).reshape(
            self.in_channels, kh, kw, patches.batch, ho, wo)
        b, c, hp, wp = patches.padded_shape
        dxpad = xp.zeros((c, b, hp, wp), dtype=dz.dtype)
        for i in range(kh):
            for j in range(kw):
                dxpad[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += dcols[:, i, j]
        return dxpad[:, :, ph:hp - ph, pw:wp - pw].transpose(1, 0, 2, 3), dw

    def _transpose_weight(self, dz, patches, w):
        dz_mat = dz.transpose(1, 0, 2, 3).reshape(self.out_channels, -1)
        return (dz_mat @ patches.cols.T).reshape(w.shape)

    def _bias(self, b):
        return b[:, None, None]

    def _bias_grad(self, dz):
        return dz.sum(axis=(0, 2, 3))


class Upsample(Layer):
    """Nearest-neighbour upsampling of NCHW inputs by an integer ``scale`` (an int or ``(sh, sw)``):
    ``(B, C, H, W) -> (B, C, sh·H, sw·W)``; used by multiscale mapping layers (coarse to fine).

    >>> import numpy as np
    >>> Upsample(2)(np.arange(4.0).reshape(1, 1, 2, 2), {}, {})[0][0, 0]
    array([[0., 0., 1., 1.],
           [0., 0., 1., 1.],
           [2., 2., 3., 3.],
           [2., 2., 3., 3.]])
    """

    def __init__(self, scale):
        self.scale = _pair(scale, "scale", 1)

    def __repr__(self):
        return f"Upsample(scale={self.scale})"

    def _up(self, x):
        check_array_input(self, x)
        if x.ndim != 4:
            raise shape_error(self, "(B, C, H, W) (NCHW)", x)
        xp = get_namespace(x)
        (b, c, h, w), (sh, sw) = x.shape, self.scale
        return xp.broadcast_to(x[:, :, :, None, :, None], (b, c, h, sh, w, sw)).reshape(b, c, h * sh, w * sw)

    def __call__(self, x, params, state):
        return self._up(x), state

    def vjp(self, x, params, state):
        (b, c, h, w), (sh, sw) = x.shape, self.scale
        return self._up(x), lambda dy: (dy.reshape(b, c, h, sh, w, sw).sum(axis=(3, 5)), {}), state

    def jvp(self, x, params, state, dx, dparams=None):
        return self._up(x), self._up(dx)
