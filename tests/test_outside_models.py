"""The multiscale and ODE models' promises checked from outside, on cases the other model tests leave out, each
against a reference computed another way (central finite differences in float64, a dense Jacobian by
differences, the solo solve of each sample):

* the multiscale skip DEQ (a learned initial guess and Skip-Reg, with post-fuse layers): the pullback's
  gradient of ⟨c, y⟩ + w·skip_loss is central differences of that loss with z* held fixed in the skip term
  (README: "the skip loss holds z* fixed, so its gradient reaches u0 only");
* the multiscale Jacobian regulariser in all three modes: its value is mean_b ‖J ε_b‖²/n (‖Jᵀ ε_b‖²/n for
  "reverse") with J the dense Jacobian of the fused map, and its gradient through the pullback the differences of
  that value at fixed z*;
* the multiscale model's forward-mode tangent with parameter tangents against differences of the output;
* an init layer of the wrong width is named as such (it was a reshape error from inside the map).

The neural ODE models' batch (a NaN sample held, per-sample codes, agreement with a sample's own solve) is
checked in tests/test_ode_models_isolation.py.
"""

import warnings

import numpy as np
import pytest

import deqcore as dq
from deqcore import nn

TIGHT = dict(atol=1e-12, rtol=0.0, max_steps=500)
SCALES = ((3,), (2,))


def _parts(post=True):
    main = (nn.Parallel(nn.add, nn.Dense(3, 3, "tanh", use_bias=False), nn.Dense(3, 3, "tanh", use_bias=False)),
            nn.Dense(2, 2, "tanh"))
    mapping = [[nn.NoOpLayer(), nn.Dense(3, 2, "tanh")], [nn.Dense(2, 3, "tanh"), nn.NoOpLayer()]]
    return main, mapping, (nn.Dense(3, 3, "tanh"), nn.Dense(2, 2, "tanh")) if post else None


def _setup(model, scale=0.3):
    params, state = nn.setup(np.random.default_rng(0), model)
    return model, nn.tree_map(lambda a: scale * a, params), state      # small weights: a contractive map


def _directional_check(grad_params, grad_x, params, x, loss, tol, directions=3):
    vec, unravel = nn.ravel(params)
    grad = np.concatenate([nn.ravel(grad_params)[0], grad_x.ravel()])
    rng, h = np.random.default_rng(7), 1e-6
    for _ in range(directions):
        v = rng.standard_normal(grad.size)
        vp, vx = v[:vec.size], v[vec.size:].reshape(x.shape)
        fd = (loss(unravel(vec + h * vp), x + h * vx) - loss(unravel(vec - h * vp), x - h * vx)) / (2 * h)
        assert abs(float(grad @ v) - fd) <= tol * max(1.0, abs(fd)), (float(grad @ v), fd)


@pytest.mark.parametrize("init", ["layer", "skip_reg"])
def test_multiscale_skip_gradient_with_the_skip_loss_matches_differences(init):
    model, params, state = _setup(dq.MultiScaleSkipDeepEquilibriumNetwork(
        *_parts(), nn.Dense(3, 5, "tanh") if init == "layer" else None, dq.Anderson(), SCALES, **TIGHT))
    x = np.random.default_rng(1).standard_normal((2, 3))
    ys, pullback, new_state = nn.vjp(model, x, params, state)
    solution = new_state["solution"]
    assert solution.success.all()
    rng = np.random.default_rng(2)
    c, weight = tuple(rng.standard_normal(y.shape) for y in ys), 0.7
    z_fixed = solution.z_star.copy()

    def u0(p, xx):
        if init == "layer":
            return model.init_layer(xx, p["init"], state["init"])[0]
        return model.model((np.zeros_like(z_fixed), xx), p["model"], state["model"])[0]     # Skip-Reg: f((0, x))

    assert solution.skip_loss == pytest.approx(np.mean((z_fixed - u0(params, x)) ** 2), rel=1e-13)

    def loss(p, xx):
        out = model(xx, p, state)[0]
        return float(sum(np.sum(a * b) for a, b in zip(out, c)) + weight * np.mean((z_fixed - u0(p, xx)) ** 2))

    dx, dparams = pullback(c, d_skip_loss=weight)
    _directional_check(dparams, dx, params, x, loss, 1e-7)


def _dense_jacobian(f, z, b):
    n = z.shape[1]
    J = np.zeros((n, n))
    for j in range(n):
        e = np.zeros_like(z)
        e[b, j] = 1e-5
        J[:, j] = ((f(z + e) - f(z - e)) / 2e-5)[b]
    return J


@pytest.mark.parametrize("mode", ["forward", "finite_diff", "reverse"])
def test_multiscale_jacobian_loss_is_the_dense_estimate_and_its_gradient_matches_differences(mode):
    model, params, state = _setup(dq.MultiScaleDeepEquilibriumNetwork(
        *_parts(), dq.Anderson(), SCALES, jacobian_regularization=mode, **TIGHT))
    x = np.random.default_rng(1).standard_normal((3, 3))
    eps = np.random.default_rng(state["jacobian_seed"]).standard_normal((3, 5))        # the model's probe
    ys, pullback, new_state = nn.vjp(model, x, params, state)
    z = new_state["solution"].z_star

    def loss(p, xx):
        f = lambda zz: model.model((zz, xx), p["model"], state["model"])[0]  # noqa: E731
        total = 0.0
        for b in range(z.shape[0]):
            J = _dense_jacobian(f, z, b)
            total += np.sum(((J.T if mode == "reverse" else J) @ eps[b]) ** 2) / z.shape[1]
        return total / z.shape[0]

    value_tol = 1e-8 if mode == "finite_diff" else 1e-10       # (a one-sided difference of f along ε; else the
    assert abs(new_state["solution"].jacobian_loss - loss(params, x)) <= value_tol     # dense differences' error)
    dx, dparams = pullback(tuple(np.zeros_like(y) for y in ys), d_jacobian_loss=1.0)
    _directional_check(dparams, dx, params, x, loss, 1e-6, directions=2)


@pytest.mark.parametrize("cls", ["multiscale", "multiscale_skip"])
def test_multiscale_jvp_with_parameter_tangents_matches_differences(cls):
    extra = (nn.Dense(3, 5),) if cls == "multiscale_skip" else ()
    kind = dq.MultiScaleSkipDeepEquilibriumNetwork if extra else dq.MultiScaleDeepEquilibriumNetwork
    model, params, state = _setup(kind(*_parts()[:3], *extra, dq.Anderson(), SCALES, **TIGHT))
    rng = np.random.default_rng(3)
    x, dx = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    dparams = nn.tree_map(lambda a: rng.standard_normal(a.shape), params)
    _, tangent = model.jvp(x, params, state, dx, dparams)
    h = 1e-6
    moved = lambda k: nn.tree_map(lambda a, d: a + k * d, params, dparams)  # noqa: E731
    plus, minus = model(x + h * dx, moved(h), state)[0], model(x - h * dx, moved(-h), state)[0]
    for got, p, m in zip(tangent, plus, minus):
        np.testing.assert_allclose(got, (p - m) / (2 * h), rtol=1e-7, atol=1e-8)


def test_multiscale_init_layer_of_the_wrong_width_is_named():
    # the flat state has 3 + 2 = 5 elements; an init layer giving 4 failed deep inside with "cannot reshape array
    # of size 2 into shape (2,2)"
    model = dq.MultiScaleSkipDeepEquilibriumNetwork(*_parts(), nn.Dense(3, 4), dq.Anderson(), SCALES)
    params, state = nn.setup(np.random.default_rng(0), model)
    with pytest.raises(ValueError, match=r"init layer returned shape \(2, 4\).*shape \(2, 5\).*output 5 features"):
        model(np.ones((2, 3)), params, state)
    with pytest.raises(ValueError, match=r"multiscale state z must have shape \(batch, 5\)"):
        model.map.split(np.ones((2, 4)))


def test_convolutional_multiscale_models_gradient_and_nan_isolation_on_nchw_scales():
    # scales (2, 4, 4) and (2, 2, 2): strided and upsampling mappings, GroupNorm after fusion; the gradient against
    # central differences, and a NaN image diverged alone (its neighbour's output equals the solo solve)
    main = (nn.Parallel(nn.add, nn.Conv2d(2, 2, 3, padding=1, activation="tanh", use_bias=False),
                        nn.Conv2d(1, 2, 3, padding=1, activation="tanh")), nn.Conv2d(2, 2, 1, activation="tanh"))
    mapping = [[nn.NoOpLayer(), nn.Conv2d(2, 2, 2, stride=2, activation="tanh")],
               [nn.Chain(nn.Conv2d(2, 2, 1), nn.Upsample(2)), nn.NoOpLayer()]]
    model, params, state = _setup(dq.MultiScaleSkipDeepEquilibriumNetwork(
        main, mapping, (nn.GroupNorm(2, 2), nn.Conv2d(2, 2, 1)), None, dq.Broyden(), ((2, 4, 4), (2, 2, 2)),
        atol=1e-11, rtol=0.0, max_steps=500))
    x = np.random.default_rng(1).standard_normal((2, 1, 4, 4))
    ys, pullback, new_state = nn.vjp(model, x, params, state)
    assert new_state["solution"].success.all() and [y.shape for y in ys] == [(2, 2, 4, 4), (2, 2, 2, 2)]
    c = tuple(np.random.default_rng(2).standard_normal(y.shape) for y in ys)
    dx, dparams = pullback(c)
    _directional_check(dparams, dx, params, x,
                       lambda p, xx: float(sum(np.sum(a * b) for a, b in zip(model(xx, p, state)[0], c))), 1e-7, 2)
    x3 = np.concatenate([x, x[:1]])
    x3[1, 0, 2, 3] = np.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        ys3, state3 = model(x3, params, state)
    assert state3["solution"].result.tolist() == [0, int(dq.ReturnCode.DIVERGED), 0]
    for a, b in zip(ys3, ys):
        np.testing.assert_allclose(a[[0, 2]], b[[0, 0]], rtol=1e-12, atol=1e-14)
