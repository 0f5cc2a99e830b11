"""The DEQ models' and the torch adapter's contract: a non-finite input sample is that sample's DIVERGED code
and never moves or crashes its neighbours (forward values and implicit gradients equal their solo runs), a
failed forward solve warns once naming the code and the count, and errors name what the user passed."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deqcore as dq
from deqcore import nn
from deqcore.adjoint import _warn

WIDTH = 56          # > 50 state elements: the adjoint runs GMRES


def contractive_deq(kind, width=WIDTH):
    f = nn.Chain(nn.Parallel(nn.add, nn.Dense(width, width, use_bias=False), nn.Dense(width, width)),
                 nn.Activation("tanh"))
    settings_ = dict(atol=1e-10, rtol=1e-10, max_steps=200)
    if kind == "plain":
        model = dq.DeepEquilibriumNetwork(f, dq.Anderson(), **settings_)
    elif kind == "skip":
        model = dq.SkipDeepEquilibriumNetwork(f, nn.Dense(width, width), dq.Anderson(), **settings_)
    else:
        model = dq.SkipDeepEquilibriumNetwork(f, None, dq.Anderson(), **settings_)
    params, state = nn.setup(np.random.default_rng(0), model)
    weight = params["model"]["layer_1"]["layer_1"]["weight"]
    weight *= 0.8 / np.linalg.norm(weight, 2)
    return model, params, state


DY = np.cos(np.arange(4 * WIDTH, dtype=float)).reshape(4, WIDTH)


def run(model, params, state, x, rows=slice(None)):
    z, pullback, state = nn.vjp(model, x, params, state)
    dx, _ = pullback(DY[rows])
    return z, dx, state["solution"]


@pytest.mark.parametrize("kind", ["plain", "skip", "skip_reg"])
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_a_nan_input_sample_is_diverged_alone(kind, seed):
    """(An infinite input is not a failure: tanh saturates and the fixed point is finite.)"""
    model, params, state = contractive_deq(kind)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, WIDTH))
    broken = seed % 4
    x[broken, seed % WIDTH] = np.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        z, dx, solution = run(model, params, state, x)
    assert solution.result[broken] == dq.ReturnCode.DIVERGED
    for i in set(range(4)) - {broken}:
        z_i, dx_i, solo = run(model, params, state, x[i:i + 1], slice(i, i + 1))
        assert solution.result[i] == solo.result[0] == dq.ReturnCode.SUCCESS
        assert solution.adjoint.codes[i] == solo.adjoint.codes[0] == dq.ReturnCode.SUCCESS
        np.testing.assert_allclose(z[i], z_i[0], rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(dx[i], dx_i[0], rtol=1e-7, atol=1e-9)


def multiscale_deq(kind):
    """A two-scale DEQ (sizes 3 and 2) with small weights, so every finite sample converges."""
    main = (nn.Parallel(nn.add, nn.Dense(3, 3, "tanh", use_bias=False), nn.Dense(3, 3, "tanh", use_bias=False)),
            nn.Dense(2, 2, "tanh"))
    mapping = [[nn.NoOpLayer(), nn.Dense(3, 2, "tanh")], [nn.Dense(2, 3, "tanh"), nn.NoOpLayer()]]
    scales = ((3,), (2,))
    tight = dict(atol=1e-10, rtol=1e-10, max_steps=300)
    if kind == "multiscale":
        model = dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, dq.Anderson(), scales, **tight)
    else:
        model = dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, dq.VCABM3(), scales, atol=1e-8, rtol=1e-8,
                                                    max_steps=3000)
    params, state = nn.setup(np.random.default_rng(0), model)
    return model, nn.tree_map(lambda p: 0.3 * p, params), state


@pytest.mark.parametrize("kind", ["multiscale", "multiscale_ode_solver"])
def test_a_nan_input_sample_of_a_multiscale_deq_is_diverged_alone(kind):
    model, params, state = multiscale_deq(kind)
    x = np.random.default_rng(5).standard_normal((4, 3))
    x[2, 1] = np.nan

    def forward(inputs):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            ys, st_ = model(inputs, params, state)
        return ys, st_["solution"]

    ys, solution = forward(x)
    assert solution.result[2] != dq.ReturnCode.SUCCESS
    for i in (0, 1, 3):
        ys_i, solo = forward(x[i:i + 1])
        assert solution.result[i] == solo.result[0] == dq.ReturnCode.SUCCESS
        for y, y_i in zip(ys, ys_i):
            assert np.isfinite(y[i]).all()
            np.testing.assert_allclose(y[i], y_i[0], rtol=1e-7, atol=1e-9)


def test_model_gradient_is_the_implicit_gradient_by_default():
    """The default adjoint of a model (state above 50 elements: GMRES) matches a dense float64 solve."""
    model, params, state = contractive_deq("plain")
    x = np.random.default_rng(1).standard_normal((3, WIDTH))
    z, dx, solution = run(model, params, state, x, slice(0, 3))
    W = params["model"]["layer_1"]["layer_1"]["weight"]
    U = params["model"]["layer_1"]["layer_2"]["weight"]
    dy = DY[:3]
    for i in range(3):
        s = 1 - z[i] ** 2
        lam = np.linalg.solve((np.eye(WIDTH) - s[:, None] * W).T, dy[i])
        np.testing.assert_allclose(dx[i], (s * lam) @ U, rtol=1e-7, atol=1e-9)
    assert type(model.adjoint.linear_solver_for(WIDTH)).__name__ == "GMRES"
    assert model.adjoint.rtol == 1e-10 and model.adjoint.max_steps == 200


def test_failed_forward_solve_warns_once_naming_code_and_count():
    model, params, state = contractive_deq("plain")
    model.max_steps = 2
    x = np.random.default_rng(2).standard_normal((3, WIDTH))
    _warn.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            _, state = model(x, params, state)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith(
        "the forward solve of DeepEquilibriumNetwork failed for 3 of 3 samples (MAX_STEPS)")
    assert not state["solution"].success.any() and np.isfinite(state["solution"].z_star).all()


def test_errors_name_what_the_user_passed():
    model, params, state = contractive_deq("plain", width=4)
    with pytest.raises(TypeError, match=r"x has dtype float32 but the parameters are float64: cast x"):
        model(np.ones((2, 4), dtype=np.float32), params, state)
    with pytest.raises(ValueError, match=r"model failed on \(z, x\) with z of shape \(2, 3\) .* x of shape \(2, 3\)"):
        model(np.ones((2, 3)), params, state)
    narrowing = dq.DeepEquilibriumNetwork(nn.WrappedFunction(lambda zx: zx[0][:, :2]), dq.Anderson())
    p2, s2 = nn.setup(np.random.default_rng(0), narrowing)
    with pytest.raises(ValueError, match=r"model returned shape \(2, 2\) but z has shape \(2, 4\).*check x's shape"):
        narrowing(np.ones((2, 4)), p2, s2)
    with pytest.raises(TypeError, match="x has dtype int64"):
        model(np.ones((2, 4), dtype=np.int64), params, state)


torch = pytest.importorskip("torch")
from deqcore.interop import torch as dqt  # noqa: E402


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_torch_adapter_isolates_a_non_finite_sample(seed):
    torch.manual_seed(0)
    f = dqt.example_cell(WIDTH, 5, norm=0.8)
    z0 = torch.zeros(4, WIDTH, dtype=torch.float64)
    layer = dqt.DEQ(f, atol=1e-11, rtol=1e-11, max_steps=300)
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    broken = seed % 4
    with torch.no_grad():
        x[broken, seed % 5] = float("nan")
    c = torch.tensor(rng.standard_normal((4, WIDTH)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        (layer(x, z0) * c).sum().backward()
    assert layer.last_solution.codes[broken] == dq.ReturnCode.DIVERGED
    assert layer.last_adjoint.codes[broken] != dq.ReturnCode.SUCCESS
    for i in set(range(4)) - {broken}:
        xi = x.detach()[i:i + 1].clone().requires_grad_(True)
        zi = layer(xi, z0[:1])
        (zi * c[i:i + 1]).sum().backward()
        assert layer.last_solution.success.all() and layer.last_adjoint.success.all()
        torch.testing.assert_close(x.grad[i:i + 1], xi.grad, rtol=1e-7, atol=1e-9)
