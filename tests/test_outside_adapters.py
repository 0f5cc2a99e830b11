"""Promises of the torch and JAX adapters and of the Dask front end checked from outside, each against a reference
computed another way (unrolled autograd through many fixed-point iterations, the eager solve of the whole batch):

* torch: ``torch.compile`` of a model holding a DEQ or a TorchLayer runs (the solve is a graph break) and gives the
  eager gradients; a TorchLayer refuses an input whose dtype is not its parameters' (no silent float64 output);
  a DEQ takes a per-sample scalar input x of shape (batch,) with a state z0 of shape (batch, n);
* JAX: an eager vmapped solve that fails after an earlier success of the same shape raises dq.SolveError (JAX
  wraps the callback's error in a ValueError, not a JaxRuntimeError, once the call is cached); f may be an
  unhashable callable (a frozen dataclass holding arrays, as module libraries make them);
* Dask: a y0 with empty chunks (as concatenation leaves them) is solved, each sample as in the eager batched
  solve, a failing one keeping its code; per-sample args of unknown length are named with the remedy.
"""

import numpy as np
import pytest

import deqcore as dq
from deqcore import nn
from tests.helpers import unrolled

# --------------------------------------------------------------------------------------------- torch adapter


def test_torch_compile_runs_the_deq_and_the_torch_layer_with_the_eager_gradients(tc):
    torch, dqt = tc
    torch.manual_seed(0)
    cell = dqt.example_cell(4, 3)
    encoder = torch.nn.Linear(3, 3, dtype=torch.float64)
    layer = dqt.DEQ(cell, atol=1e-12, rtol=0.0, max_steps=200)
    x = torch.randn(5, 3, dtype=torch.float64)

    def loss(x):
        return layer(torch.sin(encoder(x)), torch.zeros(5, 4, dtype=torch.float64)).square().sum()

    params = [*cell.parameters(), *encoder.parameters()]
    value = torch.compile(loss, backend="eager")(x)
    compiled = torch.autograd.grad(value, params)
    reference = torch.autograd.grad(unrolled(cell, torch.sin(encoder(x)), torch.zeros(5, 4, dtype=torch.float64), 200)
                                    .square().sum(), params)
    for a, b in zip(compiled, reference):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0.0)

    model = nn.Dense(3, 2)
    tl = dqt.TorchLayer(model, *nn.setup(np.random.default_rng(0), model))
    xg = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad(torch.compile(lambda x: tl(torch.sin(x)).sum(), backend="eager")(xg), xg)
    (dx_ref,) = torch.autograd.grad(tl(torch.sin(xg)).sum(), xg)
    torch.testing.assert_close(dx, dx_ref, atol=0.0, rtol=0.0)


def test_torch_layer_refuses_an_input_of_another_dtype_than_its_parameters(tc):
    torch, dqt = tc
    model = nn.Dense(3, 2)
    layer64 = dqt.TorchLayer(model, *nn.setup(np.random.default_rng(0), model))
    layer32 = dqt.TorchLayer(model, *nn.setup(np.random.default_rng(0), model, dtype=np.float32))
    with pytest.raises(TypeError, match="x has dtype torch.float32"):
        layer64(torch.ones(4, 3))
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        layer32(torch.ones(4, 3, dtype=torch.float64))
    assert layer32(torch.ones(4, 3)).dtype == torch.float32


# ----------------------------------------------------------------------------------------------- JAX adapter


@pytest.fixture(scope="module")
def jx():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from deqcore.interop import jax as dqj
    return jax, jax.numpy, dqj


def test_jax_eager_vmapped_failure_after_a_success_is_still_a_solve_error(jx):
    jax, jnp, dqj = jx
    f = lambda z, a: jnp.tanh(0.5 * z + a)                     # noqa: E731
    solve = jax.vmap(lambda a: dqj.fixed_point(f, jnp.zeros(3), a, atol=1e-10, rtol=0.0))
    good = jnp.ones((4, 3))
    z = solve(good)                                             # compiles and caches the vmapped callback
    np.testing.assert_allclose(z, np.tanh(0.5 * np.asarray(z) + 1.0), atol=1e-9)
    with pytest.raises(dq.SolveError, match="1 of 4 samples DIVERGED"):
        solve(good.at[1, 0].set(jnp.nan))



def test_jax_f_may_be_an_unhashable_callable_holding_arrays(jx):
    jax, jnp, dqj = jx
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Cell:                                                 # a module-like f: hashing it hashes its arrays
        W: object

        def __call__(self, z, a):
            return jnp.tanh(self.W @ z + a)

    W, a = 0.5 * jnp.eye(2), jnp.array([1.0, -0.5])
    for scale in (1.0, 0.5):     # two f objects, never one's cached solve for both (both engines share the keys)
        cell = Cell(scale * W)
        solve = lambda a: dqj.fixed_point(cell, jnp.zeros(2), a, atol=1e-12, rtol=0.0, engine="host")  # noqa
        z = solve(a)
        np.testing.assert_allclose(z, np.tanh(scale * 0.5 * np.asarray(z) + np.asarray(a)), atol=1e-11)
        dz_da = 1.0 - np.asarray(z) ** 2                       # dz/da of z = tanh(c z + a): s / (1 − c s)
        np.testing.assert_allclose(jax.grad(lambda a: solve(a).sum())(a), dz_da / (1 - scale * 0.5 * dz_da),
                                   atol=1e-9)


# ---------------------------------------------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def dd():
    da = pytest.importorskip("dask.array")
    import deqcore.dask as dqd
    return da, dqd


def test_dask_empty_chunks_are_skipped_and_every_sample_equals_the_eager_solve(dd):
    da, dqd = dd
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 3))
    W *= 0.6 / np.linalg.norm(W, 2)
    X = rng.standard_normal((6, 3))
    X[4, 1] = np.nan                                        # one failing sample, in the last chunk
    fn = lambda z, x, W: np.tanh(z @ W.T + x)               # noqa: E731
    eager = dq.fixed_point(fn, np.zeros((6, 3)), args=(X, W), atol=1e-10, rtol=0.0, batched=True, throw=False)
    y0 = da.zeros((6, 3), chunks=((2, 0, 1, 0, 3), (3,)))   # empty chunks, as concatenation leaves them
    lazy = dqd.fixed_point(fn, y0, args=(da.from_array(X, chunks=4), W), atol=1e-10, rtol=0.0)
    sol = lazy.compute(scheduler="sync")
    assert lazy.num_chunks == 3 and sol.stats["num_chunks"] == 3
    assert sol.result.tolist() == eager.result.tolist() == [0, 0, 0, 0, dq.ReturnCode.DIVERGED, 0]
    ok = [0, 1, 2, 3, 5]
    np.testing.assert_allclose(sol.value[ok], eager.value[ok], atol=1e-14, rtol=0.0)


def test_dask_per_sample_args_of_unknown_length_are_named_with_the_remedy(dd):
    da, dqd = dd
    x = da.ones((8, 2), chunks=4)
    x = x[x[:, 0] == 1]                                     # boolean indexing: unknown chunk sizes
    with pytest.raises(ValueError, match=r"args\[0\].*compute_chunk_sizes"):
        dqd.fixed_point(lambda z, x: 0.5 * np.tanh(z) + x, da.zeros((8, 2), chunks=4), args=(x,))
    z = dqd.fixed_point(lambda z, x: 0.5 * np.tanh(z) + x, da.zeros((8, 2), chunks=4),
                        args=(x.compute_chunk_sizes(),), atol=1e-12, rtol=0.0).compute(scheduler="sync")
    np.testing.assert_allclose(z.value, 0.5 * np.tanh(z.value) + 1.0, atol=1e-11)


def test_torch_per_sample_scalar_input_with_a_vector_state_gives_the_unrolled_gradient(tc):
    torch, dqt = tc
    f = lambda z, x: torch.tanh(0.5 * z + x[:, None])         # noqa: E731  (x: one number per sample)
    x = torch.linspace(-1.0, 1.0, 4, dtype=torch.float64, requires_grad=True)
    z = dqt.DEQ(f, atol=1e-12, rtol=0.0, max_steps=200)(x, torch.zeros(4, 3, dtype=torch.float64))
    (dx,) = torch.autograd.grad(z.square().sum(), x)
    z_ref = unrolled(f, x, torch.zeros(4, 3, dtype=torch.float64), 200)
    (dx_ref,) = torch.autograd.grad(z_ref.square().sum(), x)
    torch.testing.assert_close(z, z_ref, atol=1e-11, rtol=0.0)
    torch.testing.assert_close(dx, dx_ref, atol=1e-10, rtol=0.0)
    with pytest.raises(ValueError, match="x must have shape"):      # z would start as zeros shaped like x: (4,)
        dqt.DEQ(f)(x)
    with pytest.raises(ValueError, match="z0 must have the batch size of x .* shape \\(batch, n, ...\\)"):
        dqt.DEQ(f)(x, torch.zeros(4, dtype=torch.float64))
