"""The layer API's save/load promises checked from outside:

* a training run saved mid-way (parameters, the layers' state: BatchNorm statistics, the dropout counter, the
  spectral norm's vector, flags; the optimiser's state with its step count) and resumed from the files gives
  bitwise the parameters of the uninterrupted run;
* ``nn.load`` never changes values silently when it casts to the template's dtypes: a float value into an integer
  or bool leaf must be held exactly (it was truncated: 1.7 → 1), and a finite value may not overflow to infinity
  in a float32 template (it did, with only NumPy's overflow warning); narrowing float64 to float32 still rounds.
"""

import numpy as np
import pytest

from deqcore import nn


def _model():
    return nn.Chain(nn.Dense(4, 6, "tanh", spectral_norm=True), nn.BatchNorm(6), nn.Dropout(0.3), nn.Dense(6, 3))


def _steps(model, params, state, opt, opt_state, data, first, last):
    for k in range(first, last):
        x, labels = data[0][k], data[1][k]
        logits, pullback, state = nn.vjp(model, x, params, state)
        _, dlogits = nn.softmax_cross_entropy(logits, labels)
        _, grads = pullback(dlogits)
        params, opt_state = opt.update(grads, opt_state, params)
    return params, state, opt_state


def test_training_resumed_from_saved_files_equals_the_uninterrupted_run(tmp_path):
    model = _model()
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((5, 8, 4)), rng.integers(0, 3, (5, 8)))
    opt = nn.Adam(lr=nn.cosine_schedule(0.05, total_steps=5, warmup_steps=1), weight_decay=0.1)
    params, state = nn.setup(np.random.default_rng(1), model)
    straight = _steps(model, params, state, opt, opt.init(params), data, 0, 5)

    params, state, opt_state = _steps(model, params, state, opt, opt.init(params), data, 0, 3)
    for name, tree in (("params", params), ("state", state), ("opt", opt_state)):
        nn.save(tmp_path / name, tree)
    fresh_params, fresh_state = nn.setup(np.random.default_rng(99), model)          # other values, same layout
    params = nn.load(tmp_path / "params", fresh_params)
    state = nn.load(tmp_path / "state", fresh_state)
    opt_state = nn.load(tmp_path / "opt", opt.init(fresh_params))
    assert type(opt_state["step"]) is int and opt_state["step"] == 3
    resumed = _steps(model, params, state, opt, opt_state, data, 3, 5)
    for got, want in zip(resumed, straight):
        assert nn.tree_map(np.shape, got) == nn.tree_map(np.shape, want)
        for a, b in zip(nn.tree_leaves(got), nn.tree_leaves(want)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("stored, template, named", [
    (np.array([1.7, -2.0]), np.zeros(2, np.int64), "cannot hold exactly"),
    (np.array([np.nan]), np.zeros(1, np.int32), "cannot hold exactly"),
    (np.array([300]), np.zeros(1, np.int8), "cannot hold exactly"),
    (np.array([2.0]), np.zeros(1, bool), "cannot hold exactly"),
    (np.array([1e300, 1.0]), np.zeros(2, np.float32), "beyond the range"),
    (np.array(2.5), 0, "cannot hold exactly"),                                  # a Python int leaf (a step count)
], ids=["fraction_to_int", "nan_to_int", "wrap_int8", "two_to_bool", "overflow_float32", "python_int"])
def test_load_refuses_a_cast_that_would_change_values_silently(tmp_path, stored, template, named):
    nn.save(tmp_path / "p", {"a": stored})
    with pytest.raises(ValueError, match=rf"a: the file holds .*{named}"):
        nn.load(tmp_path / "p", {"a": template})


def test_load_still_rounds_to_a_float32_template_and_keeps_exact_integers(tmp_path):
    values = np.array([0.1, -np.inf, np.nan, 3.0])
    nn.save(tmp_path / "p", {"w": values, "n": np.array([1.0, 2.0]), "flag": np.array(1), "step": 7})
    loaded = nn.load(tmp_path / "p", {"w": np.zeros(4, np.float32), "n": np.zeros(2, np.int64),
                                      "flag": np.zeros((), bool), "step": 0})
    assert loaded["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["w"], values.astype(np.float32))      # non-finite values stay as saved
    assert loaded["n"].dtype == np.int64 and loaded["n"].tolist() == [1, 2]
    assert loaded["flag"].dtype == bool and bool(loaded["flag"]) and loaded["step"] == 7


def test_wrapped_function_derivatives_of_the_wrong_shape_are_named_not_broadcast():
    # a pullback that sums over the batch (dx of shape (1, n)) or a transposed tangent went through unchecked: NumPy
    # broadcast them into a DEQ's gradient without a word
    bad = nn.WrappedFunction(np.sin, vjp=lambda x: (np.sin(x), lambda d: (np.cos(x) * d).sum(0, keepdims=True)),
                             jvp=lambda x, d: (np.sin(x), (np.cos(x) * d).T))
    x = np.linspace(0.0, 1.0, 6).reshape(3, 2)
    _, pullback, _ = nn.vjp(bad, x, {}, {})
    with pytest.raises(ValueError, match=r"pullback returned dx of shape \(1, 2\), but x has shape \(3, 2\)"):
        pullback(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"jvp returned the tangent dy of shape \(2, 3\), but y has shape \(3, 2\)"):
        nn.jvp(bad, x, {}, {}, np.ones((3, 2)))
    # right shapes, tuples included, pass through unchanged
    pair = nn.WrappedFunction(lambda t: t[0] * t[1], vjp=lambda t: (t[0] * t[1], lambda d: (d * t[1], d * t[0])),
                              jvp=lambda t, dt: (t[0] * t[1], dt[0] * t[1] + t[0] * dt[1]))
    (da, db), _ = nn.vjp(pair, (x, 2 * x), {}, {})[1](np.ones((3, 2)))
    np.testing.assert_array_equal(da, 2 * x)
    np.testing.assert_array_equal(db, x)
    np.testing.assert_array_equal(nn.jvp(pair, (x, 2 * x), {}, {}, (x, x))[1], 3 * x * x)


@pytest.mark.parametrize("opt", [nn.SGD(0.1), nn.SGD(0.1, momentum=0.9), nn.Adam(), nn.AdamW()], ids=repr)
def test_optimisers_name_the_gradient_leaves_missing_or_extra(opt):
    # a gradient tree of another layout failed with "trees have different structures (dict keys differ)", naming
    # neither the argument nor the keys
    params = {"a": np.ones(2), "b": {"c": np.zeros(3)}}
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"grads must have the tree of params.*missing in grads: 'b/c'$"):
        opt.update({"a": np.ones(2)}, state, params)
    with pytest.raises(ValueError, match=r"grads must have the tree of params.*not in params: 'd'$"):
        opt.update({"a": np.ones(2), "b": {"c": np.ones(3)}, "d": np.ones(1)}, state, params)
    new, _ = opt.update({"a": np.ones(2), "b": {"c": np.ones(3)}}, state, params)
    assert (new["a"] < 1).all() and (new["b"]["c"] < 0).all()             # a step against the gradient
