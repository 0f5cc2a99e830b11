"""DEQ models: the reference's examples, fixed points, gradients against finite differences, regularisers."""

import numpy as np
import pytest

import deqcore as dq
from deqcore import nn
from deqcore.models.jacobian import hutchinson_probe, jacobian_loss_gradient


def _deq_layer(width):
    """f((z, x)) = tanh(W z + U x + b)."""
    return nn.Chain(nn.Parallel(nn.add, nn.Dense(width, width, use_bias=False), nn.Dense(width, width)),
                    nn.Activation("tanh"))


def _setup(model, seed=0, contract=("model", "layer_1", "layer_1", "weight"), scale=0.5):
    params, state = nn.setup(np.random.default_rng(seed), model)
    # Make W contractive so the fixed point is unique and the solves are well posed.
    node = params
    for key in contract[:-1]:
        node = node[key]
    W = node[contract[-1]]
    node[contract[-1]] = W * (scale / np.linalg.norm(W, 2))
    return params, state


TIGHT = dict(atol=1e-12, rtol=1e-12, max_steps=5000)
EXACT = dq.SteadyStateAdjoint(linear_solver=dq.LU())


def _fd_gradient(loss, params, eps=1e-6):
    vec, unravel = nn.ravel(params)
    grad = np.zeros_like(vec)
    for i in range(vec.size):
        e = np.zeros_like(vec)
        e[i] = eps
        grad[i] = (loss(unravel(vec + e)) - loss(unravel(vec - e))) / (2 * eps)
    return unravel(grad)


def _fd_input(loss, x, eps=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        grad[idx] = (loss(x + e) - loss(x - e)) / (2 * eps)
    return grad


def _rel_err(a, b):
    a, b = nn.ravel(a)[0], nn.ravel(b)[0]
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _check_gradients(model, params, state, x, tol=1e-5, reference=None, directions=4, **pullback_kw):
    """The pullback's gradient against central differences of <c, y> along random directions in (params, x).

    ``reference`` (default: the model) computes the loss for the differences, e.g. the same model with a
    faster tight solver: the fixed point does not depend on the solver that finds it.
    """
    reference = model if reference is None else reference
    y, pullback, _ = nn.vjp(model, x, params, state)
    rng = np.random.default_rng(5)
    c = tuple(rng.standard_normal(t.shape) for t in y) if isinstance(y, tuple) else rng.standard_normal(y.shape)

    def loss(p, xx):
        out = reference(xx, p, state)[0]
        if isinstance(out, tuple):
            return float(sum(np.sum(a * b) for a, b in zip(out, c)))
        return float(np.sum(out * c))

    dx, dparams = pullback(c, **pullback_kw)
    vec, unravel = nn.ravel(params)
    grad = np.concatenate([nn.ravel(dparams)[0], dx.ravel()])
    assert np.isfinite(grad).all() and np.linalg.norm(grad) > 0
    eps = 1e-6
    for _ in range(directions):
        v = rng.standard_normal(grad.size)
        vx = v[vec.size:].reshape(x.shape)
        fd = (loss(unravel(vec + eps * v[:vec.size]), x + eps * vx)
              - loss(unravel(vec - eps * v[:vec.size]), x - eps * vx)) / (2 * eps)
        assert abs(float(grad @ v) - fd) <= tol * max(1.0, abs(fd)), (float(grad @ v), fd)


# -- the reference's examples --------------------------------------------------------------------------------
def test_reference_example_dense_deq_shape():
    model = dq.DeepEquilibriumNetwork(
        nn.Parallel(nn.add, nn.Dense(2, 2, use_bias=False), nn.Dense(2, 2, use_bias=False)), dq.VCABM3())
    params, state = nn.setup(np.random.default_rng(0), model, dtype=np.float32)
    y, state = model(np.ones((1, 2), np.float32), params, state)
    assert y.shape == (1, 2) and y.dtype == np.float32
    assert isinstance(state["solution"], dq.DeepEquilibriumSolution)


def _multiscale_parts(post=None):
    sizes = (4, 3, 2, 1)
    main = (nn.Parallel(nn.add, nn.Dense(4, 4, "tanh", use_bias=False), nn.Dense(4, 4, "tanh", use_bias=False)),
            nn.Dense(3, 3, "tanh"), nn.Dense(2, 2, "tanh"), nn.Dense(1, 1, "tanh"))
    mapping = [[nn.NoOpLayer() if i == k else nn.Dense(sizes[i], sizes[k], "tanh") for k in range(4)]
               for i in range(4)]
    return main, mapping, ((4,), (3,), (2,), (1,))


def test_reference_example_multiscale_shapes():
    main, mapping, scales = _multiscale_parts()
    model = dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, dq.NewtonRaphson(), scales)
    params, state = nn.setup(np.random.default_rng(0), model, dtype=np.float32)
    x = np.random.default_rng(0).random((12, 4)).astype(np.float32)
    y, state = model(x, params, state)
    assert [a.shape for a in y] == [(12, 4), (12, 3), (12, 2), (12, 1)]


# -- forward ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", [dq.Anderson(), dq.Broyden(), dq.NewtonRaphson(), dq.VCABM3(), dq.Tsit5()],
                         ids=lambda s: type(s).__name__)
def test_output_is_a_fixed_point(solver):
    x = np.random.default_rng(1).standard_normal((4, 3))
    model = dq.DeepEquilibriumNetwork(_deq_layer(3), solver, atol=1e-8, rtol=1e-8, max_steps=300)
    params, state = _setup(model)
    z, state = model(x, params, state)
    fz = model.model((z, x), params["model"], state["model"])[0]
    assert np.abs(fz - z).max() <= 1e-6
    assert bool(np.all(state["solution"].success))


def test_non_convergence_is_recorded_not_raised():
    model = dq.DeepEquilibriumNetwork(_deq_layer(3), dq.FixedPointIteration(), atol=1e-14, rtol=0.0, max_steps=2)
    params, state = _setup(model, scale=0.9)
    with pytest.warns(RuntimeWarning, match=r"failed for 2 of 2 samples \(MAX_STEPS\)"):
        z, state = model(np.ones((2, 3)), params, state)
    assert np.isfinite(z).all()
    assert not np.any(state["solution"].success)


# -- gradients -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", [dq.Anderson(), dq.NewtonRaphson(), dq.VCABM3()], ids=lambda s: type(s).__name__)
def test_deq_gradients_match_finite_differences(solver):
    model = dq.DeepEquilibriumNetwork(_deq_layer(3), solver, adjoint=EXACT, **TIGHT)
    reference = dq.DeepEquilibriumNetwork(_deq_layer(3), dq.NewtonRaphson(), **TIGHT)
    params, state = _setup(model)
    x = np.random.default_rng(2).standard_normal((2, 3))
    _check_gradients(model, params, state, x, reference=reference)


def test_gmres_adjoint_tight_matches_finite_differences():
    adjoint = dq.SteadyStateAdjoint(linear_solver=dq.GMRES(rtol=1e-12, atol=0.0, max_steps=100))
    model = dq.DeepEquilibriumNetwork(_deq_layer(3), dq.Anderson(), adjoint=adjoint, **TIGHT)
    params, state = _setup(model)
    _check_gradients(model, params, state, np.random.default_rng(3).standard_normal((2, 3)))


def test_skip_reg_gradients_match_finite_differences():
    model = dq.SkipDeepEquilibriumNetwork(_deq_layer(3), None, dq.Anderson(), adjoint=EXACT, **TIGHT)
    params, state = _setup(model)
    _check_gradients(model, params, state, np.random.default_rng(4).standard_normal((2, 3)))


def test_skip_deq_init_gets_gradient_through_skip_loss():
    model = dq.SkipDeepEquilibriumNetwork(_deq_layer(3), nn.Dense(3, 3), dq.Anderson(), adjoint=EXACT, **TIGHT)
    params, state = _setup(model)
    x = np.random.default_rng(6).standard_normal((2, 3))
    y, pullback, new_state = nn.vjp(model, x, params, state)
    dx, dparams = pullback(np.zeros_like(y), d_skip_loss=1.0)

    def skip_loss(init_params):
        p = {**params, "init": init_params}
        return model(x, p, state)[1]["solution"].skip_loss

    fd = _fd_gradient(skip_loss, params["init"])
    assert _rel_err(dparams["init"], fd) <= 1e-5


def test_fixed_depth_mode_backpropagates_exactly_through_the_chain():
    model = dq.DeepEquilibriumNetwork(_deq_layer(3), dq.Anderson())
    params, state = _setup(model)
    state = dq.with_fixed_depth(state, 4)
    x = np.random.default_rng(7).standard_normal((2, 3))
    z, new_state = model(x, params, state)
    # Four chained applications from zeros, by hand.
    f = lambda zz: model.model((zz, x), params["model"], state["model"])[0]  # noqa: E731
    expected = np.zeros_like(x)
    for _ in range(4):
        expected = f(expected)
    np.testing.assert_allclose(z, expected, rtol=1e-14)
    assert new_state["solution"].nfev == 5
    _check_gradients(model, params, state, x)


def test_multiscale_gradients_four_scales():
    main, mapping, scales = _multiscale_parts()
    model = dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, dq.Anderson(), scales, adjoint=EXACT, **TIGHT)
    params, state = nn.setup(np.random.default_rng(0), model)
    params = nn.tree_map(lambda a: 0.3 * a, params)    # small weights: a contractive map
    x = np.random.default_rng(8).standard_normal((2, 4))
    _check_gradients(model, params, state, x)


def test_multiscale_jvp_matches_vjp():
    main, mapping, scales = _multiscale_parts()
    ms_map = dq.models.multiscale.MultiScaleMap(main, mapping, None, scales)
    params, state = nn.setup(np.random.default_rng(1), ms_map)
    rng = np.random.default_rng(2)
    z, x = rng.standard_normal((3, 10)), rng.standard_normal((3, 4))
    dz, dx = rng.standard_normal((3, 10)), rng.standard_normal((3, 4))
    dparams = nn.tree_map(lambda a: rng.standard_normal(a.shape), params)
    u = rng.standard_normal((3, 10))
    _, tangent = ms_map.jvp((z, x), params, state, (dz, dx), dparams)
    _, pullback, _ = ms_map.vjp((z, x), params, state)
    (gz, gx), gparams = pullback(u)
    lhs = float(np.sum(u * tangent))
    rhs = float(np.sum(gz * dz) + np.sum(gx * dx) + nn.tree_dot(gparams, dparams))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


def test_multiscale_neural_ode_gradients():
    main, mapping, scales = _multiscale_parts()
    model = dq.MultiScaleNeuralODE(main, mapping, None, dq.Tsit5(), scales, atol=1e-9, rtol=1e-9, max_steps=2000)
    params, state = nn.setup(np.random.default_rng(0), model)
    x = np.random.default_rng(9).standard_normal((2, 4))
    _check_gradients(model, params, state, x, tol=1e-4)


def test_deq_jvp_matches_implicit_vjp():
    model = dq.DeepEquilibriumNetwork(_deq_layer(3), dq.Anderson(), adjoint=EXACT, **TIGHT)
    params, state = _setup(model)
    rng = np.random.default_rng(10)
    x, dx = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    dparams = nn.tree_map(lambda a: rng.standard_normal(a.shape), params)
    u = rng.standard_normal((2, 3))
    _, tangent = nn.jvp(model, x, params, state, dx, dparams)
    _, pullback, _ = nn.vjp(model, x, params, state)
    gx, gparams = pullback(u)
    assert abs(float(np.sum(u * tangent)) - float(np.sum(gx * dx) + nn.tree_dot(gparams, dparams))) <= 1e-8


# -- Jacobian regularisation -----------------------------------------------------------------------------------
def _dense_jacobian_loss(model, params, state, x, z):
    f = lambda zz: model.model((zz, x), params["model"], state["model"])[0]  # noqa: E731
    n = z.shape[1]
    total = 0.0
    for b in range(z.shape[0]):
        J = np.zeros((n, n))
        for j in range(n):
            e = np.zeros_like(z)
            e[b, j] = 1e-6
            J[:, j] = ((f(z + e) - f(z - e)) / 2e-6)[b]
        total += np.sum(J ** 2) / n
    return total / z.shape[0]


@pytest.mark.parametrize("mode", ["forward", "finite_diff", "reverse"])
def test_jacobian_loss_agrees_in_expectation_with_dense_jacobian(mode):
    model = dq.DeepEquilibriumNetwork(_deq_layer(4), dq.Anderson(), jacobian_regularization=mode, **TIGHT)
    params, state = _setup(model, scale=0.8)
    x = np.random.default_rng(11).standard_normal((3, 4))
    estimates = []
    for _ in range(400):
        _, state = model(x, params, state)        # each call draws a new probe (the seed lives in the state)
        estimates.append(state["solution"].jacobian_loss)
    exact = _dense_jacobian_loss(model, params, state, x, state["solution"].z_star)
    assert abs(np.mean(estimates) - exact) <= 4 * np.std(estimates) / np.sqrt(len(estimates)) + 1e-6


def test_jacobian_loss_gradient_matches_finite_differences_at_fixed_z():
    rng = np.random.default_rng(12)
    W, z, eps = rng.standard_normal((3, 3)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3))

    def jac_loss(W_):
        s = 1 - np.tanh(z @ W_.T) ** 2
        return float(np.sum(((eps @ W_.T) * s) ** 2) / z.size)      # ‖J ε‖² / numel with J = diag(s) W

    def pullback_theta_at(zz):
        s = 1 - np.tanh(zz @ W.T) ** 2
        return lambda v: (v * s).T @ zz

    f = lambda zz: np.tanh(zz @ W.T)  # noqa: E731
    jvp_z = lambda v: (1 - f(z) ** 2) * (v @ W.T)  # noqa: E731
    loss, direction, cotangent = hutchinson_probe("forward", z, eps, f(z), f, jvp_z, None)
    assert abs(loss - jac_loss(W)) <= 1e-12
    grad = jacobian_loss_gradient(pullback_theta_at, z, direction, cotangent, 1.0)
    np.testing.assert_allclose(grad, _fd_input(jac_loss, W), rtol=1e-5, atol=1e-8)


# -- bad input -------------------------------------------------------------------------------------------------
def test_bad_scales_and_layer_sizes_are_named():
    main, mapping, scales = _multiscale_parts()
    with pytest.raises(ValueError, match="main_layers must be a tuple of 3"):
        dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, dq.Anderson(), scales[:3])
    with pytest.raises(ValueError, match="scales"):
        dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, dq.Anderson(), ((4,), (0,), (2,), (1,)))
    bad_mapping = [row[:] for row in mapping]
    bad_mapping[0][1] = nn.Dense(4, 5)
    model = dq.MultiScaleDeepEquilibriumNetwork(main, bad_mapping, None, dq.Anderson(), scales)
    params, state = nn.setup(np.random.default_rng(0), model)
    with pytest.raises(ValueError, match="mapping_1_2 returns per-sample shape"):
        model(np.ones((2, 4)), params, state)


def test_bad_settings_are_named():
    f = _deq_layer(2)
    with pytest.raises(ValueError, match="init"):
        dq.DeepEquilibriumNetwork(f, dq.Anderson(), init="random")
    with pytest.raises(ValueError, match="jacobian_regularization"):
        dq.DeepEquilibriumNetwork(f, dq.Anderson(), jacobian_regularization="AutoZygote")
    with pytest.raises(TypeError, match="solver"):
        dq.DeepEquilibriumNetwork(f, "anderson")
    with pytest.raises(TypeError, match="model"):
        dq.DeepEquilibriumNetwork(lambda z: z, dq.Anderson())
    with pytest.raises(ValueError, match="atol"):
        dq.DeepEquilibriumNetwork(f, dq.Anderson(), atol=-1)


def test_trained_skip_deq_needs_fewer_nfe_than_plain_deq():
    from deqcore.demos import digits

    data = digits.load_digits_split(0)
    nfe = {}
    for name, init, weight in (("plain", "zeros", 0.0), ("skip", nn.Dense(32, 32, "tanh"), 1.0)):
        # compared at one absolute tolerance (rtol=0): a relative test scales with each start point
        model = digits.build_classifier(32, dq.Anderson(), init=init, skip_loss_weight=weight, rtol=0.0)
        params, state, _ = digits.train(model, data, epochs=4, lr=2e-2, progress=False)
        _, state = model(data[2], params, nn.testmode(state))
        nfe[name] = state["layer_2"]["solution"].nfev
    assert nfe["skip"] < nfe["plain"], nfe


def test_vanilla_neural_ode_matches_scipy_and_finite_differences():
    import scipy.integrate

    model = dq.DeepEquilibriumNetwork(_deq_layer(3), dq.Tsit5(), problem_type="ode", tspan=(0.0, 2.0), atol=1e-10,
                                      rtol=1e-10, max_steps=5000)
    params, state = _setup(model)
    x = np.random.default_rng(13).standard_normal((2, 3))
    z, _ = model(x, params, state)
    f = lambda zz: model.model((zz.reshape(2, 3), x), params["model"], state["model"])[0].ravel()  # noqa: E731
    ref = scipy.integrate.solve_ivp(lambda t, zz: f(zz) - zz, (0.0, 2.0), np.zeros(6), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(z.ravel(), ref.y[:, -1], atol=1e-8)
    _check_gradients(model, params, state, x, tol=1e-5)
