"""Promises of the torch and JAX adapters and of the nn training utilities that the other tests leave out,
each checked against a reference computed another way (a dense float64 implicit gradient, central finite
differences, a hand-computed update):

* JAX: ``args`` as any pytree (a dict holding a None leaf and a Python int) on both engines; ``jax.linearize``,
  ``jax.checkpoint`` and a solve inside ``lax.scan``; float32 keeps its dtype; errors name JAX's cast, not
  torch's ``.float()``;
* torch: float16/bfloat16 refused by name (DEQ and TorchLayer); ``batched=False`` on a batch of independent
  rows gives the batched values and gradients; ``z0`` gets no gradient (z* does not depend on it);
  ``state_dict`` round trip and ``copy.deepcopy`` reproduce the layer; a TorchLayer's ``load_state_dict``
  writes into the deqcore parameter tree; a TorchLayer's ``eval()``/``train()`` reach the deqcore state;
* JAX: ``fixed_point_solution`` with a host-only solver does not send the user to the host engine it refuses;
* nn optimisers refuse a gradient whose shape differs from its parameter's, and ``nn.vjp``'s pullback a
  cotangent shaped unlike the output (NumPy would broadcast both into wrong numbers);
* the ``solve`` command refuses options it would ignore (``--problem`` with ``--batch``, ``--width`` without).
"""

import copy
import io

import numpy as np
import pytest

import deqcore as dq
from deqcore import nn

N = 3


def _contraction(seed=0, norm=0.6):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, N))
    return norm * W / np.linalg.norm(W, 2), rng.standard_normal(N), rng.standard_normal((4, N))


def _dense_implicit(W, b, c):
    """z* = tanh(W z* + b) in float64 and dL/db, dL/dW for L = c·z* by the implicit function theorem."""
    z = np.zeros(N)
    for _ in range(2000):
        z = np.tanh(W @ z + b)
    d = 1 - z ** 2
    lam = np.linalg.solve((np.eye(N) - d[:, None] * W).T, c)
    return z, d * lam, np.outer(d * lam, z)


# ---------------------------------------------------------------------------------------------- JAX adapter

@pytest.fixture(scope="module")
def jx():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from deqcore.interop import jax as dqj
    return jax, jax.numpy, dqj


@pytest.mark.parametrize("engine", ["xla", "host"])
def test_jax_args_pytree_with_none_and_int_leaves_gives_the_implicit_gradient(jx, engine):
    jax, jnp, dqj = jx
    W, b, _ = _contraction()
    c = np.array([1.0, -2.0, 0.5])
    z_ref, db_ref, dW_ref = _dense_implicit(W, b, c)
    f = lambda z, a: jnp.tanh(a["W"] @ z + a["k"] * a["b"])          # noqa: E731
    args = {"W": jnp.asarray(W), "b": jnp.asarray(b), "k": 1, "unused": None}

    def loss(a):
        return jnp.dot(jnp.asarray(c), dqj.fixed_point(f, jnp.zeros(N), a, atol=1e-12, rtol=0.0, engine=engine))

    value, grads = jax.value_and_grad(loss, allow_int=True)(args)
    assert abs(float(value) - c @ z_ref) < 1e-10
    np.testing.assert_allclose(grads["b"], db_ref, atol=1e-9)
    np.testing.assert_allclose(grads["W"], dW_ref, atol=1e-9)
    assert grads["unused"] is None


def test_jax_linearize_checkpoint_and_scan_agree_with_the_dense_implicit_derivatives(jx):
    jax, jnp, dqj = jx
    W, b, X = _contraction(seed=1)
    solve = lambda W, x: dqj.fixed_point(lambda z, a: jnp.tanh(a[0] @ z + a[1]), jnp.zeros(N), (W, x),  # noqa
                                         atol=1e-12, rtol=0.0)
    Wj = jnp.asarray(W)
    # linearize: the tangent of z* along db is (I − D W)⁻¹ D db
    d = 1 - _dense_implicit(W, b, np.ones(N))[0] ** 2
    t = np.array([0.3, -1.0, 2.0])
    _, lin = jax.linearize(lambda x: solve(Wj, x), jnp.asarray(b))
    np.testing.assert_allclose(lin(jnp.asarray(t)), np.linalg.solve(np.eye(N) - d[:, None] * W, d * t), atol=1e-9)
    # remat around the solve changes nothing
    g = jax.grad(jax.checkpoint(lambda x: solve(Wj, x).sum()))(jnp.asarray(b))
    np.testing.assert_allclose(g, _dense_implicit(W, b, np.ones(N))[1], atol=1e-9)
    # a solve per scan step: dW is the sum of the per-sample implicit gradients
    dW = jax.grad(lambda W: jax.lax.scan(lambda s, x: (s + solve(W, x).sum(), None), 0.0, jnp.asarray(X))[0])(Wj)
    np.testing.assert_allclose(dW, sum(_dense_implicit(W, x, np.ones(N))[2] for x in X), atol=1e-9)


def test_jax_float32_keeps_its_dtype_and_a_bad_dtype_names_jax_s_cast(jx):
    jax, jnp, dqj = jx
    f = lambda z, a: 0.5 * jnp.cos(z) + a                            # noqa: E731
    a = jnp.float32(1.0)
    z = dqj.fixed_point(f, jnp.zeros((), jnp.float32), a, atol=1e-6, rtol=0.0)
    g = jax.grad(lambda a: dqj.fixed_point(f, jnp.zeros((), jnp.float32), a, atol=1e-6, rtol=0.0))(a)
    assert z.dtype == g.dtype == jnp.float32
    zs = float(z)
    assert abs(zs - (0.5 * np.cos(zs) + 1.0)) < 1e-5
    assert abs(float(g) - 1 / (1 + 0.5 * np.sin(zs))) < 1e-4           # dz*/da = 1 / (1 − f_z)
    for bad in (jnp.zeros(2, jnp.bfloat16), jnp.zeros(2, jnp.int32)):
        with pytest.raises(TypeError, match=r"z0 has dtype .*astype\(jnp.float32\)") as info:
            dqj.fixed_point(f, bad, 1.0)
        assert ".float()" not in str(info.value)


def test_jax_fixed_point_solution_with_a_host_only_solver_does_not_send_the_user_to_the_host_engine(jx):
    jax, jnp, dqj = jx
    f = lambda z, a: 0.5 * jnp.cos(z) + a                            # noqa: E731
    with pytest.raises(ValueError, match="solver=Broyden") as info:
        dqj.fixed_point_solution(f, jnp.zeros(2), jnp.ones(2), dq.Broyden())
    assert "use engine='host'" not in str(info.value)               # the host engine refuses fixed_point_solution
    with pytest.raises(ValueError, match="engine='host' cannot report return codes"):
        dqj.fixed_point_solution(f, jnp.zeros(2), jnp.ones(2), dq.Broyden(), engine="host")


# --------------------------------------------------------------------------------------------- torch adapter

def test_torch_half_precision_is_refused_by_name(tc):
    torch, dqt = tc
    layer = dqt.DEQ(dqt.example_cell(4, 3))
    model = nn.Dense(3, 2)
    params, state = nn.setup(np.random.default_rng(0), model)
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=r"x has dtype (float16|bfloat16).*\.float\(\)"):
            layer(torch.ones(2, 3, dtype=dtype))
        with pytest.raises(TypeError, match=r"x has dtype (float16|bfloat16)"):
            dqt.TorchLayer(model, params, state)(torch.ones(2, 3, dtype=dtype))
    with pytest.raises(TypeError, match=r"params leaf 0 has dtype float16.*astype\(np.float32\)"):
        dqt.TorchLayer(model, {"weight": params["weight"].astype(np.float16), "bias": params["bias"]}, state)


def test_torch_unbatched_solve_of_independent_rows_equals_the_batched_one_and_z0_gets_no_gradient(tc):
    torch, dqt = tc
    torch.manual_seed(0)
    cell = dqt.example_cell(4, 3)
    x = torch.randn(5, 3, dtype=torch.float64)
    results = []
    for batched in (True, False):
        xr = x.clone().requires_grad_(True)
        z0 = torch.zeros(5, 4, dtype=torch.float64, requires_grad=True)
        z = dqt.DEQ(cell, atol=1e-11, rtol=0.0, max_steps=300, batched=batched)(xr, z0)
        (z * torch.arange(20.0, dtype=torch.float64).reshape(5, 4)).sum().backward()
        assert z0.grad is None                                       # z* does not depend on where it started
        results.append((z.detach(), xr.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-9, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-8, rtol=0)
    # and the gradient of x is the finite-difference one
    layer = dqt.DEQ(cell, atol=1e-12, rtol=0.0, max_steps=300)
    w = torch.arange(20.0, dtype=torch.float64).reshape(5, 4)
    e = torch.zeros_like(x)
    e[2, 1] = 1e-6
    z0 = torch.zeros(5, 4, dtype=torch.float64)
    with torch.no_grad():
        fd = ((layer(x + e, z0) * w).sum() - (layer(x - e, z0) * w).sum()) / 2e-6
    assert abs(float(fd) - float(results[0][1][2, 1])) < 1e-6


def test_torch_default_start_of_another_shape_says_to_pass_z0(tc):
    torch, dqt = tc
    layer = dqt.DEQ(dqt.example_cell(4, 3))              # state width 4, input width 3
    with pytest.raises(RuntimeError) as info:
        layer(torch.ones(2, 3, dtype=torch.float64))
    if hasattr(info.value, "add_note"):
        assert "pass z0" in "\n".join(info.value.__notes__)


def test_torch_state_dict_round_trip_and_deepcopy_reproduce_the_layer(tc):
    torch, dqt = tc
    torch.manual_seed(1)
    layer = dqt.DEQ(dqt.example_cell(4, 3), atol=1e-10, rtol=0.0, max_steps=200)
    x = torch.randn(3, 3, dtype=torch.float64)
    z0 = torch.zeros(3, 4, dtype=torch.float64)
    z = layer(x, z0)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    other = dqt.DEQ(dqt.example_cell(4, 3), atol=1e-10, rtol=0.0, max_steps=200)
    other.load_state_dict(torch.load(buffer))
    assert torch.equal(other(x, z0), z) and torch.equal(copy.deepcopy(layer)(x, z0), z)

    model = nn.Dense(3, 2)
    params, state = nn.setup(np.random.default_rng(0), model)
    source = dqt.TorchLayer(model, params, state)
    target_params = nn.setup(np.random.default_rng(1), model)[0]
    target = dqt.TorchLayer(model, target_params, state)
    target.load_state_dict(source.state_dict())
    np.testing.assert_array_equal(target_params["weight"], params["weight"])   # written into the tree in place
    xt = torch.ones(2, 3, dtype=torch.float64)
    torch.testing.assert_close(target(xt), torch.from_numpy(np.ones((2, 3)) @ params["weight"].T + params["bias"]))


def test_torch_layer_eval_and_train_switch_the_deqcore_state(tc):
    torch, dqt = tc
    bn = nn.BatchNorm(2)
    params, state = nn.setup(np.random.default_rng(0), bn)
    layer = dqt.TorchLayer(bn, params, state)
    x = torch.randn(4, 2, dtype=torch.float64) * 3 + 1
    layer.eval()                                    # running statistics (0, 1) used and left alone
    torch.testing.assert_close(layer(x), x / np.sqrt(1 + 1e-5))
    np.testing.assert_array_equal(layer.state["running_mean"], np.zeros(2))
    layer.train()                                   # batch statistics, and the running mean moves towards them
    y = layer(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    np.testing.assert_allclose(layer.state["running_mean"], 0.1 * x.mean(0).numpy())


# ------------------------------------------------------------------------------------------------ optimisers

@pytest.mark.parametrize("opt", [nn.SGD(lr=0.1), nn.SGD(lr=0.1, momentum=0.9), nn.Adam(lr=0.1)])
@pytest.mark.parametrize("bad", [{"w": np.ones((1, 3)), "b": np.ones(1)},      # broadcasts over w's rows
                                 {"w": np.ones((2, 3)), "b": np.ones(3)}])     # would grow b to (3,)
def test_optimisers_refuse_gradients_shaped_unlike_their_parameters(opt, bad):
    params = {"w": np.ones((2, 3)), "b": np.zeros(1)}
    with pytest.raises(ValueError, match=r"grads\['(w|b)'\] has shape"):
        opt.update(bad, opt.init(params), params)
    good = {"w": np.full((2, 3), 2.0), "b": np.ones(1)}
    new, _ = opt.update(good, opt.init(params), params)
    expected_w = 1.0 - 0.1 * (2.0 if isinstance(opt, nn.SGD) else 1.0)   # SGD: lr·g; Adam's first step: lr·sign(g)
    np.testing.assert_allclose(new["w"], np.full((2, 3), expected_w))
    assert new["b"].shape == (1,)


@pytest.mark.parametrize("layer, width", [(nn.Activation("tanh"), 2), (nn.LayerNorm(2), 2), (nn.Dense(3, 2), 3)])
def test_a_pullback_refuses_a_cotangent_shaped_unlike_the_output(layer, width):
    params, state = nn.setup(np.random.default_rng(0), layer)
    x = np.random.default_rng(1).standard_normal((2, width))
    y, pullback, _ = nn.vjp(layer, x, params, state)
    for bad in (np.ones((1, 2)), np.ones((2, 1)), np.ones(2)):   # NumPy would broadcast the first two
        with pytest.raises(ValueError, match=r"dy has shape .* returned shape \(2, 2\)"):
            pullback(bad)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    dx = pullback(dy)[0]
    e = np.zeros_like(x)
    e[1, 0] = 1e-6                                             # central difference of dy·y along x[1, 0]
    fd = (np.sum(dy * layer(x + e, params, state)[0]) - np.sum(dy * layer(x - e, params, state)[0])) / 2e-6
    assert abs(fd - dx[1, 0]) < 1e-7


# ---------------------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("argv, named", [
    (["solve", "--problem", "rosenbrock", "--batch", "10"], "--problem rosenbrock"),   # was solved as the deq map
    (["solve", "--width", "8"], "--width"),                                           # was ignored
    (["solve", "--chunk-size", "5"], "--chunk-size"),
])
def test_cli_solve_refuses_options_it_would_ignore(argv, named, capsys):
    from deqcore.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert named in capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_solve_default_problem_is_still_the_deq_map(capsys):
    from deqcore.cli import main

    assert main(["solve", "--max-steps", "300"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("problem: deq (fixed point") and "converged: 64/64" in out
