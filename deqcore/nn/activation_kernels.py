"""Fused activation kernels: the bias add, the activation and its derivative in one pass.

``activation_forward(z, bias, code) -> (y, d)`` computes ``y = act(z + bias)`` and ``d = act'(z + bias)``, what a
layer's forward pass and its VJP/JVP need (the pullback is then one product ``dy · d``); ``activation_value`` is
the same without ``d``, for calls that need no derivative. Both take ``z`` as a C-contiguous ``(P, C, Q)`` array and
``bias`` of shape ``(C,)`` (or ``(0,)`` for none), added along axis 1: a Dense layer's ``(..., out)`` output is
``(B, out, 1)``, a convolution's channel-major output ``(1, C, B·H·W)``. The activation is an integer ``code``
(see :data:`CODES`). :func:`fused_activation` takes any array, an axis for the bias, and a name.

The NumPy form of tanh's VJP costs four passes (the bias add, tanh, 1 - y², the product) and keeps z and y alive
until the pullback, which recomputes the derivative on every call (an implicit backward pass calls it once per
Krylov iteration); the kernel reads z once and writes y and d, and the pullback is the product alone. The product
has no kernel: it is one NumPy pass, and fusing it with the bias gradient's column sums saved under 2% of a Dense
pullback (the two matrix products dominate). On NumPy arrays smaller than a few thousand elements the cheap
activations (relu, tanh, sigmoid) run the NumPy formulas, whose fixed cost per call is lower (``_NUMPY_BELOW``).

>>> import numpy as np
>>> y, d = fused_activation(np.array([[-1.0, 0.0, 2.0]]), "relu")
>>> y, d
(array([[0., 0., 2.]]), array([[0., 0., 1.]]))
>>> fused_activation(np.zeros((2, 3)), "tanh", bias=np.array([0.0, 1.0, 2.0]))[1].round(4)
array([[1.    , 0.42  , 0.0707],
       [1.    , 0.42  , 0.0707]])
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..backend import get_kernel, get_namespace, register_kernel

__all__ = ["CODES", "REFERENCE", "activation_forward_reference", "activation_value_reference", "fused_activation",
           "activation_value_fn", "activation_forward_fn"]

#: activation name -> the integer code the kernels take
CODES = {"identity": 0, "tanh": 1, "relu": 2, "sigmoid": 3, "softplus": 4, "elu": 5, "gelu": 6}
_NAMES = {code: name for name, code in CODES.items()}

_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
_GELU_LIMIT = 22.0


def _sigmoid(xp, z):
    return 0.5 * (1.0 + xp.tanh(0.5 * z))


def _softplus(xp, z):
    return xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))


def _gelu(xp, z):
    return 0.5 * z * (1.0 + xp.tanh(_GELU_K * (z + _GELU_C * z ** 3)))


def _gelu_derivative(xp, z, y):
    # past |z| = 22 the tanh is exactly ±1; clipping keeps z² finite there (0 · inf would give NaN)
    zc = xp.clip(z, -_GELU_LIMIT, _GELU_LIMIT)
    t = xp.tanh(_GELU_K * (zc + _GELU_C * zc ** 3))
    return 0.5 * (1.0 + t) + 0.5 * zc * (1.0 - t * t) * _GELU_K * (1.0 + 3.0 * _GELU_C * zc * zc)


#: name -> (f(xp, z), f'(xp, z, y) with y = f(z)): the ground truth, on any array namespace
REFERENCE = {
    "identity": (lambda xp, z: z, lambda xp, z, y: xp.ones_like(z)),
    "tanh": (lambda xp, z: xp.tanh(z), lambda xp, z, y: 1.0 - y * y),
    "relu": (lambda xp, z: xp.maximum(z, 0), lambda xp, z, y: (z > 0).astype(z.dtype)),
    "sigmoid": (_sigmoid, lambda xp, z, y: y * (1.0 - y)),
    "softplus": (_softplus, lambda xp, z, y: _sigmoid(xp, z)),
    "elu": (lambda xp, z: xp.where(z > 0, z, xp.expm1(xp.minimum(z, 0))),
            lambda xp, z, y: xp.exp(xp.minimum(z, 0))),
    "gelu": (_gelu, _gelu_derivative),
}


def _biased(z, bias):
    return z + bias[:, None] if bias.shape[0] else z


def activation_forward_reference(z, bias, code):
    """Reference (array-namespace) implementation: ``(act(z + bias), act'(z + bias))``."""
    xp = get_namespace(z)
    f, df = REFERENCE[_NAMES[int(code)]]
    z = _biased(z, bias)
    y = f(xp, z)
    return y, df(xp, z, y)


def activation_value_reference(z, bias, code):
    """Reference (array-namespace) implementation: ``act(z + bias)``."""
    return REFERENCE[_NAMES[int(code)]][0](get_namespace(z), _biased(z, bias))


# -- any array, any axis ---------------------------------------------------------------------------------------------
def _channel_view(z, axis, xp):
    """A C-contiguous (P, C, Q) view of z's memory with C = z.shape[axis] (C = 1 when axis is None), and the map
    from an array of that shape back to z's shape and memory order. Copies z only when no axis order makes it
    contiguous."""
    ndim = z.ndim
    if z.flags.c_contiguous:
        perm, zt = None, z
    else:
        perm = sorted(range(ndim), key=lambda k: -abs(z.strides[k]) if z.shape[k] > 1 else 0)
        zt = z.transpose(perm)
        if not zt.flags.c_contiguous:
            perm, zt = None, xp.ascontiguousarray(z)
    shape = zt.shape
    if axis is None:
        z3 = zt.reshape(1, 1, zt.size)
    else:
        k = (axis % ndim) if perm is None else perm.index(axis % ndim)
        z3 = zt.reshape(math.prod(shape[:k]), shape[k], math.prod(shape[k + 1:]))
    if perm is None:
        return z3, lambda a: a.reshape(shape)
    inverse = [perm.index(k) for k in range(ndim)]
    return z3, lambda a: a.reshape(shape).transpose(inverse)


# Below these sizes (float32, float64) NumPy's passes cost less than a kernel call's fixed overhead (see
# ARCHITECTURE.md, "Constants set by measurement").
_NUMPY_BELOW = {"identity": {"f": 0, "d": 0}, "tanh": {"f": 4096, "d": 512}, "relu": {"f": 8192, "d": 8192},
                "sigmoid": {"f": 1024, "d": 256}, "softplus": {"f": 256, "d": 256}, "elu": {"f": 128, "d": 128},
                "gelu": {"f": 0, "d": 0}}
_NO_BIAS = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}


def fused_activation(z, name, bias=None, axis=-1, derivative=True):
    """``(act(z + b), act'(z + b))`` (or the value alone with ``derivative=False``) for any array ``z``, with
    ``bias`` (1-d, or None) broadcast along ``axis``; the outputs keep z's shape and memory order.

    >>> import numpy as np
    >>> fused_activation(np.array([[0.0, 1.0]]), "sigmoid", derivative=False)
    array([[0.5       , 0.73105858]])
    """
    xp = np if type(z) is np.ndarray else get_namespace(z)
    if bias is not None:
        if bias.ndim != 1 or z.ndim == 0 or bias.shape[0] != z.shape[axis]:
            raise ValueError(f"bias must be 1-d with the length of axis {axis} of z {tuple(z.shape)}; got shape "
                             f"{tuple(bias.shape)}")
        if bias.dtype != z.dtype:
            dtype = xp.result_type(z.dtype, bias.dtype)
            z, bias = z.astype(dtype, copy=False), bias.astype(dtype, copy=False)
        if not bias.flags.c_contiguous:
            bias = xp.ascontiguousarray(bias)
    if z.dtype.char not in "fd" or z.ndim == 0 or (xp is np and z.size < _NUMPY_BELOW[name][z.dtype.char]):
        zb = z
        if bias is not None:
            shape = [1] * z.ndim
            shape[axis % z.ndim] = -1
            zb = z + bias.reshape(shape)
        f, df = REFERENCE[name]
        y = f(xp, zb)
        return (y, df(xp, zb, y)) if derivative else y
    z3, restore = _channel_view(z, None if bias is None else axis, xp)
    if bias is None:
        bias = _NO_BIAS[z.dtype] if xp is np else xp.empty(0, dtype=z.dtype)
    if derivative:
        y, d = _kernel("activation_forward", xp)(z3, bias, CODES[name])
        return restore(y), restore(d)
    return restore(_kernel("activation_value", xp)(z3, bias, CODES[name]))


def activation_forward_fn(name):
    """``z -> fused_activation(z, name)``, the value and the derivative without a bias (equal bit for bit),
    with the kernel (and the ``DEQCORE_KERNELS`` setting, read now) resolved once: for a layer's VJP bound to
    its parameters. Any z but a C-contiguous NumPy float array takes :func:`fused_activation`.

    >>> import numpy as np
    >>> z = np.linspace(-2.0, 2.0, 8192).reshape(64, 128)
    >>> y, d = activation_forward_fn("tanh")(z)
    >>> y_f, d_f = fused_activation(z, "tanh")
    >>> bool(np.array_equal(y, y_f) and np.array_equal(d, d_f))
    True
    """
    value, derivative = REFERENCE[name]
    code, below = CODES[name], _NUMPY_BELOW[name]
    kernel = _kernel("activation_forward", np)

    def forward(z):
        if type(z) is not np.ndarray or not z.flags.c_contiguous or z.ndim == 0 or z.dtype.char not in "fd":
            return fused_activation(z, name)
        if z.size < below[z.dtype.char]:
            y = value(np, z)
            return y, derivative(np, z, y)
        shape = z.shape
        y, d = kernel(z.reshape(1, 1, z.size), _NO_BIAS[z.dtype], code)
        return y.reshape(shape), d.reshape(shape)

    return forward


def activation_value_fn(name, bias=None, axis=-1):
    """``z -> fused_activation(z, name, bias, axis, derivative=False)`` (equal bit for bit), with what does not
    depend on z resolved once: the kernel (and the ``DEQCORE_KERNELS`` setting, read now), the bias's checks. For
    the many calls of one solve on C-contiguous NumPy arrays of the bias's dtype; any other z takes
    :func:`fused_activation`.

    >>> import numpy as np
    >>> z = np.linspace(-2.0, 2.0, 8192).reshape(64, 128)
    >>> bool(np.array_equal(activation_value_fn("tanh")(z), fused_activation(z, "tanh", derivative=False)))
    True
    """
    if bias is not None and (getattr(bias, "ndim", 0) != 1 or type(bias) is not np.ndarray
                             or not bias.flags.c_contiguous or bias.dtype.char not in "fd"):
        return lambda z: fused_activation(z, name, bias, axis, False)
    reference, code, below = REFERENCE[name][0], CODES[name], _NUMPY_BELOW[name]
    kernel = _kernel("activation_value", np)
    dtype_char = None if bias is None else bias.dtype.char

    def value(z):
        if (type(z) is not np.ndarray or not z.flags.c_contiguous or z.ndim == 0 or z.dtype.char not in "fd"
                or (dtype_char is not None and (z.dtype.char != dtype_char or bias.shape[0] != z.shape[axis]))):
            return fused_activation(z, name, bias, axis, False)
        shape = z.shape
        if bias is None:
            if z.size < below[z.dtype.char]:
                return reference(np, z)
            return kernel(z.reshape(1, 1, z.size), _NO_BIAS[z.dtype], code).reshape(shape)
        if z.size < below[z.dtype.char]:
            return reference(np, z + bias.reshape([-1 if k == axis % z.ndim else 1 for k in range(z.ndim)]))
        k = axis % z.ndim
        z3 = z.reshape(math.prod(shape[:k]), shape[k], math.prod(shape[k + 1:]))
        return kernel(z3, bias, code).reshape(shape)

    return value


_CHOSEN = {}


def _kernel(name, xp):
    """``get_kernel(name, xp)``, remembered per namespace and ``DEQCORE_KERNELS`` setting (the only things the
    choice depends on): the lookup costs more than a layer call on small arrays."""
    key = (name, xp, os.environ.get("DEQCORE_KERNELS"))
    kernel = _CHOSEN.get(key)
    if kernel is None:
        kernel = _CHOSEN[key] = get_kernel(name, xp)
    return kernel


# -- registration ----------------------------------------------------------------------------------------------------
def example(rng, dtype, size="small"):
    """gelu (the longest formula) with a bias along the channels, over values that saturate it."""
    shape = (3, 5, 7) if size == "small" else (64, 256, 64)
    z = (rng.standard_normal(shape) * np.exp(rng.uniform(-3, 3.5, shape))).astype(dtype)
    return z, rng.standard_normal(shape[1]).astype(dtype), CODES["gelu"]


def value_example(rng, dtype, size="small"):
    """softplus with a bias along the last axis (a Dense layer's layout)."""
    shape = (6, 11, 1) if size == "small" else (4096, 256, 1)
    z = (rng.standard_normal(shape) * np.exp(rng.uniform(-3, 3.5, shape))).astype(dtype)
    return z, rng.standard_normal(shape[1]).astype(dtype), CODES["softplus"]


def forward_traffic(z, bias, code):
    """Read z and the bias, write y and d."""
    return 3 * z.nbytes + bias.nbytes


def value_traffic(z, bias, code):
    """Read z and the bias, write y."""
    return 2 * z.nbytes + bias.nbytes


_MOD = "deqcore.nn.activation_kernels"
_SIG = "void({t}[::1], {t}[::1], int64, int64, int64, {t}[::1], {t}[::1], boolean)"
register_kernel(
    "activation_forward",
    reference=activation_forward_reference,
    numba_cpu=f"{_MOD}_numba:activation_forward_numba_cpu",
    numba_cuda=f"{_MOD}_numba:activation_forward_numba_cuda",
    cuda_ptx_targets=[(f"{_MOD}_numba:activation_forward_cuda_kernel", _SIG)],
    example=f"{_MOD}:example",
    traffic=f"{_MOD}:forward_traffic",
)
register_kernel(        # the same CPU loop and CUDA kernel, without the derivative's store
    "activation_value",
    reference=activation_value_reference,
    numba_cpu=f"{_MOD}_numba:activation_value_numba_cpu",
    numba_cuda=f"{_MOD}_numba:activation_value_numba_cuda",
    example=f"{_MOD}:value_example",
    traffic=f"{_MOD}:value_traffic",
)
