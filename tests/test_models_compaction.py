"""Active-set compaction in the DEQ models (``compact=True``): the same fixed points, codes and gradients as the
uncompacted solve, with fewer rows evaluated; layers that couple samples are detected and fall back."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import deqcore as dq
from deqcore import nn
from deqcore.adjoint import _warn

WIDTH, BATCH, SMALL = 16, 16, 4
#: per-sample input scales over three decades: large inputs saturate tanh (fast, contractive samples), small
#: ones leave z near 0 where the Jacobian is W, of spectral radius 1.5 (slow samples)
SCALES = np.logspace(-2, 1, BATCH)[:, None]
TOL = dict(atol=1e-10, rtol=0.0, max_steps=400)


class RowCounter:
    """A WrappedFunction identity recording the batch size of every plain call (the forward solve's calls)."""

    def __init__(self):
        self.rows = []
        self.layer = nn.WrappedFunction(self._record, vjp=lambda x: (x, lambda d: d), jvp=lambda x, d: (x, d))

    def _record(self, x):
        self.rows.append(x.shape[0])
        return x


def _hard_cell(width, inputs, counter):
    """f((z, x)) = tanh(W z + U x + b), W scaled to spectral radius 1.5 by :func:`_make_hard`."""
    return nn.Chain(nn.Parallel(nn.add, nn.Dense(width, width, use_bias=False), nn.Dense(inputs, width)),
                    counter.layer, nn.Activation("tanh"))


def _make_hard(params, path, contractive=False):
    """W scaled to spectral radius 1.5 (the hard map), or to ‖W‖₂ = 0.95 (contractive, but slow for small x)."""
    node = params
    for key in path[:-1]:
        node = node[key]
    W = node[path[-1]]
    node[path[-1]] = W * (0.95 / np.linalg.norm(W, 2) if contractive else 1.5 / np.abs(np.linalg.eigvals(W)).max())


def _build(kind, compact, counter, solver):
    """(model, the path of its W) for one model kind."""
    cell = _hard_cell(WIDTH, WIDTH, counter) if not kind.startswith("multiscale") else None
    w_path = ("model", "layer_1", "layer_1", "weight")
    if kind == "deq":
        return dq.DeepEquilibriumNetwork(cell, solver, compact=compact, **TOL), w_path
    if kind == "skip":
        return dq.SkipDeepEquilibriumNetwork(cell, nn.Dense(WIDTH, WIDTH), solver, compact=compact, **TOL), w_path
    if kind == "skip_reg":
        return dq.SkipDeepEquilibriumNetwork(cell, None, solver, compact=compact, **TOL), w_path
    main = (_hard_cell(WIDTH, WIDTH, counter), nn.Dense(SMALL, SMALL, "tanh"))
    mapping = [[nn.NoOpLayer(), nn.Dense(WIDTH, SMALL, "tanh")], [nn.Dense(SMALL, WIDTH, "tanh"), nn.NoOpLayer()]]
    if kind == "multiscale":
        model = dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, solver, ((WIDTH,), (SMALL,)),
                                                    compact=compact, **TOL)
    else:
        model = dq.MultiScaleSkipDeepEquilibriumNetwork(main, mapping, None, nn.Dense(WIDTH, WIDTH + SMALL), solver,
                                                        ((WIDTH,), (SMALL,)), compact=compact, **TOL)
    return model, ("model", "main_1", "layer_1", "layer_1", "weight")


def _run(kind, compact, solver, x, dy_seed=5):
    """(output, state, dx, dparams, rows f saw in the forward solve) on the hard map."""
    counter = RowCounter()
    model, w_path = _build(kind, compact, counter, solver)
    params, state = nn.setup(np.random.default_rng(3), model)
    _make_hard(params, w_path)
    with warnings.catch_warnings():
        # a sample or two of the hard map may stall: the comparisons below include their codes
        warnings.filterwarnings("ignore", "the (forward|adjoint) solve", RuntimeWarning)
        y, pullback, state = nn.vjp(model, x, params, state)
        rows = list(counter.rows)
        dys = tuple(np.random.default_rng(dy_seed).standard_normal(a.shape)
                    for a in (y if isinstance(y, tuple) else (y,)))
        dx, dparams = pullback(dys if isinstance(y, tuple) else dys[0])
    return y, state, dx, dparams, rows, (model, params)


def _flat(y):
    return np.concatenate([a.reshape(a.shape[0], -1) for a in y], axis=1) if isinstance(y, tuple) else y


@pytest.mark.parametrize("kind, solver", [
    ("deq", dq.Anderson()), ("deq", dq.Broyden()), ("skip", dq.Anderson()), ("skip_reg", dq.LimitedMemoryBroyden()),
    ("multiscale", dq.Anderson()), ("multiscale_skip", dq.Broyden()),
])
def test_compacted_models_match_the_uncompacted_solve(kind, solver):
    x = np.random.default_rng(15).standard_normal((BATCH, WIDTH)) * SCALES
    y0, s0, dx0, dp0, rows0, _ = _run(kind, False, solver, x)
    y1, s1, dx1, dp1, rows1, (model, params) = _run(kind, True, solver, x)
    sol0, sol1 = s0["solution"], s1["solution"]
    # the same per-sample codes, fixed points and gradients, up to round-off (f's products on fewer rows)
    np.testing.assert_array_equal(sol1.result, sol0.result)
    assert sol0.success.all()
    # (round-off in f's products on fewer rows, carried by the iteration up to the tolerance's scale, 1e-10)
    np.testing.assert_allclose(_flat(y1), _flat(y0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(nn.ravel(dp1)[0], nn.ravel(dp0)[0], rtol=1e-7, atol=1e-10)
    # each value is a fixed point, checked by an independent call of f on the whole batch
    z = sol1.z_star
    fz = model.model((z, x), params["model"], s1["model"])[0]
    assert np.abs(fz - z).max() <= 1e-10
    # the samples converge at very different speeds, and the finished ones left the evaluations
    stats0, stats1 = sol0.original.stats, sol1.original.stats
    assert stats1["nfev"] == stats0["nfev"] and stats0["row_evaluations"] == BATCH * stats0["nfev"]
    assert stats1["row_evaluations"] <= 0.8 * stats0["row_evaluations"]
    assert min(rows1) < BATCH / 2 and set(rows0) == {BATCH}
    assert len(rows1) == stats1["nfev"] and sum(rows1) == stats1["row_evaluations"]


@settings(max_examples=12)
@given(seed=st.integers(0, 2 ** 32 - 1), batch=st.integers(1, 12), spread=st.floats(0.0, 3.0))
def test_compaction_changes_no_sample_of_any_batch(seed, batch, spread):
    # any batch size and spread of convergence speeds: the same codes and fixed points, and never more rows. f is
    # contractive here: where a sample's iteration is chaotic (a sample that stalls on the hard map), the round-off
    # of f's products on fewer rows can change its path and outcome, as any change of f's rounding would.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, WIDTH)) * 10.0 ** rng.uniform(-spread, 1.0, (batch, 1))
    counter = RowCounter()
    model, w_path = _build("deq", False, counter, dq.Anderson())
    params, state = nn.setup(np.random.default_rng(seed % 7), model)
    _make_hard(params, w_path, contractive=True)
    twin, _ = _build("deq", True, counter, dq.Anderson())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "the forward solve of", RuntimeWarning)
        y0, s0 = model(x, params, state)
        y1, s1 = twin(x, params, state)
    np.testing.assert_array_equal(s1["solution"].result, s0["solution"].result)
    assert s0["solution"].success.all()
    np.testing.assert_allclose(y1, y0, rtol=0, atol=1e-8)      # round-off, carried at most to the tolerance's scale
    stats0, stats1 = s0["solution"].original.stats, s1["solution"].original.stats
    assert stats1["nfev"] == stats0["nfev"] and stats1["row_evaluations"] <= stats0["row_evaluations"]


def test_a_nan_sample_fails_alone_in_a_compacted_batch():
    x = np.random.default_rng(15).standard_normal((BATCH, WIDTH)) * SCALES
    bad = x.copy()
    bad[3, 5] = np.nan
    y, state, dx, _, _, _ = _run("deq", True, dq.Anderson(), bad)
    y_rest, state_rest, dx_rest, _, _, _ = _run("deq", True, dq.Anderson(), np.delete(x, 3, axis=0))
    codes = state["solution"].result
    assert codes[3] == int(dq.ReturnCode.DIVERGED)
    np.testing.assert_array_equal(np.delete(codes, 3), state_rest["solution"].result)
    assert state_rest["solution"].success.all()
    # other rows: the batch's composition changes the round-off of f's products, carried to the tolerance's scale
    np.testing.assert_allclose(np.delete(y, 3, axis=0), y_rest, rtol=0, atol=1e-7)
    assert np.isfinite(np.delete(dx, 3, axis=0)).all()
    assert np.delete(state["solution"].adjoint.result, 3).tolist() == [0] * (BATCH - 1)


def test_a_training_mode_batch_norm_falls_back_with_a_warning():
    counter = RowCounter()
    cell = nn.Chain(nn.Parallel(nn.add, nn.Dense(WIDTH, WIDTH, use_bias=False), nn.Dense(WIDTH, WIDTH)),
                    nn.BatchNorm(WIDTH), counter.layer, nn.Activation("tanh"))
    model = dq.DeepEquilibriumNetwork(cell, dq.Anderson(), compact=True, **TOL)
    params, state = nn.setup(np.random.default_rng(3), model)
    _make_hard(params, ("model", "layer_1", "layer_1", "weight"))
    x = np.random.default_rng(15).standard_normal((BATCH, WIDTH)) * SCALES
    _warn.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):                           # warned once per call site, at the caller's line
            nn.vjp(model, x, params, state)
    messages = [w for w in caught if "compact=True" in str(w.message)]
    assert len(messages) == 1 and "BatchNorm(16) in training mode" in str(messages[0].message)
    assert messages[0].filename == __file__
    assert set(counter.rows) == {BATCH}          # every row evaluated: the batch statistics need all of them
    # in test mode the running statistics are used, the rows are independent and the solve compacts
    counter.rows.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, out = model(x, params, nn.testmode(state))
    assert out["solution"].success.all() and min(counter.rows) < BATCH


def test_row_coupling_names_exactly_the_layers_whose_rows_depend_on_the_batch(rng):
    # a layer that says None evaluates a subset of the rows to the same rows of the whole batch's output; the
    # layers that name a coupling do not
    x = rng.standard_normal((6, 4, 3, 3))
    rows = np.array([4, 1])
    layers = {
        "conv": nn.Conv2d(4, 2, 3, padding=1), "groupnorm": nn.GroupNorm(4, 2), "layernorm": nn.LayerNorm((4, 3, 3)),
        "batchnorm": nn.BatchNorm(4), "dropout": nn.Dropout(0.5),
        "chain": nn.Chain(nn.Flatten(), nn.Dense(36, 5, "tanh")),
        "parallel": nn.Parallel(nn.concat, nn.Flatten(), nn.Chain(nn.Dropout(0.3), nn.Flatten())),
    }
    coupled = {"batchnorm", "dropout", "parallel"}
    for name, layer in layers.items():
        params, state = nn.setup(np.random.default_rng(0), layer)
        for mode in (state, nn.testmode(state)):
            reason = layer.row_coupling(mode)
            independent = np.allclose(layer(x[rows], params, mode)[0], layer(x, params, mode)[0][rows])
            assert (reason is None) == independent, (name, reason)
            assert (reason is not None) == (name in coupled and mode is state), (name, reason)
    assert "batch axis" in nn.Parallel(nn.Concat(axis=0), nn.NoOpLayer()).row_coupling({"layer_1": {}})
    assert nn.Dropout(0.0).row_coupling({"training": True}) is None


def test_compact_arguments_are_checked():
    cell = _hard_cell(WIDTH, WIDTH, RowCounter())
    with pytest.raises(TypeError, match="compact must be True or False"):
        dq.DeepEquilibriumNetwork(cell, dq.Anderson(), compact="yes")
    with pytest.raises(ValueError, match="compact=True .* ODE solver VCABM3"):
        dq.DeepEquilibriumNetwork(cell, dq.VCABM3(), compact=True)
