"""The torch and JAX adapters' promises, each checked against a reference computed another way (a dense float64
implicit-function-theorem gradient):

* JAX: values f closes over that an enclosing ``jax.grad`` or ``jax.jit`` traces get the implicit gradient (they
  are arguments of f as much as ``args`` are) on both engines.
"""

import numpy as np
import pytest

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
