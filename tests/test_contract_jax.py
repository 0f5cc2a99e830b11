"""The JAX adapter's contract under ``jax.vmap``: a sample with a non-finite input fails alone (a warning names
the failure, its gradient is non-finite) and its neighbours' values and gradients equal their solo solves; bad
arguments are named."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from deqcore.adjoint import _warn  # noqa: E402
from deqcore.interop import jax as dqj  # noqa: E402

N, M = 52, 3        # 52 state elements: the adjoint runs GMRES


def cell(z, a):
    W, x = a
    return jnp.tanh(W @ z + x[:M].sum() + x)


def solve_one(W, x):
    return dqj.fixed_point(cell, jnp.zeros(N), (W, x), atol=1e-11, rtol=1e-11, max_steps=200, throw=False)


def loss_one(W, x):
    return jnp.sum(jnp.cos(jnp.arange(N)) * solve_one(W, x) ** 2)


solve_batch = jax.jit(jax.vmap(solve_one, in_axes=(None, 0)))
grad_batch = jax.jit(jax.vmap(jax.grad(loss_one, argnums=1), in_axes=(None, 0)))
solve_solo = jax.jit(solve_one)
grad_solo = jax.jit(jax.grad(loss_one, argnums=1))


@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_vmapped_non_finite_sample_fails_alone(seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, N))
    W = jnp.asarray(0.7 * W / np.linalg.norm(W, 2))
    x = rng.standard_normal((4, N))
    broken = seed % 4
    x[broken, seed % N] = np.nan
    x = jnp.asarray(x)

    _warn.reset()                                       # warnings come once per call site
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        z = np.asarray(solve_batch(W, x))
        dx = np.asarray(grad_batch(W, x))
    assert any("failed for 1 of 4 samples" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert not np.isfinite(dx[broken]).all()
    for i in set(range(4)) - {broken}:
        z_i, dx_i = solve_solo(W, x[i]), grad_solo(W, x[i])
        np.testing.assert_allclose(z[i], z_i, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(dx[i], dx_i, rtol=1e-7, atol=1e-9)
        # and the solution is a fixed point (a reference computed another way)
        np.testing.assert_allclose(z_i, cell(z_i, (W, x[i])), atol=1e-9)


def test_bad_arguments_are_named():
    W = jnp.eye(N) * 0.5
    with pytest.raises(TypeError, match="z0"):
        dqj.fixed_point(cell, [0.0] * N, (W, jnp.zeros(N)))
    with pytest.raises(TypeError, match="throw"):
        dqj.fixed_point(cell, jnp.zeros(N), (W, jnp.zeros(N)), throw="no")
    with pytest.raises((TypeError, ValueError), match="f"):
        dqj.fixed_point(lambda z, a: z[:2], jnp.zeros(N), (W, jnp.zeros(N)))
    with pytest.raises(ValueError, match="atol"):
        dqj.fixed_point(cell, jnp.zeros(N), (W, jnp.zeros(N)), atol=-1.0)
