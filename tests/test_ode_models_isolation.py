"""The neural ODE models (``problem_type="ode"``, ``MultiScaleNeuralODE``) integrate their batch as one system with
shared steps: a sample whose input is NaN/inf is held at its start and marked DIVERGED, the others integrate (and
differentiate) as a batch without it; a sample's value agrees with its own solve to the tolerance."""

import warnings

import numpy as np
import pytest

import deqcore as dq
from deqcore import nn

SCALES = ((3,), (2,))
TIGHT = dict(atol=1e-9, rtol=1e-9, max_steps=5000)


def _models():
    f = nn.Chain(nn.Parallel(nn.add, nn.Dense(3, 3, use_bias=False), nn.Dense(3, 3)), nn.Activation("tanh"))
    yield "deq_ode", dq.DeepEquilibriumNetwork(f, dq.Tsit5(), problem_type="ode", **TIGHT)
    main = (nn.Parallel(nn.add, nn.Dense(3, 3, "tanh", use_bias=False), nn.Dense(3, 3, "tanh", use_bias=False)),
            nn.Dense(2, 2, "tanh"))
    mapping = [[nn.NoOpLayer(), nn.Dense(3, 2, "tanh")], [nn.Dense(2, 3, "tanh"), nn.NoOpLayer()]]
    yield "multiscale_ode", dq.MultiScaleNeuralODE(main, mapping, None, dq.Tsit5(), SCALES, **TIGHT)


MODELS = dict(_models())


def _leaves(y):
    return list(y) if isinstance(y, tuple) else [y]


def _loss_grad(model, x, params, state):
    ys, pullback, new_state = nn.vjp(model, x, params, state)
    dx, dparams = pullback(tuple(np.ones_like(y) for y in ys) if isinstance(ys, tuple) else np.ones_like(ys))
    return ys, dx, dparams, new_state["solution"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_nan_sample_is_held_and_diverged_while_the_others_solve_and_differentiate(name):
    model = MODELS[name]
    params, state = nn.setup(np.random.default_rng(0), model)
    x = np.random.default_rng(5).standard_normal((4, 3))
    x[2, 1] = np.nan
    good = [0, 1, 3]
    with pytest.warns(RuntimeWarning, match="DIVERGED"):
        ys, dx, dparams, solution = _loss_grad(model, x, params, state)
    assert solution.result.shape == (4,)
    assert list(solution.result) == [dq.ReturnCode.SUCCESS] * 2 + [dq.ReturnCode.DIVERGED, dq.ReturnCode.SUCCESS]
    assert list(solution.held) == [False, False, True, False]
    # the good samples: their values and their share of the gradient are those of the batch without the NaN sample
    ref_ys, ref_dx, ref_dparams, ref_solution = _loss_grad(model, x[good], params, state)
    assert ref_solution.success.all()
    for a, b in zip(_leaves(ys), _leaves(ref_ys)):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a[good], b, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(dx[good], ref_dx, rtol=1e-6, atol=1e-7)
    assert np.all(dx[2] == 0)
    for a, b in zip(nn.tree_leaves(dparams), nn.tree_leaves(ref_dparams)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_sample_agrees_with_its_own_solve_to_the_tolerance(name):
    # one step size for the batch: a sample's z(t1) moves with its neighbours at the level of the tolerance, not more
    model = MODELS[name]
    params, state = nn.setup(np.random.default_rng(0), model)
    x = np.random.default_rng(5).standard_normal((4, 3)) * np.array([[0.1], [1.0], [3.0], [10.0]])
    ys, new_state = model(x, params, state)
    assert new_state["solution"].success.all() and new_state["solution"].held is None
    for i in range(4):
        solo, _ = model(x[i:i + 1], params, state)
        for a, b in zip(_leaves(ys), _leaves(solo)):
            np.testing.assert_allclose(a[i], b[0], rtol=1e-7, atol=1e-8)


def test_an_ode_model_takes_a_float32_cotangent_of_a_float64_output():
    model = MODELS["deq_ode"]
    params, state = nn.setup(np.random.default_rng(0), model)
    x = np.random.default_rng(1).standard_normal((2, 3))
    y, pullback, _ = nn.vjp(model, x, params, state)
    dx32, dp32 = pullback(np.ones_like(y, dtype=np.float32))
    dx64, dp64 = pullback(np.ones_like(y))
    assert dx32.dtype == np.float64
    np.testing.assert_allclose(dx32, dx64, rtol=1e-12)
    with pytest.raises(ValueError, match=r"dy has shape \(3, 3\)"):
        pullback(np.ones((3, 3)))


def test_held_samples_gradient_matches_finite_differences_of_the_good_samples_loss():
    # the parameter gradient with a NaN sample held is the gradient of the good samples' loss (central differences)
    model = MODELS["deq_ode"]
    params, state = nn.setup(np.random.default_rng(0), model)
    x = np.random.default_rng(7).standard_normal((3, 3))
    x[0, 0] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, _, dparams, _ = _loss_grad(model, x, params, state)
        vec, unravel = nn.ravel(params)
        direction = np.random.default_rng(3).standard_normal(vec.shape)
        h = 1e-5
        loss = lambda v: float(model(x, unravel(v), state)[0][1:].sum())  # noqa: E731
        fd = (loss(vec + h * direction) - loss(vec - h * direction)) / (2 * h)
    np.testing.assert_allclose(nn.ravel(dparams)[0] @ direction, fd, rtol=1e-6)
