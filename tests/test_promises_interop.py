"""The torch and JAX adapters' promises, each checked against a reference computed another way (a dense float64
implicit-function-theorem gradient, an unrolled autograd solve, central finite differences):

* JAX: values f closes over that an enclosing ``jax.grad`` or ``jax.jit`` traces get the implicit gradient (they
  are arguments of f as much as ``args`` are) on both engines, a vmapped one makes each sample its own system,
  and they are refused by name by ``sharded_fixed_point``
  (which needs them in ``args``); ``jit(grad)`` of two chained solves; nested ``vmap``;
* torch: expanded and transposed inputs with ``requires_grad`` on some of them only; a NaN sample fails alone,
  the others' values and gradients unchanged; a forward under ``torch.no_grad``/``inference_mode`` has no graph.
"""

import warnings

import numpy as np
import pytest

from tests.helpers import unrolled

N = 4


def _map(seed=0, norm=0.8):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, N))
    return norm * W / np.linalg.norm(W, 2), rng.standard_normal(N), rng.standard_normal(N)


def _dense(W, b):
    """z* = tanh(W z* + b) in float64, tanh' there, and dz*/db by the implicit function theorem."""
    z = np.zeros(N)
    for _ in range(3000):
        z = np.tanh(W @ z + b)
    d = 1 - z ** 2
    return z, d, np.linalg.solve(np.eye(N) - d[:, None] * W, np.diag(d))


# ---------------------------------------------------------------------------------------------- JAX adapter

@pytest.fixture(scope="module")
def jx():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from deqcore.interop import jax as dqj
    return jax, jax.numpy, dqj


TIGHT = dict(atol=1e-12, rtol=1e-12, max_steps=300)


@pytest.mark.parametrize("engine", ["host", "xla"])
def test_jax_a_weight_f_closes_over_gets_the_implicit_gradient(jx, engine):
    jax, jnp, dqj = jx
    W, b, c = _map(1)
    z, d, _ = _dense(W, b)
    want = np.outer(d * np.linalg.solve((np.eye(N) - d[:, None] * W).T, c), z)        # dL/dW, L = c·z*

    def loss(W_):
        f = lambda z, bb: jnp.tanh(W_ @ z + bb)           # W_ is traced by jax.grad: not one of the args
        return jnp.dot(c, dqj.fixed_point(f, jnp.zeros(N), jnp.asarray(b), engine=engine, **TIGHT))

    grad = jax.grad(loss) if engine == "host" else jax.jit(jax.grad(loss))     # (the host engine: eagerly)
    np.testing.assert_allclose(np.asarray(grad(jnp.asarray(W))), want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("engine", ["host", "xla"])
def test_jax_a_vmapped_value_f_closes_over_makes_each_sample_its_own_system(jx, engine):
    jax, jnp, dqj = jx
    scales = np.array([0.2, 0.6, 1.0])
    W, b, _ = _map(6)
    f_of = lambda s: (lambda z, bb: jnp.tanh(s * jnp.asarray(W) @ z + bb))     # s is the vmapped value
    got = jax.vmap(lambda s: dqj.fixed_point(f_of(s), jnp.zeros(N), jnp.asarray(b), engine=engine, **TIGHT))(
        jnp.asarray(scales))
    np.testing.assert_allclose(np.asarray(got), [_dense(s * W, b)[0] for s in scales], rtol=1e-10, atol=1e-12)


def test_jax_jit_grad_of_two_chained_solves_matches_finite_differences(jx):
    jax, jnp, dqj = jx
    W, b, c = _map(2)
    f = lambda z, a: jnp.tanh(a[0] @ z + a[1])

    def loss(b_):
        z1 = dqj.fixed_point(f, jnp.zeros(N), (jnp.asarray(W), b_), engine="host", **TIGHT)
        return jnp.dot(c, dqj.fixed_point(f, jnp.zeros(N), (jnp.asarray(W), z1), engine="host", **TIGHT))

    def value(b_):
        return c @ _dense(W, _dense(W, b_)[0])[0]

    eps, e = 1e-6, np.eye(N)
    want = [(value(b + eps * e[i]) - value(b - eps * e[i])) / (2 * eps) for i in range(N)]
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(b))), want, rtol=1e-6, atol=1e-8)


def test_jax_nested_vmap_solves_each_sample_as_its_own_system(jx):
    jax, jnp, dqj = jx
    W, _, _ = _map(4)
    B = np.random.default_rng(4).standard_normal((2, 3, N)) * np.array([0.1, 1.0, 5.0])[None, :, None]
    f = lambda z, bb: jnp.tanh(jnp.asarray(W) @ z + bb)
    solve = lambda bb: dqj.fixed_point(f, jnp.zeros(N), bb, engine="host", **TIGHT)
    got = np.asarray(jax.vmap(jax.vmap(solve))(jnp.asarray(B)))
    want = [[_dense(W, B[i, j])[0] for j in range(3)] for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_jax_sharded_solve_refuses_a_traced_value_f_closes_over_by_name(jx):
    jax, jnp, dqj = jx
    mesh = jax.make_mesh((1,), ("b",))
    W, _, _ = _map(5)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, N)))

    def loss(W_):
        f = lambda z, xx: jnp.tanh(W_ @ z + xx)
        return dqj.sharded_fixed_point(f, jnp.zeros_like(x), x, mesh=mesh, **TIGHT).sum()

    with pytest.raises(ValueError, match="closes over .* pass them there, marked None"):
        jax.grad(loss)(jnp.asarray(W))


# -------------------------------------------------------------------------------------------- torch adapter

STEPS = 300   # unrolled iterations of the torch references


def test_torch_expanded_and_transposed_inputs_with_some_requiring_grad(tc):
    torch, dqt = tc
    torch.manual_seed(0)
    f = dqt.example_cell(5, 3, norm=0.8)
    f.W.weight.requires_grad_(False)                         # only U, its bias and the input's base get gradients
    base = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    x = base.expand(4, 3)                                    # stride 0 on the batch axis
    z0 = torch.zeros(5, 4, dtype=torch.float64).t()          # transposed start
    c = torch.randn(4, 5, dtype=torch.float64)
    wrt = (base, f.U.weight, f.U.bias)
    layer = dqt.DEQ(f, atol=1e-12, rtol=1e-12, max_steps=300)
    got = torch.autograd.grad((layer(x, z0) * c).sum(), wrt)
    want = torch.autograd.grad((unrolled(f, x, z0, STEPS) * c).sum(), wrt)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
    assert f.W.weight.grad is None


def test_torch_a_nan_sample_fails_alone_with_the_others_values_and_gradients_unchanged(tc):
    torch, dqt = tc
    torch.manual_seed(1)
    f = dqt.example_cell(5, 3, norm=0.8)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    bad = x.detach().clone()
    bad[1, 0] = float("nan")
    bad.requires_grad_(True)
    z0, c = torch.zeros(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    layer = dqt.DEQ(f, atol=1e-12, rtol=1e-12, max_steps=300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z = layer(bad, z0)                                   # no exception: a warning and a code
        assert layer.last_solution.result.tolist() == [0, 2, 0, 0]          # SUCCESS but DIVERGED for sample 1
        dx, = torch.autograd.grad((z * c).sum(), (bad,))
    assert any("1 of 4 samples (DIVERGED)" in str(w.message) for w in caught)
    ref = unrolled(f, x, z0, STEPS)
    want, = torch.autograd.grad((ref * c).sum(), (x,))
    keep = [0, 2, 3]
    torch.testing.assert_close(z[keep], ref[keep], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dx[keep], want[keep], rtol=1e-9, atol=1e-11)


def test_torch_forward_under_no_grad_and_inference_mode_is_a_fixed_point_without_a_graph(tc):
    torch, dqt = tc
    torch.manual_seed(2)
    f = dqt.example_cell(5, 3)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    layer = dqt.DEQ(f, atol=1e-12, rtol=1e-12, max_steps=300)
    want = unrolled(f, x, torch.zeros(4, 5, dtype=torch.float64), STEPS).detach()
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            z = layer(x, torch.zeros(4, 5, dtype=torch.float64))
        assert not z.requires_grad and z.grad_fn is None
        torch.testing.assert_close(z, want, rtol=1e-10, atol=1e-12)
