"""The reference's layer examples in Python form, the protocol for user layers, parameter trees,
save/load, and error messages for bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import deqcore as dq
from deqcore import nn

from .test_nn_support import check_layer_derivatives


def test_deq_example_layer(rng):
    # Parallel(+, Dense(2, 2; use_bias=false), Dense(2, 2; use_bias=false)) over (z, x)
    model = nn.Parallel(nn.add, nn.Dense(2, 2, use_bias=False), nn.Dense(2, 2, use_bias=False))
    params, state = nn.setup(np.random.default_rng(0), model)
    assert nn.tree_map(np.shape, params) == {"layer_1": {"weight": (2, 2)}, "layer_2": {"weight": (2, 2)}}
    z, x = rng.standard_normal((1, 2)), np.ones((1, 2))
    y, _ = model((z, x), params, state)
    want = z @ params["layer_1"]["weight"].T + x @ params["layer_2"]["weight"].T
    np.testing.assert_allclose(y, want, rtol=1e-14)
    check_layer_derivatives(model, (z, x), params, state, rng)


def multiscale_layers():
    injection = nn.Parallel(nn.add, nn.Dense(4, 4, "tanh", use_bias=False),
                            nn.Dense(4, 4, "tanh", use_bias=False))
    main = (injection,
            nn.Dense(3, 3, "tanh"), nn.Dense(2, 2, "tanh"), nn.Dense(1, 1, "tanh"))
    sizes = (4, 3, 2, 1)
    mapping = [[nn.NoOpLayer() if i == k else nn.Dense(sizes[i], sizes[k], "tanh") for k in range(4)]
               for i in range(4)]
    return main, mapping, sizes


def test_multiscale_example_layers(rng):
    main, mapping, sizes = multiscale_layers()
    x = rng.random((12, 4))
    ys = []
    for i, layer in enumerate(main):
        params, state = nn.setup(rng, layer)
        inp = (np.zeros((12, 4)), x) if i == 0 else np.zeros((12, sizes[i]))
        ys.append(layer(inp, params, state)[0])
    fused = []
    for k in range(4):
        total = 0
        for i in range(4):
            params, state = nn.setup(rng, mapping[i][k])
            total = total + mapping[i][k](ys[i], params, state)[0]
        fused.append(total)
    assert tuple(f.shape for f in fused) == ((12, 4), (12, 3), (12, 2), (12, 1))


def test_multiscale_conv_chain(rng):
    """Conv feature extractor, a residual block and down/up-sampling maps between two resolutions."""
    stem = nn.Chain(nn.Conv2d(1, 8, 3, padding=1, activation="relu"), nn.GroupNorm(8, 4),
                    nn.Conv2d(8, 8, 4, stride=2, padding=1))
    block = nn.Parallel(nn.add, nn.Chain(nn.Conv2d(8, 8, 3, padding="same", activation="relu"),
                                         nn.GroupNorm(8, 4), nn.Conv2d(8, 8, 3, padding="same")),
                        nn.NoOpLayer())
    down = nn.Chain(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(16, 4))
    up = nn.Chain(nn.Conv2d(16, 8, 1, use_bias=False), nn.GroupNorm(8, 4), nn.Upsample(2))
    model = nn.Chain(stem, block, nn.Parallel(None, nn.NoOpLayer(), down))
    params, state = nn.setup(rng, model)
    x = rng.standard_normal((2, 1, 16, 16))
    fine, coarse = model(x, params, state)[0]
    assert fine.shape == (2, 8, 8, 8) and coarse.shape == (2, 16, 4, 4)
    up_params, up_state = nn.setup(rng, up)
    assert up(coarse, up_params, up_state)[0].shape == fine.shape
    check_layer_derivatives(up, coarse, up_params, up_state, rng)
    check_layer_derivatives(model, x[:1, :, :8, :8], params, state, rng)


class Scale(nn.Layer):
    """A user-defined layer: y = a * x with one parameter."""

    def init(self, rng):
        return {"a": np.array([2.0])}, {}

    def __call__(self, x, params, state):
        return params["a"] * x, state

    def vjp(self, x, params, state):
        return params["a"] * x, lambda dy: (params["a"] * dy, {"a": np.sum(dy * x).reshape(1)}), state

    def jvp(self, x, params, state, dx, dparams=None):
        dy = params["a"] * dx + (0 if dparams is None else dparams["a"] * x)
        return params["a"] * x, dy


def test_user_layer_composes(rng):
    model = nn.Chain(Scale(), nn.Dense(3, 2, "tanh"), Scale())
    params, state = nn.setup(rng, model)
    check_layer_derivatives(model, rng.standard_normal((4, 3)), params, state, rng)

    class Incomplete(nn.Layer):
        def __call__(self, x, params, state):
            return x, state

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


@given(seed=st.integers(0, 2 ** 32 - 1))
def test_ravel_roundtrip_and_tree_algebra(seed):
    rng = np.random.default_rng(seed)
    model = nn.Chain(nn.Dense(3, 4, weight_norm=True), nn.Parallel(nn.add, nn.Dense(4, 2), nn.NoOpLayer()))
    with pytest.raises(nn.ShapeError):  # Dense(4 => 2) + identity on 4 features: shapes differ
        params, state = nn.setup(rng, model)
        model(np.ones((1, 3)), params, state)
    params, _ = nn.setup(rng, model)
    vec, unravel = nn.ravel(params)
    assert vec.shape == (sum(a.size for a in nn.tree_leaves(params)),)
    back = unravel(vec)
    assert nn.tree_map(lambda a, b: np.array_equal(a, b), params, back) == nn.tree_map(lambda a: True, params)
    other = nn.tree_map(lambda a: rng.standard_normal(a.shape), params)
    ov, _ = nn.ravel(other)
    np.testing.assert_allclose(float(nn.tree_dot(params, other)), vec @ ov, rtol=1e-12)
    np.testing.assert_allclose(float(nn.tree_norm(other)), np.linalg.norm(ov), rtol=1e-12)
    combined = nn.tree_sub(nn.tree_add(params, other), nn.tree_scale(other, 2.0))
    np.testing.assert_allclose(nn.ravel(combined)[0],
                               vec - ov, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(nn.ravel(nn.zeros_like(params))[0], np.zeros_like(vec))
    leaves, treedef = nn.tree_flatten(params)
    assert nn.tree_unflatten(treedef, leaves)["layer_1"]["weight_g"] is params["layer_1"]["weight_g"]
    np.testing.assert_array_equal(dq.unravel(ov, params)["layer_2"]["layer_1"]["bias"],
                                  other["layer_2"]["layer_1"]["bias"])


def test_to_namespace_casts_and_keeps_scalars(rng):
    params, state = nn.setup(rng, nn.Chain(nn.Dense(2, 2, spectral_norm=True), nn.Dropout(0.1)))
    moved = dq.to_namespace(state, np, dtype=np.float32)
    assert moved["layer_1"]["u"].dtype == np.float32 and moved["layer_2"]["seed"] == state["layer_2"]["seed"]
    assert nn.testmode(state)["layer_1"]["training"] is False
    assert nn.trainmode(nn.testmode(state)) == nn.trainmode(state)


def test_save_load_roundtrip(tmp_path, rng):
    model = nn.Chain(nn.Conv2d(1, 2, 3, weight_norm=True), nn.Flatten(), nn.Dense(8, 3), nn.LayerNorm(3))
    params, _ = nn.setup(rng, model)
    path = tmp_path / "params.npz"
    nn.save(path, params)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(["layer_1/weight_v", "layer_1/weight_g", "layer_1/bias",
                                             "layer_3/weight", "layer_3/bias", "layer_4/scale",
                                             "layer_4/bias"])
    template, _ = nn.setup(np.random.default_rng(99), model, dtype=np.float32)
    loaded = nn.load(path, template)
    assert nn.tree_map(lambda a: a.dtype, loaded) == nn.tree_map(lambda a: np.dtype(np.float32), params)
    np.testing.assert_allclose(nn.ravel(loaded)[0], nn.ravel(params)[0], rtol=1e-6)


def test_load_reports_every_mismatch(tmp_path, rng):
    params, _ = nn.setup(rng, nn.Chain(nn.Dense(3, 4), nn.Dense(4, 2)))
    path = tmp_path / "p.npz"
    nn.save(path, params)
    template, _ = nn.setup(rng, nn.Chain(nn.Dense(3, 5), nn.Dense(5, 2, use_bias=False), nn.Dense(2, 2)))
    with pytest.raises(ValueError) as err:
        nn.load(path, template)
    msg = str(err.value)
    assert "missing in the file: layer_3/weight, layer_3/bias" in msg
    assert "not in the template: layer_2/bias" in msg
    assert "layer_1/weight: file has shape (4, 3), template expects (5, 3)" in msg
    assert "layer_2/weight: file has shape (2, 4), template expects (2, 5)" in msg
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "obj.npz", weight=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        nn.load(tmp_path / "obj.npz", {"weight": np.zeros(1)})


def test_wrong_input_names_layer_and_shape(rng):
    model = nn.Chain(nn.Dense(4, 3), nn.Dense(5, 2))
    params, state = nn.setup(rng, model)
    with pytest.raises(nn.ShapeError, match=r"Chain.layer_2: Dense\(5 => 2\): expected an input of shape "
                                            r"\(B, 5\).*got shape \(2, 3\)"):
        model(np.ones((2, 4)), params, state)
    with pytest.raises(ValueError, match=r"Dense\(4 => 3\): expected an input of shape \(B, 4\)"):
        nn.vjp(model, np.ones((2, 7)), params, state)
    conv = nn.Conv2d(3, 2, 3)
    cp, cs = nn.setup(rng, conv)
    with pytest.raises(ValueError, match=r"expected an input of shape \(B, 3, H, W\) \(NCHW\); got shape"):
        conv(np.ones((1, 4, 5, 5)), cp, cs)
    with pytest.raises(ValueError, match="large enough"):
        conv(np.ones((1, 3, 2, 2)), cp, cs)
    with pytest.raises(TypeError, match="takes one array, got a tuple of 2"):
        nn.Dense(2, 2)((np.ones((1, 2)), np.ones((1, 2))), *nn.setup(rng, nn.Dense(2, 2)))
    par = nn.Parallel(nn.add, nn.Dense(2, 2), nn.Dense(2, 2))
    pp, ps = nn.setup(rng, par)
    with pytest.raises(ValueError, match="one element per branch"):
        par((np.ones((1, 2)),) * 3, pp, ps)


@pytest.mark.parametrize("build, error, pattern", [
    (lambda: nn.Dense(0, 3), ValueError, "in_features must be a positive integer, got 0"),
    (lambda: nn.Dense(2.5, 3), TypeError, "in_features must be a positive integer, got float"),
    (lambda: nn.Dense(2, 3, "swish"), ValueError, "unknown activation 'swish'; choose one of 'id"),
    (lambda: nn.Dense(2, 3, np.tanh), TypeError, "activation must be a name"),
    (lambda: nn.Dense(2, 3, use_bias=1), TypeError, "use_bias must be True or False"),
    (lambda: nn.Dense(2, 3, init="ones"), ValueError, "init must be one of 'glorot_uniform'"),
    (lambda: nn.Dense(2, 3, weight_norm=True, spectral_norm=True), ValueError, "cannot both be True"),
    (lambda: nn.Conv2d(1, 1, 3, stride=0), ValueError, "stride must be >= 1"),
    (lambda: nn.Conv2d(1, 1, (3, 3, 3)), TypeError, "kernel_size must be an int or a pair"),
    (lambda: nn.Conv2d(1, 1, 3, padding="valid"), ValueError, "padding must be an int, a pair of"),
    (lambda: nn.Conv2d(1, 1, 2, padding="same"), ValueError, "needs stride 1 and odd kernel sizes"),
    (lambda: nn.GroupNorm(6, 4), ValueError, r"channels \(6\) must be divisible by groups \(4\)"),
    (lambda: nn.LayerNorm(3, eps=-1.0), ValueError, "eps must be a finite number >= 0"),
    (lambda: nn.Dropout(1.0), ValueError, "p must be < 1"),
    (lambda: nn.Dropout(1.5), ValueError, r"p must lie in \[0, 1\]"),
    (lambda: nn.Chain(), ValueError, "Chain needs at least one layer"),
    (lambda: nn.Chain(nn.Dense(2, 2), np.tanh), TypeError, "layer 2 must be a deqcore.nn.Layer"),
    (lambda: nn.Parallel(lambda a, b: a * b, nn.Dense(2, 2)), TypeError, "connection must be nn.add"),
    (lambda: nn.Reshape((2, -1, -1)), ValueError, "at most one -1"),
    (lambda: nn.Upsample(0), ValueError, "scale must be >= 1"),
    (lambda: nn.setup("seed", nn.Dense(2, 2)), TypeError, "rng must be a numpy.random.Generator"),
    (lambda: nn.setup(0, np.tanh), TypeError, "model must be a deqcore.nn.Layer"),
    (lambda: nn.setup(0, nn.Dense(2, 2), dtype=np.int32), ValueError, "dtype must be float32 or float64"),
])
def test_bad_arguments(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build()


def test_operator_add_is_accepted(rng):
    import operator

    model = nn.Parallel(operator.add, nn.Dense(2, 2), nn.Dense(2, 2))
    assert model.connection is nn.add


def test_input_pullback_matches_the_full_pullback(rng):
    """The input-only pullbacks the adjoint uses give the full pullback's dx (built-in layers skip dparams;
    a user layer without the shortcut runs in full), and drop the tuple elements not wanted."""
    from deqcore.nn.core import input_pullback

    f = nn.Chain(nn.Parallel(nn.add, nn.Dense(4, 4, use_bias=False, weight_norm=True), nn.Dense(3, 4)),
                 nn.Activation("tanh"), Scale(), nn.Dense(4, 4, "gelu"))
    params, state = nn.setup(rng, f)
    z, x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
    _, pullback, _ = f.vjp((z, x), params, state)
    (dz, dx), _ = pullback(dy)
    both = input_pullback(pullback)(dy)
    np.testing.assert_allclose(both[0], dz, rtol=1e-12)
    np.testing.assert_allclose(both[1], dx, rtol=1e-12)
    only_z = input_pullback(pullback, (True, False))(dy)
    np.testing.assert_allclose(only_z[0], dz, rtol=1e-12)
    assert only_z[1] is None
    shared = nn.Chain(nn.Dense(3, 3), nn.Parallel(nn.add, nn.Dense(3, 3), nn.NoOpLayer(), Scale()))
    p2, s2 = nn.setup(rng, shared)                                          # one input to every branch
    x3, d3 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    _, pb2, _ = shared.vjp(x3, p2, s2)
    np.testing.assert_allclose(input_pullback(pb2)(d3), pb2(d3)[0], rtol=1e-12)


def test_partial_pullback_matches_the_full_pullback(rng):
    """The last VJP of an implicit adjoint (the parameters' and x's cotangents, not z's) gives the full pullback's
    arrays bit for bit, with None for the inputs not wanted; user layers without the shortcut run in full."""
    from deqcore.nn.core import partial_pullback
    from deqcore.nn.tree import tree_leaves

    f = nn.Chain(nn.Parallel(nn.add, nn.Dense(4, 4, use_bias=False, weight_norm=True), nn.Dense(3, 4)),
                 nn.Activation("tanh"), Scale(), nn.Dense(4, 4, "gelu"))
    noop = nn.Chain(nn.Parallel(nn.add, nn.Dense(4, 4, use_bias=False), nn.NoOpLayer()), nn.Activation("tanh"))
    for model in (f, noop):
        params, state = nn.setup(rng, model)
        z, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
        x = rng.standard_normal((5, 3 if model is f else 4))
        _, pullback, _ = model.vjp((z, x), params, state)
        (dz, dx), dparams = pullback(dy)
        (no_z, got_x), got_params = partial_pullback(pullback, (False, True))(dy)
        assert no_z is None
        np.testing.assert_array_equal(got_x, dx)
        for got, want in zip(tree_leaves(got_params), tree_leaves(dparams), strict=True):
            np.testing.assert_array_equal(got, want)
        (got_z, got_x), _ = partial_pullback(pullback, (True, True))(dy)
        np.testing.assert_array_equal(got_z, dz)
        (no_z, no_x), _ = partial_pullback(pullback, (False, False))(dy)
        assert no_z is None and no_x is None
    shared = nn.Chain(nn.Dense(3, 3), nn.Parallel(nn.add, nn.Dense(3, 3), nn.NoOpLayer(), Scale()))
    p2, s2 = nn.setup(rng, shared)                                          # one input to every branch
    x3, d3 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    _, pb2, _ = shared.vjp(x3, p2, s2)
    dx3, dp3 = pb2(d3)
    none_x, got_p = partial_pullback(pb2, False)(d3)
    assert none_x is None
    for got, want in zip(tree_leaves(got_p), tree_leaves(dp3), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(partial_pullback(pb2, True)(d3)[0], dx3)


def test_partial_pullback_of_conv_matches_the_full_pullback(rng):
    """Conv2d's weight-only transpose (no col2im for an input cotangent not wanted) gives the full pullback's
    weight and bias cotangents bit for bit."""
    from deqcore.nn.core import partial_pullback
    from deqcore.nn.tree import tree_leaves

    conv = nn.Parallel(nn.add, nn.Conv2d(2, 3, 3, padding=1, stride=2, activation="tanh"), nn.Conv2d(2, 3, 1, stride=2))
    params, state = nn.setup(rng, conv)
    z, x = rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((2, 2, 6, 6))
    y, pullback, _ = conv.vjp((z, x), params, state)
    dy = rng.standard_normal(y.shape)
    (_, dx), dparams = pullback(dy)
    (no_z, got_x), got_params = partial_pullback(pullback, (False, True))(dy)
    assert no_z is None
    np.testing.assert_array_equal(got_x, dx)
    for got, want in zip(tree_leaves(got_params), tree_leaves(dparams), strict=True):
        np.testing.assert_array_equal(got, want)


def test_testmode_is_not_collected_as_a_test_but_its_doctest_runs():
    import doctest

    # pytest collects any function whose name starts with "test" (in core.py's doctest run, or a test module that
    # imports it) unless its __test__ attribute is false
    assert getattr(nn.testmode, "__test__", True) is False
    [example] = doctest.DocTestFinder().find(nn.testmode, "testmode")
    assert example.examples                    # its docstring's example is still collected as a doctest
