"""README promises about DEQ models, gradients, the torch adapter and root solvers under stress, checked on cases
the other test files leave out: the default model gradient against a dense implicit-function-theorem solve for
every root solver, at both state sizes (LU and GMRES paths) and in float32; one-step and phantom gradients
against their linearised definitions; a failed adjoint, a failed jvp tangent solve and a nearly singular dense
adjoint are told, never SUCCESS; the Jacobian regulariser's value and gradient through the pullback in all
three modes; jvp of a neural ODE refused; an empty batch named x; the torch adapter's float32 gradients, its
refusal of double backward and its warning about captured tensors; root solvers on a double root, several
fixed points, an f that raises, max_steps=1 and zero tolerances. References: dense float64 solves, central
finite differences, analytic solutions.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import deqcore as dq
from deqcore import nn
from deqcore.adjoint import _warn


# ----------------------------------------------------------------------------------------------- DEQ models

def _cell(width):
    """f((z, x)) = tanh(W z + U x + b)."""
    return nn.Chain(nn.Parallel(nn.add, nn.Dense(width, width, use_bias=False), nn.Dense(width, width)),
                    nn.Activation("tanh"))


def _model(width, radius, solver, *, cls=dq.DeepEquilibriumNetwork, extra=(), dtype=np.float64, **settings):
    model = cls(_cell(width), *extra, solver, **settings)
    params, state = nn.setup(np.random.default_rng(0), model, dtype=dtype)
    W = params["model"]["layer_1"]["layer_1"]["weight"]
    params["model"]["layer_1"]["layer_1"]["weight"] = (W * radius / np.linalg.norm(W, 2)).astype(dtype)
    return model, params, state


def _weights(params):
    layer = params["model"]["layer_1"]
    return layer["layer_1"]["weight"].astype(np.float64), layer["layer_2"]["weight"].astype(np.float64)


def _implicit_dx(params, z, dy):
    """∂<dy, z*>/∂x per sample by a dense float64 solve: λ = (I − diag(s) W)⁻ᵀ dy, dx = (s ∘ λ) U."""
    W, U = _weights(params)
    out = []
    for zi, gi in zip(z.astype(np.float64), dy.astype(np.float64)):
        s = 1.0 - zi ** 2
        lam = np.linalg.solve((np.eye(zi.size) - s[:, None] * W).T, gi)
        out.append((s * lam) @ U)
    return np.array(out)


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


ROOT_SOLVERS = [dq.Anderson(), dq.Broyden(), dq.LimitedMemoryBroyden(), dq.NewtonRaphson(), dq.TrustRegion(),
                dq.FixedPointIteration()]


@pytest.mark.parametrize("width", [4, 60], ids=["lu", "gmres"])
@pytest.mark.parametrize("solver", ROOT_SOLVERS, ids=lambda s: type(s).__name__)
def test_default_model_gradient_is_accurate_to_the_forward_tolerance(solver, width):
    # README: the default adjoint solves to the forward solve's tolerance, in every model; at or below 50 state
    # elements a dense LU, above it iteration + GMRES. Reference: the exact implicit gradient at the returned z*.
    tol = 1e-6
    model, params, state = _model(width, 0.9, solver, atol=tol, rtol=tol, max_steps=200)
    x = np.random.default_rng(1).standard_normal((3, width))
    z, pullback, state = nn.vjp(model, x, params, state)
    dy = np.random.default_rng(2).standard_normal(z.shape)
    dx, _ = pullback(dy)
    solution = state["solution"]
    assert solution.success.all() and solution.adjoint.success.all()
    assert _rel(dx, _implicit_dx(params, z, dy)) <= 10 * tol


@pytest.mark.parametrize("solver", [dq.Anderson(), dq.Broyden(), dq.NewtonRaphson(), dq.VCABM3()],
                         ids=lambda s: type(s).__name__)
def test_float32_model_gradient_is_float32_and_accurate(solver):
    model, params, state = _model(60, 0.9, solver, dtype=np.float32, atol=1e-5, rtol=1e-5, max_steps=200)
    x = np.random.default_rng(1).standard_normal((3, 60)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "rtol=1e-05 is below what float32 resolves")     # the ODE step control
        z, pullback, state = nn.vjp(model, x, params, state)
    dy = np.random.default_rng(2).standard_normal(z.shape).astype(np.float32)
    dx, dparams = pullback(dy)
    assert z.dtype == dx.dtype == nn.ravel(dparams)[0].dtype == np.float32
    assert state["solution"].success.all() and state["solution"].adjoint.success.all()
    assert _rel(dx, _implicit_dx(params, z, dy)) <= 1e-4


@pytest.mark.parametrize("adjoint", [dq.OneStepGradient(), dq.PhantomGradient(steps=1, damping=1.0),
                                     dq.PhantomGradient(steps=5, damping=0.5),
                                     dq.PhantomGradient(steps=200, damping=1.0)], ids=repr)
def test_one_step_and_phantom_gradients_are_their_definitions(adjoint):
    # phantom: k damped steps z ← (1−α) z + α f(z) from z*, backpropagated: λ = α Σ_{j<k} Mᵀʲ g with
    # M = (1−α) I + α J (z stays at z*); one step: λ = g. Both then give dx = (s ∘ λ) U.
    width = 5
    model, params, state = _model(width, 0.8, dq.Anderson(), adjoint=adjoint, atol=1e-13, rtol=0.0, max_steps=300)
    x = np.random.default_rng(1).standard_normal((3, width))
    z, pullback, state = nn.vjp(model, x, params, state)
    dy = np.random.default_rng(2).standard_normal(z.shape)
    dx, _ = pullback(dy)
    W, U = _weights(params)
    steps, alpha = (1, 1.0) if isinstance(adjoint, dq.OneStepGradient) else (adjoint.steps, adjoint.damping)
    for i in range(3):
        s = 1.0 - z[i] ** 2
        M = (1 - alpha) * np.eye(width) + alpha * s[:, None] * W
        lam = alpha * sum(np.linalg.matrix_power(M.T, j) @ dy[i] for j in range(steps))
        np.testing.assert_allclose(dx[i], (s * lam) @ U, rtol=1e-10, atol=1e-12)
    if adjoint == dq.PhantomGradient(steps=200, damping=1.0):          # many undamped steps: the exact gradient
        np.testing.assert_allclose(dx, _implicit_dx(params, z, dy), rtol=1e-9, atol=1e-11)


def test_a_model_adjoint_that_fails_is_told_and_recorded():
    # README: an adjoint that does not converge keeps its code in state["solution"].adjoint and warns
    model, params, state = _model(60, 1.5, dq.Anderson(), atol=1e-10, rtol=0.0, max_steps=200,
                                  adjoint=dq.SteadyStateAdjoint(max_steps=3))
    x = np.random.default_rng(1).standard_normal((3, 60))
    _warn.reset()
    with pytest.warns(RuntimeWarning, match=r"the adjoint solve failed for 3 of 3 samples \(MAX_STEPS\)"):
        z, pullback, state = nn.vjp(model, x, params, state)
        pullback(np.ones_like(z))
    assert state["solution"].success.all()
    assert (state["solution"].adjoint.result == int(dq.ReturnCode.MAX_STEPS)).all()


def test_skip_deq_jvp_with_parameter_tangents_matches_finite_differences():
    model, params, state = _model(4, 0.9, dq.Anderson(), cls=dq.SkipDeepEquilibriumNetwork, extra=(nn.Dense(4, 4),),
                                  atol=1e-12, rtol=0.0, max_steps=300)
    rng = np.random.default_rng(3)
    x, dx = rng.standard_normal((1, 4)), rng.standard_normal((1, 4))          # a batch of one
    dparams = nn.tree_map(lambda a: rng.standard_normal(a.shape), params)
    _, tangent = model.jvp(x, params, state, dx, dparams)
    eps = 1e-6
    shifted = lambda e: nn.tree_map(lambda a, b: a + e * b, params, dparams)  # noqa: E731
    fd = (model(x + eps * dx, shifted(eps), state)[0] - model(x - eps * dx, shifted(-eps), state)[0]) / (2 * eps)
    np.testing.assert_allclose(tangent, fd, rtol=1e-7, atol=1e-8)



@pytest.mark.parametrize("mode", ["forward", "finite_diff", "reverse"])
def test_jacobian_loss_value_and_gradient_through_the_model_pullback(mode):
    # README: jacobian_regularization=mode, d_jacobian_loss=weight trains through the loss; the loss is
    # mean_b ‖J ε_b‖²/n ("reverse": ‖Jᵀ ε_b‖²/n) with J = diag(s) W at z*, its gradient taken with z* held fixed.
    # Reference: that formula in closed form, and central differences of it in (params, x).
    width = 4
    model, params, state = _model(width, 0.8, dq.Anderson(), jacobian_regularization=mode, atol=1e-12, rtol=0.0,
                                  max_steps=300)
    x = np.random.default_rng(1).standard_normal((3, width))
    eps = np.random.default_rng(state["jacobian_seed"]).standard_normal(x.shape)     # the model's probe
    z, pullback, state = nn.vjp(model, x, params, state)

    def loss(p, xx):
        layer = p["model"]["layer_1"]
        W, U, b = layer["layer_1"]["weight"], layer["layer_2"]["weight"], layer["layer_2"]["bias"]
        s = 1.0 - np.tanh(z @ W.T + xx @ U.T + b) ** 2
        u = (eps * s) @ W if mode == "reverse" else (eps @ W.T) * s
        return float(np.sum(u ** 2) / z.size)

    value_tol = 1e-8 if mode == "finite_diff" else 1e-13     # a one-sided difference of f along ε
    assert abs(state["solution"].jacobian_loss - loss(params, x)) <= value_tol
    weight = 0.7
    dx, dparams = pullback(np.zeros_like(z), d_jacobian_loss=weight)
    vec, unravel = nn.ravel(params)
    rng, h = np.random.default_rng(3), 1e-6
    for _ in range(3):
        v, vx = rng.standard_normal(vec.size), rng.standard_normal(x.shape)
        fd = (loss(unravel(vec + h * v), x + h * vx) - loss(unravel(vec - h * v), x - h * vx)) / (2 * h)
        assert abs(float(nn.ravel(dparams)[0] @ v + np.sum(dx * vx)) - weight * fd) <= 1e-7 * max(1.0, abs(fd))



def test_dense_adjoint_on_a_nearly_singular_system_is_a_failure_not_success():
    # f(z) = A z + θ with A u = u for a unit vector u (up to rounding): I − Aᵀ is singular, so λ cannot meet the
    # adjoint's test for a generic g. LU's pivots stay above eps there, and the adjoint said SUCCESS with a
    # residual of the order of g; the residual is now held to the adjoint's tolerance. Row 0 is well posed.
    from deqcore.adjoint.steady_state import FixedPointVJP

    rng = np.random.default_rng(0)
    B, n = 4, 6
    A = 0.3 * rng.standard_normal((B, n, n))
    for i in range(1, B):
        u = rng.standard_normal(n)
        u /= np.linalg.norm(u)
        A[i] -= np.outer(A[i] @ u - u, u)                   # now A[i] u = u
    theta, g = rng.standard_normal((B, n)), rng.standard_normal((B, n))
    problem = FixedPointVJP(np.zeros((B, n)), lambda z: (np.einsum("bij,bj->bi", A, z) + theta,
                                                         lambda v: (np.einsum("bij,bi->bj", A, v), v)), batched=True)
    for adjoint in (dq.SteadyStateAdjoint(), dq.SteadyStateAdjoint(dq.LU())):     # n = 6: the default is LU too
        _warn.reset()
        with pytest.warns(RuntimeWarning, match=r"the adjoint solve failed for 3 of 4 samples"):
            _, info = adjoint.gradient(problem, g)
        lam = info.lam
        residual = np.linalg.norm(g - lam + np.einsum("bij,bi->bj", A, lam), axis=1) / np.linalg.norm(g, axis=1)
        assert info.result[0] == int(dq.ReturnCode.SUCCESS)
        np.testing.assert_allclose(lam[0], np.linalg.solve(np.eye(n) - A[0].T, g[0]), rtol=1e-12)
        assert (info.result[1:] == int(dq.ReturnCode.LINEAR_SOLVE_FAILED)).all() and (residual[1:] > 1e-5).all()



@pytest.mark.parametrize("solver", [dq.Anderson(), dq.VCABM3()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("init", ["zeros", "one_step"])
def test_an_empty_batch_is_named_x_by_every_model(solver, init):
    # README: bad arguments raise ValueError naming the argument; the models named the solver's internal y0
    model = dq.DeepEquilibriumNetwork(_cell(3), solver, init=init)
    params, state = nn.setup(np.random.default_rng(0), model)
    with pytest.raises(ValueError, match=r"x must have at least one sample and element, got shape \(0, 3\)"):
        model(np.zeros((0, 3)), params, state)
    main = (nn.Parallel(nn.add, nn.Dense(3, 3, "tanh", use_bias=False), nn.Dense(3, 3, "tanh", use_bias=False)),
            nn.Dense(2, 2, "tanh"))
    mapping = [[nn.NoOpLayer() if i == k else nn.Dense((3, 2)[i], (3, 2)[k]) for k in range(2)] for i in range(2)]
    multiscale = dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, solver, ((3,), (2,)))
    params, state = nn.setup(np.random.default_rng(0), multiscale)
    with pytest.raises(ValueError, match="x must have at least one sample"):
        multiscale(np.zeros((0, 3)), params, state)



def test_jvp_of_a_neural_ode_model_is_refused_not_the_steady_state_tangent():
    # problem_type="ode" outputs z(t1); jvp solved the steady-state tangent (I − ∂f/∂z) dz = ∂f/∂x dx instead,
    # off by O(1) from central differences of z(t1). It now raises; the reverse mode still matches differences.
    model = dq.DeepEquilibriumNetwork(_cell(3), dq.Tsit5(), problem_type="ode", atol=1e-10, rtol=1e-10,
                                      max_steps=10000)
    params, state = nn.setup(np.random.default_rng(0), model)
    rng = np.random.default_rng(1)
    x, dx, dy = rng.standard_normal((2, 3)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    with pytest.raises(NotImplementedError, match="problem_type='ode'.*use nn.vjp"):
        model.jvp(x, params, state, dx)
    z, pullback, _ = nn.vjp(model, x, params, state)
    gx, _ = pullback(dy)
    eps = 1e-6
    fd = np.sum(dy * (model(x + eps * dx, params, state)[0] - model(x - eps * dx, params, state)[0])) / (2 * eps)
    assert abs(np.sum(gx * dx) - fd) <= 1e-6 * max(1.0, abs(fd))



def test_a_failed_tangent_solve_in_jvp_is_told():
    # f((z, x)) = W z + U x with W = diag(1, 0.5): at x = 0 the forward solve succeeds at z* = 0, but
    # (I − W) dz = U dx has no solution when (U dx)_0 ≠ 0; jvp returned GMRES's last iterate without a word
    f = nn.Parallel(nn.add, nn.Dense(2, 2, use_bias=False), nn.Dense(2, 2, use_bias=False))
    model = dq.DeepEquilibriumNetwork(f, dq.Anderson(), atol=1e-10, rtol=0.0)
    params, state = nn.setup(np.random.default_rng(0), model)
    params["model"]["layer_1"]["weight"] = np.diag([1.0, 0.5])
    params["model"]["layer_2"]["weight"] = np.eye(2)
    dx = np.array([[1.0, 1.0], [0.0, 1.0]])                   # sample 1: (U dx)_0 = 0, solvable: dz = (0, 2)
    _warn.reset()
    with pytest.warns(RuntimeWarning, match=r"the tangent solve of DeepEquilibriumNetwork.jvp failed for 1 of 2"):
        _, tangent = model.jvp(np.zeros((2, 2)), params, state, dx)
    np.testing.assert_allclose(tangent[1], [0.0, 2.0], atol=1e-9)


# --------------------------------------------------------------------------------------------- torch adapter

def _dense_torch_lambda(torch, cell, z, x, g):
    """λ = (I − ∂f/∂z)⁻ᵀ g per sample, in float64."""
    lams = []
    for i in range(z.shape[0]):
        J = torch.autograd.functional.jacobian(lambda zz: cell(zz[None], x[i:i + 1])[0], z[i])
        lams.append(torch.linalg.solve((torch.eye(z.shape[1], dtype=z.dtype) - J).T, g[i]))
    return torch.stack(lams)


@pytest.mark.parametrize("width", [4, 60], ids=["lu", "gmres"])
def test_torch_float32_gradient_matches_a_float64_implicit_solve(width):
    torch = pytest.importorskip("torch")
    from deqcore.interop import torch as dqt

    torch.manual_seed(0)
    cell = dqt.example_cell(width, 3, norm=0.9, dtype=torch.float32)
    x = torch.randn(3, 3, dtype=torch.float32, requires_grad=True)
    layer = dqt.DEQ(cell, atol=1e-5, rtol=1e-5, max_steps=200)
    z = layer(x, torch.zeros(3, width, dtype=torch.float32))
    g = torch.randn_like(z)
    z.backward(g)
    assert x.grad.dtype == torch.float32 and cell.W.weight.grad.dtype == torch.float32
    assert layer.last_solution.success.all() and layer.last_adjoint.success.all()
    cell64 = dqt.example_cell(width, 3)
    cell64.load_state_dict({k: v.double() for k, v in cell.state_dict().items()})
    z64, x64 = z.detach().double(), x.detach().double().requires_grad_(True)
    lam = _dense_torch_lambda(torch, cell64, z64, x64.detach(), g.double())
    want = torch.autograd.grad(cell64(z64, x64), x64, lam)[0]
    assert ((x.grad.double() - want).abs().max() / want.abs().max()).item() <= 1e-4


def test_torch_double_backward_is_refused_not_silently_zero():
    # torch's once_differentiable leaves the gradient of a loss linear in z without a graph, so a penalty on it
    # (create_graph=True) lost its second-order terms silently; the adapters now refuse on the second backward
    torch = pytest.importorskip("torch")
    from deqcore.interop import torch as dqt

    torch.manual_seed(0)
    layer = dqt.DEQ(dqt.example_cell(3, 3), atol=1e-12, rtol=0.0, max_steps=200)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    (plain,) = torch.autograd.grad(layer(x).sum(), x)
    for make_loss in (lambda z: z.sum(), lambda z: z.square().sum()):
        (gx,) = torch.autograd.grad(make_loss(layer(x)), x, create_graph=True)
        assert gx.requires_grad
        with pytest.raises(RuntimeError, match="differentiable once"):
            gx.square().sum().backward()
    (gx,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    torch.testing.assert_close(gx.detach(), plain, rtol=0, atol=0)      # first-order values unchanged

    model = nn.Chain(nn.Dense(3, 3), nn.Activation("tanh"))
    params, state = nn.setup(np.random.default_rng(0), model)
    torch_layer = dqt.TorchLayer(model, params, state)
    (gx,) = torch.autograd.grad(torch_layer(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        gx.square().sum().backward()



def test_torch_tensors_captured_by_f_are_named_not_silently_left_without_gradient():
    # DEQ docstring: tensors captured by a plain function get no gradient. That is now said once, at the first
    # backward pass; a module's registered parameters (also tied ones, used twice) get the unrolled gradient.
    torch = pytest.importorskip("torch")
    from deqcore.interop import torch as dqt

    torch.manual_seed(0)
    W = (0.3 * torch.randn(3, 3, dtype=torch.float64)).requires_grad_(True)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    layer = dqt.DEQ(lambda z, x: torch.tanh(z @ W.T + x), atol=1e-12, rtol=0.0, max_steps=200)
    with pytest.warns(RuntimeWarning, match=r"f uses 1 tensor\(s\) that require grad \(shapes \(3, 3\)\)"):
        layer(x).sum().backward()
    assert W.grad is None and x.grad is not None

    class Tied(torch.nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.W = torch.nn.Parameter(weight.detach().clone())

        def forward(self, z, x):
            return torch.tanh(z @ self.W.T + x @ self.W)

    tied = Tied(W)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dqt.DEQ(tied, atol=1e-12, rtol=0.0, max_steps=200)(x.detach()).sum().backward()
    W2, z = W.detach().clone().requires_grad_(True), torch.zeros(2, 3, dtype=torch.float64)
    for _ in range(200):
        z = torch.tanh(z @ W2.T + x.detach() @ W2)
    z.sum().backward()
    torch.testing.assert_close(tied.W.grad, W2.grad, rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------------------------- root solvers, stress

@pytest.mark.parametrize("solver", [None] + ROOT_SOLVERS[:5], ids=lambda s: type(s).__name__)
def test_a_double_root_is_reached_and_passes_the_test(solver):
    # y² = 0: the Jacobian is singular at the root, so Newton-type methods converge only linearly
    sol = dq.root_find(lambda y: y ** 2, np.ones(2), solver, atol=1e-10, rtol=0.0, max_steps=200, throw=False)
    assert sol.success
    assert np.abs(sol.value ** 2).max() <= 1e-10 and sol.residual == np.abs(sol.value ** 2).max()


@pytest.mark.parametrize("solver", ROOT_SOLVERS[:5], ids=lambda s: type(s).__name__)
def test_several_fixed_points_each_sample_reaches_its_own_and_equals_its_solo_solve(solver):
    # z = z³ has the fixed points 0 and ±1 (the latter repelling for plain iteration)
    y0 = np.array([[0.3], [0.99], [-1.2], [1.05]])
    batch = dq.fixed_point(lambda z: z ** 3, y0, solver, atol=1e-10, rtol=0.0, batched=True, max_steps=100,
                           throw=False)
    assert batch.success.all()
    assert (np.abs(batch.value ** 3 - batch.value).max(axis=1) <= 1e-10).all()
    np.testing.assert_allclose(np.abs(batch.value[:, 0]), [0.0, 1.0, 1.0, 1.0], atol=1e-9)
    for i in range(4):
        solo = dq.fixed_point(lambda z: z ** 3, y0[i:i + 1], solver, atol=1e-10, rtol=0.0, batched=True,
                              max_steps=100, throw=False)
        np.testing.assert_allclose(solo.value, batch.value[i:i + 1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("solver", ROOT_SOLVERS, ids=lambda s: type(s).__name__)
def test_an_exception_raised_by_f_mid_solve_propagates(solver):
    class Boom(Exception):
        pass

    calls = []

    def f(z):
        calls.append(1)
        if len(calls) == 4:
            raise Boom("raised on the fourth call")
        return 0.9 * np.cos(z)

    with pytest.raises(Boom):
        dq.fixed_point(f, np.zeros(3), solver, atol=1e-12, rtol=0.0, throw=False)


@pytest.mark.parametrize("solver", ROOT_SOLVERS, ids=lambda s: type(s).__name__)
def test_max_steps_one_and_zero_tolerances(solver):
    g = lambda z: 0.5 * np.cos(z)                                    # noqa: E731
    one = dq.fixed_point(g, np.zeros((2, 3)), solver, atol=1e-9, rtol=0.0, max_steps=1, batched=True, throw=False)
    assert (one.result == int(dq.ReturnCode.MAX_STEPS)).all() and one.stats["num_steps"] == 1
    np.testing.assert_allclose(one.residual, np.abs(g(one.value) - one.value).max(axis=1), rtol=1e-6)
    assert (one.residual < 0.5).all()                                # better than the start (residual 0.5)
    with pytest.raises(ValueError, match="max_steps"):
        dq.fixed_point(g, np.zeros(3), solver, max_steps=0)
    # atol = rtol = 0: SUCCESS only for an exact fixed point in floating point, else a failure code
    exact = dq.fixed_point(g, np.zeros((2, 3)), solver, atol=0.0, rtol=0.0, max_steps=100, batched=True,
                           throw=False)
    ok = exact.result == int(dq.ReturnCode.SUCCESS)
    assert (np.abs(g(exact.value) - exact.value).max(axis=1)[ok] == 0.0).all()
    np.testing.assert_allclose(exact.value, 0.4501836112948736, rtol=1e-12)     # z = cos(z)/2
