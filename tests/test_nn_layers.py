"""Every layer's VJP and JVP against central finite differences (float64), over random shapes and
options; Conv2d against SciPy's correlation."""

import numpy as np
import pytest
import scipy.signal
from hypothesis import given
from hypothesis import strategies as st

from deqcore import nn

from .test_nn_support import check_layer_derivatives

ACTS = sorted(nn.ACTIVATIONS)
seeds = st.integers(0, 2 ** 32 - 1)
schemes = st.sampled_from([{}, {"weight_norm": True}, {"spectral_norm": True}])


def _setup(layer, seed):
    rng = np.random.default_rng(seed)
    params, state = nn.setup(rng, layer)
    return rng, params, state


@given(seed=seeds, batch=st.integers(1, 4), n_in=st.integers(1, 5), n_out=st.integers(1, 5),
       act=st.sampled_from(ACTS), use_bias=st.booleans(), scheme=schemes, extra_axis=st.booleans())
def test_dense_derivatives(seed, batch, n_in, n_out, act, use_bias, scheme, extra_axis):
    layer = nn.Dense(n_in, n_out, act, use_bias=use_bias, **scheme)
    rng, params, state = _setup(layer, seed)
    shape = (batch, 2, n_in) if extra_axis else (batch, n_in)
    check_layer_derivatives(layer, rng.standard_normal(shape), params, state, rng)


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 7))
    w = draw(st.integers(max(1, kw - 2 * pw), 7))
    return dict(kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw)), (h, w)


@given(seed=seeds, case=conv_cases(), c_in=st.integers(1, 3), c_out=st.integers(1, 3),
       batch=st.integers(1, 2), act=st.sampled_from(["identity", "tanh", "softplus"]), scheme=schemes)
def test_conv2d_derivatives(seed, case, c_in, c_out, batch, act, scheme):
    options, (h, w) = case
    layer = nn.Conv2d(c_in, c_out, activation=act, **options, **scheme)
    rng, params, state = _setup(layer, seed)
    check_layer_derivatives(layer, rng.standard_normal((batch, c_in, h, w)), params, state, rng)


def naive_conv(x, weight, bias, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = []
    for b in range(x.shape[0]):
        maps = []
        for o in range(weight.shape[0]):
            acc = sum(scipy.signal.correlate(xpad[b, c], weight[o, c], mode="valid")
                      for c in range(x.shape[1]))
            maps.append(acc[::sh, ::sw] + bias[o])
        out.append(maps)
    return np.array(out)


@given(seed=seeds, case=conv_cases(), c_in=st.integers(1, 3), c_out=st.integers(1, 4),
       batch=st.integers(1, 3))
def test_conv2d_matches_scipy_correlation(seed, case, c_in, c_out, batch):
    options, (h, w) = case
    layer = nn.Conv2d(c_in, c_out, **options)
    rng, params, state = _setup(layer, seed)
    params["bias"] = rng.standard_normal(c_out)
    x = rng.standard_normal((batch, c_in, h, w))
    y, _ = layer(x, params, state)
    want = naive_conv(x, params["weight"], params["bias"], layer.stride, layer.padding)
    assert y.shape == want.shape == (batch, c_out) + layer.output_shape(h, w)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_conv2d_same_padding_keeps_size(rng):
    layer = nn.Conv2d(2, 3, (3, 5), padding="same")
    params, state = nn.setup(rng, layer)
    assert layer(rng.standard_normal((2, 2, 6, 7)), params, state)[0].shape == (2, 3, 6, 7)


@given(seed=seeds, name=st.sampled_from(ACTS), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_activation_layers(seed, name, shape):
    layer = nn.Activation(name)
    rng, params, state = _setup(layer, seed)
    check_layer_derivatives(layer, 2 * rng.standard_normal([2] + shape), params, state, rng)


def test_activation_values_against_references():
    z = np.linspace(-4, 4, 41)
    values = {n: nn.Activation(n).apply(z) for n in nn.ACTIVATIONS}
    np.testing.assert_allclose(values["sigmoid"], 1 / (1 + np.exp(-z)), rtol=1e-14)
    np.testing.assert_allclose(values["softplus"], np.log1p(np.exp(z)), rtol=1e-14)
    np.testing.assert_allclose(values["elu"], np.where(z > 0, z, np.exp(z) - 1), rtol=1e-14)
    np.testing.assert_allclose(values["relu"], np.maximum(z, 0))
    k = np.sqrt(2 / np.pi)
    np.testing.assert_allclose(values["gelu"], 0.5 * z * (1 + np.tanh(k * (z + 0.044715 * z ** 3))))
    big = nn.Activation("softplus").apply(np.array([800.0, -800.0]))
    np.testing.assert_allclose(big, [800.0, 0.0])


@given(seed=seeds, batch=st.integers(1, 3), shape=st.lists(st.integers(1, 4), min_size=1, max_size=2),
       lead=st.integers(0, 2), affine=st.booleans())
def test_layernorm(seed, batch, shape, lead, affine):
    layer = nn.LayerNorm(tuple(shape), affine=affine)
    rng, params, state = _setup(layer, seed)
    if sum(shape) == len(shape):  # one element: nothing to normalise, skip the degenerate case
        return
    params = nn.tree_map(lambda a: a + 0.3 * rng.standard_normal(a.shape), params)
    x = rng.standard_normal((batch,) + (3,) * lead + tuple(shape))
    check_layer_derivatives(layer, x, params, state, rng)
    y, _ = layer(x, nn.tree_map(np.ones_like, params) if not affine else
                 {"scale": np.ones(shape), "bias": np.zeros(shape)}, state)
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    want = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@given(seed=seeds, batch=st.integers(1, 3), groups=st.integers(1, 3), per_group=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 3), min_size=0, max_size=2), affine=st.booleans())
def test_groupnorm(seed, batch, groups, per_group, spatial, affine):
    channels = groups * per_group
    if per_group * int(np.prod(spatial)) < 2:
        return
    layer = nn.GroupNorm(channels, groups, affine=affine)
    rng, params, state = _setup(layer, seed)
    params = nn.tree_map(lambda a: a + 0.3 * rng.standard_normal(a.shape), params)
    x = rng.standard_normal((batch, channels) + tuple(spatial))
    check_layer_derivatives(layer, x, params, state, rng)
    if affine:
        y, _ = layer(x, params, state)
        g = x.reshape(batch, groups, -1)
        xhat = ((g - g.mean(2, keepdims=True)) / np.sqrt(g.var(2, keepdims=True) + 1e-5)).reshape(x.shape)
        view = (-1,) + (1,) * len(spatial)
        np.testing.assert_allclose(y, xhat * params["scale"].reshape(view) + params["bias"].reshape(view),
                                   rtol=1e-12, atol=1e-12)


@given(seed=seeds, batch=st.integers(2, 4), channels=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 3), min_size=0, max_size=2), training=st.booleans())
def test_batchnorm(seed, batch, channels, spatial, training):
    layer = nn.BatchNorm(channels, momentum=0.2)
    rng, params, state = _setup(layer, seed)
    params = nn.tree_map(lambda a: a + 0.3 * rng.standard_normal(a.shape), params)
    state = {**state, "running_mean": rng.standard_normal(channels),
             "running_var": rng.random(channels) + 0.5}
    state = state if training else nn.testmode(state)
    x = rng.standard_normal((batch, channels) + tuple(spatial))
    check_layer_derivatives(layer, x, params, state, rng)
    y, new_state = layer(x, params, state)
    view = (1, -1) + (1,) * len(spatial)
    axes = (0,) + tuple(range(2, x.ndim))
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        n = x.size // channels
        np.testing.assert_allclose(new_state["running_mean"], 0.8 * state["running_mean"] + 0.2 * mean)
        np.testing.assert_allclose(new_state["running_var"],
                                   0.8 * state["running_var"] + 0.2 * var * n / (n - 1))
    else:
        mean, var = state["running_mean"], state["running_var"]
        assert new_state is state
    xhat = (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + 1e-5)
    np.testing.assert_allclose(y, xhat * params["scale"].reshape(view) + params["bias"].reshape(view),
                               rtol=1e-12, atol=1e-12)


@given(seed=seeds, p=st.sampled_from([0.0, 0.2, 0.5, 0.9]), training=st.booleans())
def test_dropout(seed, p, training):
    layer = nn.Dropout(p)
    rng, params, state = _setup(layer, seed)
    state = state if training else nn.testmode(state)
    x = rng.standard_normal((3, 5))
    check_layer_derivatives(layer, x, params, state, rng)
    y, new_state = layer(x, params, state)
    if not training or p == 0:
        np.testing.assert_array_equal(y, x)
    else:
        kept = y != 0
        np.testing.assert_allclose(y[kept], x[kept] / (1 - p))
        assert new_state["counter"] == state["counter"] + 1


def test_dropout_rate_and_reuse(rng):
    layer = nn.Dropout(0.3)
    params, state = nn.setup(rng, layer)
    x = np.ones((50, 200))
    y1, s1 = layer(x, params, state)
    y2, _ = layer(x, params, state)
    np.testing.assert_array_equal(y1, y2)  # same state, same mask (as fixed-point iterations need)
    assert abs((y1 == 0).mean() - 0.3) < 0.02
    y3, _ = layer(x, params, s1)
    assert abs(((y1 == 0) == (y3 == 0)).mean() - (0.3 ** 2 + 0.7 ** 2)) < 0.02  # independent masks


@given(seed=seeds, batch=st.integers(1, 3))
def test_chain_of_mixed_layers(seed, batch):
    model = nn.Chain(nn.Conv2d(2, 4, 3, padding=1, activation="gelu"), nn.GroupNorm(4, 2),
                     nn.Conv2d(4, 3, 2, stride=2, weight_norm=True), nn.Flatten(), nn.Dropout(0.25),
                     nn.Dense(12, 6, "elu", spectral_norm=True), nn.LayerNorm(6), nn.Reshape((2, 3)),
                     nn.Activation("softplus"), nn.Flatten(), nn.NoOpLayer(), nn.Dense(6, 2))
    rng, params, state = _setup(model, seed)
    x = rng.standard_normal((batch, 2, 4, 4))
    check_layer_derivatives(model, x, params, state, rng)


@given(seed=seeds, batch=st.integers(1, 3), connection=st.sampled_from(["add", "concat", "none"]),
       routed=st.booleans())
def test_parallel(seed, batch, connection, routed):
    conn = {"add": nn.add, "concat": nn.concat, "none": None}[connection]
    model = nn.Parallel(conn, nn.Dense(3, 4, "tanh"), nn.Chain(nn.Dense(3, 4), nn.LayerNorm(4)))
    rng, params, state = _setup(model, seed)
    x = (rng.standard_normal((batch, 3)), rng.standard_normal((batch, 3))) if routed else \
        rng.standard_normal((batch, 3))
    check_layer_derivatives(model, x, params, state, rng)
    y, _ = model(x, params, state)
    xs = x if routed else (x, x)
    a, _ = model.layers[0](xs[0], params["layer_1"], state["layer_1"])
    b, _ = model.layers[1](xs[1], params["layer_2"], state["layer_2"])
    want = {"add": lambda: a + b, "concat": lambda: np.concatenate([a, b], -1), "none": lambda: (a, b)}
    for got, ref in zip(nn.tree_leaves(y), nn.tree_leaves(want[connection]())):
        np.testing.assert_allclose(got, ref, rtol=1e-14)


def test_parallel_custom_connection_and_channel_concat(rng):
    mul = nn.Connection(lambda a, b: a * b, vjp=lambda a, b: (a * b, lambda d: (d * b, d * a)),
                        jvp=lambda ys, ds: (ys[0] * ys[1], ds[0] * ys[1] + ys[0] * ds[1]))
    model = nn.Parallel(mul, nn.Dense(2, 3, "sigmoid"), nn.Dense(2, 3))
    params, state = nn.setup(rng, model)
    check_layer_derivatives(model, rng.standard_normal((4, 2)), params, state, rng)
    convs = nn.Parallel(nn.Concat(axis=1), nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 3, 1))
    params, state = nn.setup(rng, convs)
    x = rng.standard_normal((2, 1, 4, 4))
    assert convs(x, params, state)[0].shape == (2, 5, 4, 4)
    check_layer_derivatives(convs, x, params, state, rng)


def test_wrapped_function_and_noop_on_tuples(rng):
    square = nn.WrappedFunction(lambda x: x ** 2, vjp=lambda x: (x ** 2, lambda d: 2 * x * d),
                                jvp=lambda x, d: (x ** 2, 2 * x * d))
    params, state = nn.setup(rng, square)
    check_layer_derivatives(square, rng.standard_normal((3, 2)), params, state, rng)
    noop = nn.NoOpLayer()
    check_layer_derivatives(noop, (rng.standard_normal((2, 2)), rng.standard_normal((2, 3))), {}, {}, rng)
    plain = nn.WrappedFunction(np.sin)
    assert np.allclose(plain(np.ones(2), {}, {})[0], np.sin(1.0))
    with pytest.raises(NotImplementedError, match="has no vjp"):
        nn.vjp(plain, np.ones(2), {}, {})


def test_spectral_norm_bounds_the_weight_and_updates_its_vector(rng):
    layer = nn.Dense(6, 5, spectral_norm=True)
    params, state = nn.setup(rng, layer)
    params["weight"] = 3.0 * rng.standard_normal((5, 6))
    x = np.eye(6)
    for _ in range(40):  # one power-iteration step per training call
        _, state = layer(x, params, state)
    y, frozen = layer(x, params, nn.testmode(state))
    np.testing.assert_allclose(np.linalg.norm(y, 2), 1.0, rtol=1e-8)  # y = W/σ(W), transposed
    assert frozen["u"] is state["u"]


def test_weight_norm_starts_at_the_plain_weight(rng):
    plain, normed = nn.Dense(4, 3), nn.Dense(4, 3, weight_norm=True)
    p1, s1 = nn.setup(np.random.default_rng(1), plain)
    p2, s2 = nn.setup(np.random.default_rng(1), normed)
    x = rng.standard_normal((2, 4))
    np.testing.assert_allclose(plain(x, p1, s1)[0], normed(x, p2, s2)[0], rtol=1e-13)
    assert sorted(p2) == ["bias", "weight_g", "weight_v"]


def test_float32_setup_keeps_dtype(rng):
    model = nn.Chain(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Dense(8, 3, "tanh"))
    params, state = nn.setup(rng, model, dtype=np.float32)
    y, pullback, _ = nn.vjp(model, np.ones((2, 1, 4, 4), np.float32), params, state)
    dx, dparams = pullback(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert {a.dtype for a in nn.tree_leaves(dparams)} == {np.dtype(np.float32)}
