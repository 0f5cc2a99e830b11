"""Promises of the layer API (README "A DEQ layer and its training step", "What a result guarantees": bad
arguments are named, never a silent NaN) checked against hand computations and finite differences."""

import numpy as np
import pytest

import deqcore as dq
from deqcore import nn
from deqcore.models import with_fixed_depth


# -- optimisers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_clip_by_global_norm_never_returns_a_non_finite_gradient(bad):
    grads = {"a": np.array([bad, 1.0]), "b": np.array([2.0])}
    clipped, norm = nn.clip_by_global_norm(grads, 1.0)
    assert not np.isfinite(float(norm))                      # the caller can see it and skip the step
    for leaf in nn.tree_leaves(clipped):
        assert np.array_equal(leaf, np.zeros_like(leaf))     # nothing that would poison the parameters
    params = {"a": np.array([1.0, 2.0]), "b": np.array([3.0])}
    new, _ = nn.SGD(lr=0.1).update(clipped, nn.SGD(lr=0.1).init(params), params)
    assert all(np.array_equal(new[k], params[k]) for k in params)


def test_clip_by_global_norm_of_finite_gradients_is_the_hand_computed_scaling():
    grads = {"a": np.array([3.0, 0.0], np.float32), "b": {"c": np.array([[4.0]], np.float32)}}
    clipped, norm = nn.clip_by_global_norm(grads, 2.5)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [1.5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"]["c"], [[2.0]], rtol=1e-6)
    assert clipped["a"].dtype == np.float32


def test_adam_two_steps_equal_the_hand_computed_update():
    params = {"w": np.array([1.0, -2.0])}
    g1, g2 = np.array([0.5, 2.0]), np.array([-1.0, 1.0])
    opt = nn.Adam(lr=0.1, b1=0.5, b2=0.75, eps=1e-3)
    p1, state = opt.update({"w": g1}, opt.init(params), params)
    p2, state = opt.update({"w": g2}, state, p1)
    m_hat = (0.25 * g1 + 0.5 * g2) / (1 - 0.5 ** 2)
    v_hat = (0.1875 * g1 ** 2 + 0.25 * g2 ** 2) / (1 - 0.75 ** 2)
    expected = params["w"] - 0.1 * g1 / (np.abs(g1) + 1e-3) - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-3)
    np.testing.assert_allclose(p2["w"], expected, rtol=1e-14)


def test_adam_eps_zero_is_refused_not_nan_on_a_zero_gradient():
    with pytest.raises(ValueError, match="eps"):
        nn.Adam(eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        nn.AdamW(eps=0.0)


@pytest.mark.parametrize("opt", [nn.SGD(lr=0.1), nn.Adam(lr=0.1)])
def test_optimisers_refuse_integer_parameters_instead_of_turning_them_into_floats(opt):
    params = {"w": np.array([1, 2])}
    with pytest.raises(TypeError, match="params"):
        opt.update({"w": np.array([1, 1])}, opt.init(params), params)


# -- dtypes -------------------------------------------------------------------------------------------------
_LAYERS = [
    (lambda: nn.Dense(4, 3, "tanh"), (3, 4)),
    (lambda: nn.Conv2d(4, 2, 3, padding=1), (2, 4, 5, 5)),
    (lambda: nn.LayerNorm((4,)), (3, 4)),
    (lambda: nn.GroupNorm(4, 2), (2, 4, 3, 3)),
    (lambda: nn.BatchNorm(4), (2, 4, 3, 3)),
    (lambda: nn.Activation("gelu"), (3, 4)),
    (lambda: nn.Dropout(0.5), (3, 4)),
    (lambda: nn.Upsample(2), (2, 4, 3, 3)),
    (lambda: nn.Flatten(), (2, 4, 3, 3)),
]


@pytest.mark.parametrize("make, shape", _LAYERS)
@pytest.mark.parametrize("dtype", [np.complex128, np.float16, np.int64, np.bool_])
def test_layers_refuse_inputs_that_are_not_float32_or_float64(make, shape, dtype):
    layer = make()
    params, state = nn.setup(0, layer)
    x = np.ones(shape, dtype=dtype)
    for call in (lambda: layer(x, params, state), lambda: nn.vjp(layer, x, params, state),
                 lambda: nn.jvp(layer, x, params, state, x)):
        with pytest.raises(TypeError, match=r"\bx\b"):
            call()


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Dense(4, 3, "tanh"), (3, 4)),
    (lambda: nn.Dense(4, 3, weight_norm=True), (3, 4)),
    (lambda: nn.Dense(4, 3, spectral_norm=True), (3, 4)),
    (lambda: nn.Conv2d(4, 2, 3, padding=1), (2, 4, 5, 5)),
    (lambda: nn.LayerNorm((4,)), (3, 4)),
    (lambda: nn.GroupNorm(4, 2), (2, 4, 3, 3)),
    (lambda: nn.BatchNorm(4), (2, 4, 3, 3)),
    (lambda: nn.BatchNorm(4, affine=False), (2, 4, 3, 3)),
    (lambda: nn.Chain(nn.Dense(4, 4), nn.Activation("relu")), (3, 4)),
])
@pytest.mark.parametrize("param_dtype, x_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_mixed_input_and_parameter_dtypes_are_refused_as_the_models_do(make, shape, param_dtype, x_dtype):
    """NumPy promotes the float32 side: the output, the float32 parameters' gradients (which the optimisers then
    refuse) and BatchNorm's running statistics silently became float64. The DEQ models refuse the mix; so do
    the layers, naming x."""
    layer = make()
    params, state = nn.setup(0, layer, dtype=param_dtype)
    x = np.ones(shape, dtype=x_dtype)
    for call in (lambda: layer(x, params, state), lambda: nn.vjp(layer, x, params, state),
                 lambda: nn.jvp(layer, x, params, state, x), lambda: layer.bind_vjp(params, state)(x)):
        with pytest.raises(TypeError, match=r"\bx\b.*float"):
            call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_and_state_keep_the_dtype_of_their_parameters(dtype):
    model = nn.Chain(nn.Conv2d(2, 4, 3, padding=1, weight_norm=True), nn.BatchNorm(4), nn.GroupNorm(4, 2),
                     nn.Activation("gelu"), nn.Flatten(), nn.Dense(36, 3, spectral_norm=True), nn.LayerNorm((3,)))
    params, state = nn.setup(0, model, dtype=dtype)
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(dtype)
    y, pullback, new_state = nn.vjp(model, x, params, state)
    dx, dparams = pullback(np.ones_like(y))
    assert y.dtype == dx.dtype == dtype
    assert {leaf.dtype for leaf in nn.tree_leaves(dparams)} == {np.dtype(dtype)}
    assert {leaf.dtype for leaf in nn.tree_leaves(new_state) if hasattr(leaf, "dtype")} == {np.dtype(dtype)}
    params, _ = nn.Adam(lr=1e-3).update(dparams, nn.Adam().init(params), params)      # accepted as they are


def test_losses_keep_the_prediction_dtype_so_a_float32_model_trains_against_float64_targets():
    model = nn.Dense(3, 2, "tanh")
    params, state = nn.setup(0, model, dtype=np.float32)
    x = np.ones((4, 3), np.float32)
    y, pullback, _ = nn.vjp(model, x, params, state)
    value, dy = nn.mse(y, np.zeros((4, 2)))                      # a float64 target, as in the README
    assert dy.dtype == np.float32
    np.testing.assert_allclose(dy, 2 * y / y.size, rtol=1e-6)
    _, grads = pullback(dy)
    nn.Adam().update(grads, nn.Adam().init(params), params)     # float32 gradients: accepted


# -- shapes -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, shape", [(lambda: nn.GroupNorm(4, 2), (0, 4, 3, 3)),
                                         (lambda: nn.LayerNorm((4,)), (0, 4)),
                                         (lambda: nn.Conv2d(4, 2, 3), (0, 4, 3, 3)),
                                         (lambda: nn.Dense(4, 2), (0, 4))])
def test_an_empty_batch_passes_through_per_sample_layers(make, shape):
    layer = make()
    params, state = nn.setup(0, layer)
    x = np.ones(shape)
    y, pullback, _ = nn.vjp(layer, x, params, state)
    assert y.shape[0] == 0
    dx, dparams = pullback(np.ones_like(y))
    assert dx.shape == x.shape
    for leaf in nn.tree_leaves(dparams):
        assert np.array_equal(leaf, np.zeros_like(leaf))         # no sample, no gradient
    assert nn.jvp(layer, x, params, state, x)[1].shape == y.shape


@pytest.mark.parametrize("loss, name", [(lambda: nn.mse(np.ones((0, 3)), np.ones((0, 3))), "prediction"),
                                        (lambda: nn.softmax_cross_entropy(np.ones((0, 3)), np.zeros(0, int)),
                                         "logits"),
                                        (lambda: nn.accuracy(np.ones((0, 3)), np.zeros(0, int)), "logits")])
def test_losses_of_an_empty_batch_are_refused_not_nan(loss, name):
    with pytest.raises(ValueError, match=name):
        loss()


@pytest.mark.parametrize("make, shape", [(lambda: nn.Dense(3, 2, "tanh"), (4, 3)),
                                         (lambda: nn.Parallel(None, nn.Dense(3, 2), nn.LayerNorm((3,))),
                                          (4, 3))])
def test_a_float64_cotangent_of_a_float32_model_gives_float32_gradients(make, shape):
    """As the DEQ models do: the cotangent is cast to the output's dtype (was: every gradient float64)."""
    model = make()
    params, state = nn.setup(0, model, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y, pullback, _ = nn.vjp(model, x, params, state)
    dy = nn.tree_map(lambda a: np.ones(a.shape), y)                              # float64
    dx, grads = pullback(dy)
    reference = pullback(nn.tree_map(lambda a: np.ones(a.shape, np.float32), y))
    for got, want in zip(nn.tree_leaves((dx, grads)), nn.tree_leaves(reference)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


# -- models -------------------------------------------------------------------------------------------------
def _small_deq(**settings):
    f = nn.Chain(nn.Parallel(nn.add, nn.Dense(3, 3, use_bias=False), nn.Dense(3, 3)), nn.Activation("tanh"))
    deq = dq.DeepEquilibriumNetwork(f, dq.Anderson(), atol=1e-10, rtol=0.0, max_steps=100, **settings)
    params, state = nn.setup(0, deq)
    params["model"]["layer_1"]["layer_1"]["weight"] *= 0.3
    return deq, f, params, state


@pytest.mark.parametrize("depth", [-2, 1.5, True, "3"])
def test_a_bad_fixed_depth_in_the_state_is_named_not_truncated(depth):
    deq, _, params, state = _small_deq()
    with pytest.raises((TypeError, ValueError), match="fixed_depth"):
        deq(np.ones((2, 3)), params, {**state, "fixed_depth": depth})


def test_pretraining_is_the_chained_map_and_its_gradient_matches_finite_differences():
    deq, f, params, state = _small_deq()
    state = with_fixed_depth(state, 3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3))

    def chained(x, params):
        z = np.zeros_like(x)
        for _ in range(3):
            z = f((z, x), params["model"], state["model"])[0]
        return z

    z, pullback, _ = nn.vjp(deq, x, params, state)
    np.testing.assert_array_equal(z, chained(x, params))
    dy = rng.standard_normal(z.shape)
    dx, dparams = pullback(dy)
    tx, tp = rng.standard_normal(x.shape), nn.tree_map(lambda a: rng.standard_normal(a.shape), params)
    eps = 1e-6
    up = np.sum(dy * chained(x + eps * tx, nn.tree_map(lambda a, b: a + eps * b, params, tp)))
    down = np.sum(dy * chained(x - eps * tx, nn.tree_map(lambda a, b: a - eps * b, params, tp)))
    assert (up - down) / (2 * eps) == pytest.approx(float(np.sum(dx * tx) + nn.tree_dot(dparams, tp)), abs=1e-8)


def test_jvp_tangents_of_the_wrong_shape_or_tree_are_named_not_broadcast():
    layer = nn.Dense(3, 2, "tanh")
    params, state = nn.setup(0, layer)
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="dx"):
        nn.jvp(layer, x, params, state, np.ones((1, 3)))          # was a (1, 2) tangent
    with pytest.raises(ValueError, match="dparams"):
        nn.jvp(layer, x, params, state, x, {"weight": np.ones((2, 3))})      # was a KeyError
    with pytest.raises(ValueError, match="dparams"):
        nn.jvp(layer, x, params, state, x, {"weight": np.ones((1, 3)), "bias": np.ones(2)})
    par = nn.Parallel(nn.add, nn.Dense(3, 2), nn.Dense(3, 2))
    pp, ps = nn.setup(0, par)
    with pytest.raises(ValueError, match="dx"):
        nn.jvp(par, (x, x), pp, ps, (x, np.ones((2, 1))))


def test_a_float64_tangent_of_a_float32_layer_gives_a_float32_tangent():
    layer = nn.Dense(3, 2, "tanh")
    params, state = nn.setup(0, layer, dtype=np.float32)
    x = np.ones((2, 3), np.float32)
    dparams = nn.tree_map(lambda a: np.ones(a.shape), params)
    _, dy = nn.jvp(layer, x, params, state, np.ones((2, 3)), dparams)
    _, want = nn.jvp(layer, x, params, state, np.ones((2, 3), np.float32),
                     nn.tree_map(lambda a: a.astype(np.float32), dparams))
    assert dy.dtype == np.float32
    np.testing.assert_array_equal(dy, want)


@pytest.mark.parametrize("make, key, bad", [
    (lambda: nn.Dense(3, 2), "weight", np.ones((3, 3))),
    (lambda: nn.Dense(3, 2), "bias", np.ones((1, 2))),                  # was broadcast without a word
    (lambda: nn.Dense(3, 2), "bias", None),                             # was a KeyError
    (lambda: nn.Dense(3, 2, weight_norm=True), "weight_g", np.ones(3)),
    (lambda: nn.Conv2d(2, 3, 3), "weight", np.ones((3, 2, 2, 2))),
    (lambda: nn.LayerNorm((3,)), "scale", np.ones((1, 3))),
    (lambda: nn.GroupNorm(2, 1), "bias", np.ones(3)),
])
def test_parameters_of_the_wrong_shape_or_missing_are_named(make, key, bad):
    layer = make()
    params, state = nn.setup(0, layer)
    params = {k: v for k, v in params.items() if k != key}
    if bad is not None:
        params[key] = bad
    x = np.ones((2, 2, 4, 4)) if isinstance(layer, (nn.Conv2d, nn.GroupNorm)) else np.ones((2, 3))
    for call in (lambda: layer(x, params, state), lambda: nn.vjp(layer, x, params, state),
                 lambda: layer.jvp(x, params, state, x)):
        with pytest.raises(ValueError, match=key):
            call()


@pytest.mark.parametrize("value, error", [(float("nan"), ValueError), (np.inf, ValueError), ("a", TypeError),
                                          (np.ones(2), TypeError), (True, TypeError)])
@pytest.mark.parametrize("name", ["d_jacobian_loss", "d_skip_loss"])
def test_bad_auxiliary_loss_cotangents_are_named_not_nan_gradients(value, error, name):
    deq, _, params, state = _small_deq(jacobian_regularization="forward", init="one_step")
    y, pullback, _ = nn.vjp(deq, np.ones((2, 3)), params, state)
    with pytest.raises(error, match=name):
        pullback(np.ones_like(y), **{name: value})
    dx, grads = pullback(np.ones_like(y), **{name: np.float64(0.5)})       # a 0-d number is fine
    assert np.isfinite(float(nn.tree_norm(grads)))


def test_a_one_dimensional_x_is_named_x_not_the_solvers_y0():
    deq, _, params, state = _small_deq()
    with pytest.raises(ValueError, match=r"\bx\b"):
        deq(np.ones(3), params, state)


# -- reparametrisations -------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["weight_norm", "spectral_norm"])
def test_a_zero_weight_under_a_normalisation_is_zero_with_finite_gradients_not_nan(option):
    with pytest.raises(ValueError, match="init"):
        nn.Dense(2, 3, init="zeros", **{option: True})
    layer = nn.Dense(2, 3, "tanh", **{option: True})
    params, state = nn.setup(0, layer)
    key = "weight_v" if option == "weight_norm" else "weight"
    params[key] = np.zeros_like(params[key])                  # e.g. after a step with weight decay to zero
    x = np.ones((2, 2))
    y, pullback, new_state = nn.vjp(layer, x, params, state)
    np.testing.assert_array_equal(y, np.tanh(np.zeros((2, 3)) + params["bias"]))
    dx, grads = pullback(np.ones_like(y))
    assert all(np.isfinite(leaf).all() for leaf in nn.tree_leaves((dx, grads, new_state)) if hasattr(leaf, "dtype"))
    assert np.isfinite(nn.jvp(layer, x, params, state, x, nn.tree_map(np.ones_like, params))[1]).all()


def test_an_init_returning_nan_is_named():
    with pytest.raises(ValueError, match="init"):
        nn.setup(0, nn.Dense(2, 3, init=lambda rng, shape: np.full(shape, np.nan)))


@pytest.mark.parametrize("which, bad", [("params", {}), ("state", None), ("params", None), ("state", {"x": 1})])
def test_a_deq_called_with_trees_not_from_setup_names_them(which, bad):
    deq, _, params, state = _small_deq()
    trees = {"params": params, "state": state, which: bad}
    with pytest.raises(TypeError, match=which):
        deq(np.ones((2, 3)), trees["params"], trees["state"])
