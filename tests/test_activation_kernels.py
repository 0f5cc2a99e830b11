"""The fused activation kernels (value and derivative in one pass) against the NumPy reference formulas, against
central finite differences, in the saturated tails, under the CUDA simulator, and wired into the layers."""

from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deqcore import nn
from deqcore.backend import get_kernel, to_host
from deqcore.nn import activation_kernels as ak
from deqcore.nn import activation_kernels_numba as akn
from tests.helpers import fd_jvp, tolerance

from .test_nn_support import check_layer_derivatives

NAMES = sorted(ak.CODES)
NONLINEAR = [n for n in NAMES if n != "identity"]
DTYPES = [np.float32, np.float64]
seeds = st.integers(0, 2 ** 32 - 1)


def _tol(dtype):
    # measured: at most 1e-7 (float32) and 3e-15 (float64) times 1 + |reference|
    return tolerance(dtype, 5e-7, 1e-13)


def _values(rng, shape, dtype):
    """Normal values scaled over six decades, so the tails where the functions saturate are hit."""
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape)).astype(dtype)


def _reference64(z, bias, code):
    """The reference formulas in float64 on the same inputs."""
    with np.errstate(over="ignore"):
        return ak.activation_forward_reference(z.astype(np.float64), bias.astype(np.float64), code)


def _close(got, want, dtype):
    tol = _tol(dtype)
    np.testing.assert_allclose(to_host(got).astype(np.float64), want, rtol=tol, atol=tol)


def kernels_everywhere():
    """Run the kernels at every size (small arrays otherwise take the NumPy formulas)."""
    return mock.patch.object(ak, "_NUMPY_BELOW", {n: {"f": 0, "d": 0} for n in NAMES})


@given(seed=seeds, name=st.sampled_from(NAMES), dtype=st.sampled_from(DTYPES),
       shape=st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 40)), bias=st.booleans())
def test_cpu_kernels_match_reference(seed, name, dtype, shape, bias):
    rng = np.random.default_rng(seed)
    z = _values(rng, shape, dtype)
    if bias:
        b = rng.standard_normal(shape[1]).astype(dtype)
    else:
        b = np.empty(0, dtype)
    code = ak.CODES[name]
    y, d = akn.activation_forward_numba_cpu(z, b, code)
    value = akn.activation_value_numba_cpu(z, b, code)
    assert y.dtype == d.dtype == value.dtype == dtype and y.shape == d.shape == value.shape == shape
    want_y, want_d = _reference64(z, b, code)
    _close(y, want_y, dtype)
    _close(d, want_d, dtype)
    np.testing.assert_array_equal(value, y)        # the same loop, without storing d


@given(seed=seeds, name=st.sampled_from(NONLINEAR), size=st.integers(1, 300))
def test_derivative_against_finite_differences(seed, name, size):
    rng = np.random.default_rng(seed)
    z = _values(rng, (1, 1, size), np.float64)
    scale = np.maximum(1.0, np.abs(z))                          # steps relative to |z|
    if name == "relu":
        z = np.where(np.abs(z) < 1e-5 * scale, 1.0, z)          # away from the kink
    none = np.empty(0)
    code = ak.CODES[name]
    _, d = akn.activation_forward_numba_cpu(z, none, code)
    fd = fd_jvp(lambda v: akn.activation_value_numba_cpu(v, none, code), z, scale) / scale   # elementwise
    np.testing.assert_allclose(d, fd, rtol=1e-6, atol=1e-8)


# (name, z, act(z), act'(z)): the saturated limits, exactly
LIMITS = [("tanh", 1e30, 1.0, 0.0), ("tanh", -1e30, -1.0, 0.0), ("sigmoid", 1e30, 1.0, 0.0),
          ("sigmoid", -1e30, 0.0, 0.0), ("softplus", 1e30, 1e30, 1.0), ("softplus", -1e30, 0.0, 0.0),
          ("elu", -1e30, -1.0, 0.0), ("elu", 1e30, 1e30, 1.0), ("gelu", 1e30, 1e30, 1.0), ("gelu", -1e30, 0.0, 0.0),
          ("relu", -1e30, 0.0, 0.0), ("relu", 1e30, 1e30, 1.0), ("tanh", 0.0, 0.0, 1.0), ("sigmoid", 0.0, 0.5, 0.25),
          ("softplus", 0.0, np.log(2.0), 0.5), ("elu", 0.0, 0.0, 1.0), ("gelu", 0.0, 0.0, 0.5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,z,value,derivative", LIMITS)
def test_saturated_limits_are_exact_and_finite(name, z, value, derivative, dtype):
    zz = np.full((1, 1, 3), z, dtype=dtype)
    y, d = akn.activation_forward_numba_cpu(zz, np.empty(0, dtype), ak.CODES[name])
    np.testing.assert_allclose(y, value, rtol=_tol(dtype), atol=0)
    np.testing.assert_allclose(d, derivative, rtol=_tol(dtype), atol=0)


@given(seed=seeds, name=st.sampled_from(NAMES), dtype=st.sampled_from(DTYPES))
def test_no_nan_or_inf_anywhere_finite(seed, name, dtype):
    """Every finite input, up to the largest float, gives finite values and derivatives (the NumPy gelu
    derivative gave 0·inf = NaN past |z| ≈ 1e154 in float64 and 2e19 in float32)."""
    rng = np.random.default_rng(seed)
    big = np.finfo(dtype).max
    z = (rng.choice([-1.0, 1.0], 200) * 10.0 ** rng.uniform(-40, np.log10(big), 200)).astype(dtype)
    z[:4] = [big, -big, np.finfo(dtype).tiny, -np.finfo(dtype).smallest_subnormal]
    y, d = akn.activation_forward_numba_cpu(z.reshape(1, 1, -1), np.empty(0, dtype), ak.CODES[name])
    assert np.isfinite(y).all() and np.isfinite(d).all()
    with np.errstate(all="ignore"):
        ry, rd = ak.activation_forward_reference(z, np.empty(0, dtype), ak.CODES[name])
    assert np.isfinite(ry).all() and np.isfinite(rd).all()


@pytest.mark.parametrize("name", NAMES)
def test_nan_propagates(name):
    z = np.array([np.nan, 1.0, -1.0]).reshape(1, 1, 3)
    y, _ = akn.activation_forward_numba_cpu(z, np.empty(0), ak.CODES[name])
    assert np.isnan(y[0, 0, 0]) and np.isfinite(y[0, 0, 1:]).all()


@given(seed=seeds, name=st.sampled_from(NONLINEAR), dtype=st.sampled_from(DTYPES),
       dims=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_any_layout_and_bias_axis(seed, name, dtype, dims, data):
    """fused_activation on C-ordered, transposed and strided arrays, with the bias on any axis, against the
    reference formulas; the outputs keep the input's shape."""
    with kernels_everywhere():
        rng = np.random.default_rng(seed)
        base = _values(rng, tuple(dims), dtype)
        layout = data.draw(st.sampled_from(["c", "transposed", "strided"]))
        if layout == "transposed":
            z = base.transpose(rng.permutation(base.ndim))
        elif layout == "strided":
            z = _values(rng, tuple(2 * k for k in dims), dtype)[tuple(slice(None, None, 2) for _ in dims)]
        else:
            z = base
        axis = data.draw(st.integers(-z.ndim, z.ndim - 1))
        bias = data.draw(st.booleans())
        b = rng.standard_normal(z.shape[axis]).astype(dtype) if bias else None
        y, d = ak.fused_activation(z, name, bias=b, axis=axis)
        value = ak.fused_activation(z, name, bias=b, axis=axis, derivative=False)
        zb = z.astype(np.float64)
        if bias:
            shape = [1] * z.ndim
            shape[axis] = -1
            zb = zb + b.astype(np.float64).reshape(shape)
        f, df = ak.REFERENCE[name]
        want_y = f(np, zb)
        assert y.shape == d.shape == value.shape == z.shape
        _close(y, want_y, dtype)
        _close(d, df(np, zb, want_y), dtype)
        np.testing.assert_array_equal(value, y)


def test_dtypes_follow_numpy_promotion():
    z32 = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    y, d = ak.fused_activation(z32, "tanh", bias=np.zeros(4))             # float64 bias: float64 result
    assert y.dtype == d.dtype == np.float64
    want = np.tanh(z32.astype(np.float64))
    np.testing.assert_allclose(y, want, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(d, 1 - want * want, rtol=1e-14, atol=1e-14)
    y, d = ak.fused_activation(np.arange(-2, 2).reshape(2, 2), "relu")    # integers: the reference formulas
    np.testing.assert_array_equal(y, [[0, 0], [0, 1]])
    y, d = ak.fused_activation(np.zeros((0, 3)), "gelu", bias=np.zeros(3))
    assert y.shape == d.shape == (0, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_cuda_kernel_on_simulator(name, dtype, xp):
    """Grid-stride launch (4 blocks of 32 threads under the simulator) over 150 elements, with and without a
    bias along the channels, against the reference; on CuPy arrays where a GPU is present."""
    rng = np.random.default_rng(5)
    z = _values(rng, (2, 3, 25), dtype)
    code = ak.CODES[name]
    for b in (rng.standard_normal(3).astype(dtype), np.empty(0, dtype)):
        y, d = akn.activation_forward_numba_cuda(xp.asarray(z), xp.asarray(b), code)
        assert type(y) is type(xp.asarray(z)) and y.dtype == d.dtype == dtype
        want_y, want_d = _reference64(z, b, code)
        _close(y, want_y, dtype)
        _close(d, want_d, dtype)
    value = akn.activation_value_numba_cuda(xp.asarray(z), xp.asarray(b), code)
    _close(value, want_y, dtype)


def test_cuda_fused_activation_on_device_arrays(xp):
    """``fused_activation`` on a transposed (non-contiguous) array with a bias on axis 1, through the kernel
    its namespace chooses (CUDA for CuPy), against the reference formulas."""
    rng = np.random.default_rng(6)
    z = _values(rng, (5, 4, 3), np.float64).transpose(2, 1, 0)
    b = rng.standard_normal(4)
    with kernels_everywhere():
        y, d = ak.fused_activation(xp.asarray(z), "tanh", bias=xp.asarray(b), axis=1)
    want_y, want_d = _reference64(z + b[None, :, None], np.empty(0), ak.CODES["tanh"])
    _close(y, want_y, np.float64)
    _close(d, want_d, np.float64)


def test_kernels_are_registered_with_numba_defaults():
    assert get_kernel("activation_forward", np) is akn.activation_forward_numba_cpu
    assert get_kernel("activation_value", np) is akn.activation_value_numba_cpu
    assert get_kernel("activation_forward", np, impl="reference") is ak.activation_forward_reference


# -- the layers on the kernels -----------------------------------------------------------------------------------
@given(seed=seeds, act=st.sampled_from(NAMES), use_bias=st.booleans(), extra_axis=st.booleans())
def test_dense_derivatives_on_kernels(seed, act, use_bias, extra_axis):
    with kernels_everywhere():
        layer = nn.Dense(3, 4, act, use_bias=use_bias)
        rng = np.random.default_rng(seed)
        params, state = nn.setup(rng, layer)
        if use_bias:
            params["bias"] = rng.standard_normal(4)
        x = rng.standard_normal((2, 2, 3) if extra_axis else (3, 3))
        check_layer_derivatives(layer, x, params, state, rng)


@given(seed=seeds, act=st.sampled_from(NAMES), stride=st.integers(1, 2))
def test_conv2d_derivatives_on_kernels(seed, act, stride):
    with kernels_everywhere():
        layer = nn.Conv2d(2, 3, 3, stride=stride, padding=1, activation=act)
        rng = np.random.default_rng(seed)
        params, state = nn.setup(rng, layer)
        params["bias"] = rng.standard_normal(3)
        check_layer_derivatives(layer, rng.standard_normal((2, 2, 5, 4)), params, state, rng)


@given(seed=seeds, act=st.sampled_from(NAMES))
def test_activation_layer_derivatives_on_kernels(seed, act):
    with kernels_everywhere():
        layer = nn.Activation(act)
        rng = np.random.default_rng(seed)
        check_layer_derivatives(layer, 2 * rng.standard_normal((3, 2, 4)), {}, {}, rng)


@pytest.mark.parametrize("act", NONLINEAR)
def test_layers_agree_with_reference_kernels(act, monkeypatch):
    """Dense and Conv2d give the same outputs, VJPs and JVPs on the kernels (here at sizes past the NumPy
    thresholds) as with ``DEQCORE_KERNELS=reference``."""
    rng = np.random.default_rng(11)
    cases = [(nn.Dense(64, 160, act), rng.standard_normal((64, 64))),
             (nn.Conv2d(3, 16, 3, padding=1, activation=act), rng.standard_normal((4, 3, 16, 16)))]
    for layer, x in cases:
        params, state = nn.setup(rng, layer)
        params["bias"] = rng.standard_normal(params["bias"].shape)
        dx = rng.standard_normal(x.shape)
        runs = []
        for impl in ("auto", "reference"):
            monkeypatch.setenv("DEQCORE_KERNELS", impl)
            y, _ = layer(x, params, state)
            y2, pullback, _ = nn.vjp(layer, x, params, state)
            gx, gp = pullback(np.ones_like(y))
            _, ty = nn.jvp(layer, x, params, state, dx)
            runs.append((y, y2, gx, gp["weight"], gp["bias"], ty))
        for fast, ref in zip(*runs):
            np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-12)
