"""Numba CPU and CUDA versions of the activation kernels (loaded lazily through the kernel registry).

The scalar math is written once, as ``@numba.njit(inline="always")`` helpers that the CPU loops and the CUDA
kernel share. It calls no libm function: ``exp``/``expm1`` are a Cody–Waite range reduction, a Taylor polynomial
and a power of two built from the exponent bits, ``log1p`` on [0, 1] is the ``atanh`` series, and tanh, sigmoid,
softplus, elu and gelu are written on top of those. Without calls, LLVM vectorises the CPU loops (Numba on its
own calls libm once per element, which is several times slower than NumPy's SIMD loops); on a GPU the kernel is
bound by memory traffic either way. Accuracy: a few ulp in float64 and float32 (the polynomial degrees follow the
dtype), and no NaN or inf where the function and its derivative are finite.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from ..backend import get_namespace
from ..backend.numba_tools import CACHE, cuda_simulator_enabled, launch_config, numba
from numba import cuda, types  # noqa: E402  (after numba_tools has set the cache folder)
from numba.extending import intrinsic  # noqa: E402
from ..backend.cuda_blocks import for_kernels  # noqa: E402
from ..backend.launch import cuda_kernel  # noqa: E402

from .activation_kernels import CODES

__all__ = ["activation_forward_numba_cpu", "activation_value_numba_cpu", "activation_forward_numba_cuda",
           "activation_value_numba_cuda", "activation_forward_cuda_kernel", "value_and_derivative"]

IDENTITY, TANH, RELU, SIGMOID = CODES["identity"], CODES["tanh"], CODES["relu"], CODES["sigmoid"]
SOFTPLUS, ELU, GELU = CODES["softplus"], CODES["elu"], CODES["gelu"]

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10   # float64: n·HI exact, |n| < 2^11
_LN2_HI32, _LN2_LO32 = 0.693359375, -2.12194440e-4                          # float32: n·HI exact, |n| < 2^8
_SQRT2_M1 = 0.41421356237309503
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
_GELU_LIMIT = 22.0      # beyond, gelu's sigmoid factor is exactly 0 or 1 in both dtypes (|w| > 708)


# -- type-generic scalar intrinsics (constants in the argument's float type, exponent-bit tricks) ------------------
@intrinsic
def _cast_intrinsic(typingctx, value, like):
    if not isinstance(like, types.Float):
        return None
    sig = like(value, like)

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], signature.return_type)

    return sig, codegen


@intrinsic
def _is_single_intrinsic(typingctx, like):
    if not isinstance(like, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return context.get_constant(types.boolean, like.bitwidth == 32)

    return types.boolean(like), codegen


@intrinsic
def _round_pow2_intrinsic(typingctx, x):
    """(round(x), 2**round(x)) for x in the normal exponent range: x + 1.5·2^m rounds x to an integer held in
    the low mantissa bits, which then become the exponent field of the power of two (no float-int conversion)."""
    if not isinstance(x, types.Float):
        return None
    single = x.bitwidth == 32
    mant, bias = (23, 127) if single else (52, 1023)
    shifter = 1.5 * 2.0 ** mant
    shifter_bits = int(np.array(shifter, dtype=np.float32 if single else np.float64)
                       .view(np.int32 if single else np.int64))
    sig = types.UniTuple(x, 2)(x)

    def codegen(context, builder, signature, args):
        ftype = context.get_value_type(x)
        itype = ir.IntType(x.bitwidth)
        shifted = builder.fadd(args[0], ir.Constant(ftype, shifter))
        rounded = builder.fsub(shifted, ir.Constant(ftype, shifter))
        bits = builder.bitcast(shifted, itype)
        exponent = builder.add(bits, ir.Constant(itype, bias - shifter_bits))
        power = builder.bitcast(builder.shl(exponent, ir.Constant(itype, mant)), ftype)
        return context.make_tuple(builder, signature.return_type, [rounded, power])

    return sig, codegen


_c = _cast_intrinsic
_single = _is_single_intrinsic
_round_pow2 = _round_pow2_intrinsic


# -- elementary functions ------------------------------------------------------------------------------------------
@numba.njit(inline="always")
def _exp_neg(a):
    """(exp(a), expm1(a)) for a <= 0 (NaN passes through); exactly (0, -1) below the normal range."""
    one = _c(1.0, a)
    low = _c(-87.0, a) if _single(a) else _c(-708.0, a)
    under = a < low
    ac = low if under else a
    n, scale = _round_pow2(ac * _c(_LOG2E, a))
    if _single(a):
        r = (ac - n * _c(_LN2_HI32, a)) - n * _c(_LN2_LO32, a)
        p = _c(1.0 / 40320, a)
        p = p * r + _c(1.0 / 5040, a)
        p = p * r + _c(1.0 / 720, a)
        p = p * r + _c(1.0 / 120, a)
        p = p * r + _c(1.0 / 24, a)
        p = p * r + _c(1.0 / 6, a)
        p = p * r + _c(0.5, a)
        p = p * r + one
        p = p * r                                  # expm1(r), |r| <= ln2 / 2
    else:
        r = (ac - n * _c(_LN2_HI, a)) - n * _c(_LN2_LO, a)
        p = _c(1.0 / 6227020800, a)
        p = p * r + _c(1.0 / 479001600, a)
        p = p * r + _c(1.0 / 39916800, a)
        p = p * r + _c(1.0 / 3628800, a)
        p = p * r + _c(1.0 / 362880, a)
        p = p * r + _c(1.0 / 40320, a)
        p = p * r + _c(1.0 / 5040, a)
        p = p * r + _c(1.0 / 720, a)
        p = p * r + _c(1.0 / 120, a)
        p = p * r + _c(1.0 / 24, a)
        p = p * r + _c(1.0 / 6, a)
        p = p * r + _c(0.5, a)
        p = p * r + one
        p = p * r
    scale = _c(0.0, a) if under else scale
    return p * scale + scale, p * scale + (scale - one)


@numba.njit(inline="always")
def _log1p_unit(e):
    """log1p(e) for 0 <= e <= 1: 2·atanh(s) with |s| <= 3 - 2√2, around 1 or (past √2 - 1) around 2."""
    one = _c(1.0, e)
    far = e > _c(_SQRT2_M1, e)
    s = (e - one if far else e) / (e + (_c(3.0, e) if far else _c(2.0, e)))
    s2 = s * s
    if _single(e):
        q = _c(1.0 / 9, e)
        q = q * s2 + _c(1.0 / 7, e)
    else:
        q = _c(1.0 / 19, e)
        q = q * s2 + _c(1.0 / 17, e)
        q = q * s2 + _c(1.0 / 15, e)
        q = q * s2 + _c(1.0 / 13, e)
        q = q * s2 + _c(1.0 / 11, e)
        q = q * s2 + _c(1.0 / 9, e)
        q = q * s2 + _c(1.0 / 7, e)
    q = q * s2 + _c(1.0 / 5, e)
    q = q * s2 + _c(1.0 / 3, e)
    q = q * s2 + one
    return _c(2.0, e) * s * q + (_c(_LN2, e) if far else _c(0.0, e))


@numba.njit(inline="always")
def _logistic(w):
    """(σ(w), σ(w)·σ(-w), exp(-|w|)) without cancellation."""
    one = _c(1.0, w)
    e = _exp_neg(-abs(w))[0]
    r = one / (one + e)
    return (r if w >= _c(0.0, w) else e * r), e * r * r, e


# -- each activation: (value, derivative) --------------------------------------------------------------------------
# The conditional expressions below are written so that NaN passes through (max/min would drop it).
@numba.njit(inline="always", cache=CACHE)
def identity_vd(z):
    return z, _c(1.0, z)


@numba.njit(inline="always", cache=CACHE)
def tanh_vd(z):
    e, em1 = _exp_neg(_c(-2.0, z) * abs(z))             # tanh|z| = -em1 / (1 + e), 1 - tanh² = 4e / (1 + e)²
    den = _c(2.0, z) + em1
    return math.copysign(-em1 / den, z), _c(4.0, z) * e / (den * den)


@numba.njit(inline="always", cache=CACHE)
def relu_vd(z):
    zero = _c(0.0, z)
    return (zero if z <= zero else z), (_c(1.0, z) if z > zero else zero)


@numba.njit(inline="always", cache=CACHE)
def sigmoid_vd(z):
    s, ds, _ = _logistic(z)
    return s, ds


@numba.njit(inline="always", cache=CACHE)
def softplus_vd(z):
    zero = _c(0.0, z)
    s, _, e = _logistic(z)
    return (z if z > zero else zero) + _log1p_unit(e), s


@numba.njit(inline="always", cache=CACHE)
def elu_vd(z):
    zero = _c(0.0, z)
    e, em1 = _exp_neg(z if z < zero else zero)
    return (em1 if z <= zero else z), (e if z <= zero else (_c(1.0, z) if z > zero else z))


@numba.njit(inline="always", cache=CACHE)
def gelu_vd(z):
    # y = z σ(w), w = 2k(z + c z³): 1 ± tanh(w/2) = 2σ(±w) keeps both tails accurate
    one = _c(1.0, z)
    limit = _c(_GELU_LIMIT, z)
    zc = limit if z > limit else (-limit if z < -limit else z)
    z2 = zc * zc
    w = _c(2.0 * _GELU_K, z) * zc * (one + _c(_GELU_C, z) * z2)
    s, ds, _ = _logistic(w)
    return z * s, s + _c(2.0 * _GELU_K, z) * zc * ds * (one + _c(3.0 * _GELU_C, z) * z2)


@numba.njit(inline="always")
def value_and_derivative(code, z):
    """(act(z), act'(z)) for the activation ``code`` (see ``CODES``): the CUDA kernel's dispatch."""
    if code == TANH:
        return tanh_vd(z)
    if code == RELU:
        return relu_vd(z)
    if code == SIGMOID:
        return sigmoid_vd(z)
    if code == SOFTPLUS:
        return softplus_vd(z)
    if code == ELU:
        return elu_vd(z)
    if code == GELU:
        return gelu_vd(z)
    return identity_vd(z)


# -- CPU loops -------------------------------------------------------------------------------------------------------
# One block function per activation, the only loop the scalar function is inlined into (so it is compiled and
# vectorised once per dtype); the driver feeds it blocks of z + bias that stay in the L1 cache.
_BLOCK = 512


@numba.njit(cache=CACHE, error_model="numpy")
def _identity_block(src, y, d):
    for k in range(src.shape[0]):
        y[k], d[k] = identity_vd(src[k])


@numba.njit(cache=CACHE, error_model="numpy")
def _tanh_block(src, y, d):
    for k in range(src.shape[0]):
        y[k], d[k] = tanh_vd(src[k])


@numba.njit(cache=CACHE, error_model="numpy")
def _relu_block(src, y, d):
    for k in range(src.shape[0]):
        y[k], d[k] = relu_vd(src[k])


@numba.njit(cache=CACHE, error_model="numpy")
def _sigmoid_block(src, y, d):
    for k in range(src.shape[0]):
        y[k], d[k] = sigmoid_vd(src[k])


@numba.njit(cache=CACHE, error_model="numpy")
def _softplus_block(src, y, d):
    for k in range(src.shape[0]):
        y[k], d[k] = softplus_vd(src[k])


@numba.njit(cache=CACHE, error_model="numpy")
def _elu_block(src, y, d):
    for k in range(src.shape[0]):
        y[k], d[k] = elu_vd(src[k])


@numba.njit(cache=CACHE, error_model="numpy")
def _gelu_block(src, y, d):
    for k in range(src.shape[0]):
        y[k], d[k] = gelu_vd(src[k])


@numba.njit(inline="always")
def _drive(block, z, bias, y, d, mode, want_d):
    """z, y, d: (P, C, Q) C-contiguous. mode 0: no bias; 1: bias along the rows of length C (Q == 1); 2: bias[c]
    constant along each row of length Q. Without ``want_d`` the derivative goes to a scratch block."""
    p_, c_, q_ = z.shape
    zf, yf, df = z.reshape(-1), y.reshape(-1), d.reshape(-1)
    buf = np.empty(_BLOCK, dtype=z.dtype)
    scratch = np.empty(_BLOCK, dtype=z.dtype)
    if mode == 0:
        rows, width = 1, zf.shape[0]
    elif mode == 1:
        rows, width = p_, c_
    else:
        rows, width = p_ * c_, q_
    for r in range(rows):
        base = r * width
        for s in range(0, width, _BLOCK):
            m = min(_BLOCK, width - s)
            lo = base + s
            if mode == 0:
                src = zf[lo:lo + m]
            else:
                src, zs = buf[:m], zf[lo:lo + m]       # slices, not offset indices: those do not vectorise
                if mode == 1:
                    bs = bias[s:s + m]
                    for k in range(m):
                        src[k] = zs[k] + bs[k]
                else:
                    b = bias[r % c_]
                    for k in range(m):
                        src[k] = zs[k] + b
            block(src, yf[lo:lo + m], df[lo:lo + m] if want_d else scratch[:m])


# entry points, one per activation (a function passed in from Python would cost a slow type lookup per call)
@numba.njit(cache=CACHE, error_model="numpy")
def _identity_loop(z, bias, y, d, mode, want_d):
    _drive(_identity_block, z, bias, y, d, mode, want_d)


@numba.njit(cache=CACHE, error_model="numpy")
def _tanh_loop(z, bias, y, d, mode, want_d):
    _drive(_tanh_block, z, bias, y, d, mode, want_d)


@numba.njit(cache=CACHE, error_model="numpy")
def _relu_loop(z, bias, y, d, mode, want_d):
    _drive(_relu_block, z, bias, y, d, mode, want_d)


@numba.njit(cache=CACHE, error_model="numpy")
def _sigmoid_loop(z, bias, y, d, mode, want_d):
    _drive(_sigmoid_block, z, bias, y, d, mode, want_d)


@numba.njit(cache=CACHE, error_model="numpy")
def _softplus_loop(z, bias, y, d, mode, want_d):
    _drive(_softplus_block, z, bias, y, d, mode, want_d)


@numba.njit(cache=CACHE, error_model="numpy")
def _elu_loop(z, bias, y, d, mode, want_d):
    _drive(_elu_block, z, bias, y, d, mode, want_d)


@numba.njit(cache=CACHE, error_model="numpy")
def _gelu_loop(z, bias, y, d, mode, want_d):
    _drive(_gelu_block, z, bias, y, d, mode, want_d)


_LOOPS = {IDENTITY: _identity_loop, TANH: _tanh_loop, RELU: _relu_loop, SIGMOID: _sigmoid_loop,
          SOFTPLUS: _softplus_loop, ELU: _elu_loop, GELU: _gelu_loop}


def _mode(z, bias):
    if bias.shape[0] == 0:
        return 0
    return 1 if z.shape[2] == 1 else 2


def activation_forward_numba_cpu(z, bias, code):
    y, d = np.empty_like(z), np.empty_like(z)
    _LOOPS[code](z, bias, y, d, _mode(z, bias), True)
    return y, d


def activation_value_numba_cpu(z, bias, code):
    y = np.empty_like(z)
    _LOOPS[code](z, bias, y, y, _mode(z, bias), False)
    return y


# -- CUDA ------------------------------------------------------------------------------------------------------------
_value_and_derivative_cuda, = for_kernels(value_and_derivative)


def activation_forward_cuda_kernel(z, bias, channels, inner, code, y, d, want_d):
    """Grid-stride over the flat arrays. ``bias[(i // inner) % channels]`` is added where ``channels > 0`` (else
    ``bias`` is a placeholder never read); ``d`` is written only with ``want_d`` (else a placeholder), so no
    zero-size device array is ever passed."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, z.shape[0], stride):
        v = z[i]
        if channels > 0:
            v += bias[(i // inner) % channels]
        value, derivative = _value_and_derivative_cuda(code, v)
        y[i] = value
        if want_d:
            d[i] = derivative


# one kernel for all activations takes seconds to compile: kept on disk where a cache folder exists
_FORWARD = cuda_kernel(activation_forward_cuda_kernel, threads=256, cache=True)


def _launch(z, bias, code, want_d):
    xp = get_namespace(z)
    y = xp.empty_like(z)
    d = xp.empty_like(z) if want_d else None
    n = z.size
    if n == 0:
        return y, d
    flat = z.reshape(-1)
    channels = z.shape[1] if bias.shape[0] else 0
    blocks, threads = launch_config(n, _FORWARD.threads)
    blocks = min(blocks, 4 if cuda_simulator_enabled() else 8192)
    # placeholders are the input, only read (an output passed twice would be copied back twice by the simulator)
    args = (flat, bias if channels else flat, channels, z.shape[2], int(code), y.reshape(-1),
            d.reshape(-1) if want_d else flat, bool(want_d))
    _FORWARD[blocks, threads](*args)
    return y, d


def activation_forward_numba_cuda(z, bias, code):
    return _launch(z, bias, code, True)


def activation_value_numba_cuda(z, bias, code):
    return _launch(z, bias, code, False)[0]
