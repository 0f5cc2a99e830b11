"""README promises of the root/fixed-point side, checked on cases the other test files leave out: the counts in
``sol.stats`` against the calls the user's ``fn`` and ``jac`` actually received, arrays of an ndarray subclass
returned by ``fn``, per-sample isolation of a non-finite start under ``jax.vmap`` on the host engine, and
gradients of the torch adapter under ``torch.func.functional_call``. References: counters kept by the test's own
callables, the same solve on plain arrays, the XLA engine, dense implicit solves and central differences.
"""

from __future__ import annotations

import numpy as np
import pytest

import deqcore as dq


class _Counted:
    """A callable that counts its calls."""

    def __init__(self, call):
        self.call, self.calls = call, 0

    def __call__(self, *a):
        self.calls += 1
        return self.call(*a)


# ------------------------------------------------------------------------------------------ stats


@pytest.mark.parametrize("solver", [dq.NewtonRaphson(), dq.TrustRegion(), None], ids=["newton", "trust", "default"])
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_njev_and_nfev_are_the_calls_fn_and_jac_received(solver, batched):
    # stats count what the user's callables cost: the argument check's call of jac at y0 is one of them (it was
    # made, then thrown away, and left out of njev)
    def jac_one(y):
        return np.diag(3.0 * y ** 2)

    fn = _Counted(lambda y: y ** 3 - 2.0)
    jac = _Counted(lambda y: np.stack([jac_one(r) for r in y]) if batched else jac_one(y))
    y0 = np.ones((2, 3)) if batched else np.ones(3)
    sol = dq.root_find(fn, y0, solver, jac=jac, batched=batched, atol=1e-12, rtol=0.0)
    assert np.all(sol.success)
    np.testing.assert_allclose(sol.value, 2.0 ** (1 / 3), rtol=1e-12)
    assert (sol.stats["nfev"], sol.stats["njev"]) == (fn.calls, jac.calls)


# ------------------------------------------------------------------------------------------ fn's output


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("entry", [dq.root_find, dq.fixed_point], ids=["root_find", "fixed_point"])
@pytest.mark.parametrize("subclass", [np.asmatrix, np.ma.asarray], ids=["matrix", "masked"])
@pytest.mark.parametrize("solver", [dq.Anderson(), dq.Broyden(), dq.NewtonRaphson()], ids=["anderson", "broyden",
                                                                                          "newton"])
def test_an_ndarray_subclass_returned_by_fn_solves_like_the_plain_array(entry, subclass, solver):
    # np.matrix passes the kind check (an ndarray) and then reached the compiled kernels, which failed with Numba's
    # TypingError; its values are those of the plain array, so the solve must be that of the plain array
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 3))
    W *= 0.5 / np.linalg.norm(W, 2)
    x = rng.standard_normal((2, 3))
    plain = (lambda z: np.tanh(z @ W.T + x)) if entry is dq.fixed_point else (lambda z: np.tanh(z @ W.T + x) - z)
    expected = entry(plain, np.zeros((2, 3)), solver, atol=1e-12, rtol=0.0, batched=True)
    sol = entry(lambda z: subclass(plain(np.asarray(z))), np.zeros((2, 3)), solver, atol=1e-12, rtol=0.0, batched=True)
    assert type(sol.value) is np.ndarray and sol.success.all()
    np.testing.assert_array_equal(sol.value, expected.value)


# ------------------------------------------------------------------------------------------ JAX adapter


def test_jax_host_engine_under_vmap_isolates_a_non_finite_start_as_the_xla_engine_does():
    # each mapped sample is its own system: a NaN start is that sample's DIVERGED; the host engine raised for the
    # whole batch instead (the engine's "y0 contains NaN" ValueError inside JAX's callback error, throw=False too)
    import warnings

    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from deqcore.interop import jax as dqj

    f = lambda z, a: 0.5 * jnp.cos(z) + a                              # noqa: E731
    z0 = jnp.array([[0.0, 0.0], [jnp.nan, 0.0], [0.0, 0.0]], dtype=jnp.float32)
    a = jnp.array([[1.0, 2.0], [1.0, 1.0], [-1.0, 0.5]], dtype=jnp.float32)
    solve = jax.vmap(lambda z, a: dqj.fixed_point(f, z, a, atol=1e-6, rtol=0.0, throw=False, engine="host"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host = solve(z0, a)
    assert any("1 of 3" in str(w.message) and "DIVERGED" in str(w.message) for w in caught)
    assert not np.isfinite(np.asarray(host[1])).all()             # its start, as the XLA engine returns it
    for i in (0, 2):
        alone = dqj.fixed_point(f, z0[i], a[i], atol=1e-6, rtol=0.0, engine="host")
        np.testing.assert_allclose(np.asarray(host[i]), np.asarray(alone), rtol=0, atol=1e-6)
    with pytest.raises(dq.SolveError, match="1 of 3 samples DIVERGED"):
        jax.vmap(lambda z, a: dqj.fixed_point(f, z, a, atol=1e-6, rtol=0.0, engine="host"))(z0, a)
    # the gradient of the finite samples is theirs alone: d z*/d a = 1 / (1 + 0.5 sin z*)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)            # (the NaN sample's adjoint fails, and says so)
        grad = jax.grad(lambda a: solve(z0, a)[jnp.array([0, 2])].sum())(a)
    z = np.asarray(host)[[0, 2]]
    np.testing.assert_allclose(np.asarray(grad)[[0, 2]], 1 / (1 + 0.5 * np.sin(z)), rtol=1e-4)


# ------------------------------------------------------------------------------------------ torch adapter


def test_torch_gradient_under_functional_call_reaches_the_tensors_it_was_called_with():
    # torch.func.functional_call (ensembles, meta-learning) swaps f's parameters for the call only: the backward
    # pass, which runs after the call, evaluated f with the module's own parameters and gave the swapped-in
    # tensors no gradient (None, with a warning calling them captured tensors)
    torch = pytest.importorskip("torch")
    from deqcore.interop import torch as dqt

    torch.manual_seed(0)
    cell = dqt.example_cell(3, 2, norm=0.7)
    layer = dqt.DEQ(cell, atol=1e-12, rtol=0.0, max_steps=200)
    x = torch.randn(2, 2, dtype=torch.float64)
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    W = (0.9 * cell.W.weight).detach().requires_grad_(True)       # not the module's own weight
    loss = torch.func.functional_call(layer, {"f.W.weight": W}, (x, z0)).square().sum()
    (grad,) = torch.autograd.grad(loss, W)

    def loss_at(w):
        with torch.no_grad():
            return float(torch.func.functional_call(layer, {"f.W.weight": w}, (x, z0)).square().sum())

    h, numeric = 1e-6, torch.zeros_like(W)
    for i in range(3):
        for j in range(3):
            e = torch.zeros_like(W)
            e[i, j] = h
            numeric[i, j] = (loss_at(W.detach() + e) - loss_at(W.detach() - e)) / (2 * h)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)
    assert cell.W.weight.grad is None                             # the module's own weight took no part


def test_jax_host_engine_maps_a_scalar_state_as_the_xla_engine_does(nested=True):
    # a mapped scalar fixed point (z0 of shape ()) folded to a batch of shape (B,): the host engine handed that to
    # the batched solve, which needs (B, n), and failed inside JAX's callback error; the XLA engine solves it
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from deqcore.interop import jax as dqj

    f = lambda z, a: 0.5 * jnp.cos(z) + a                              # noqa: E731
    a = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3) if nested else jnp.linspace(-1.0, 1.0, 4)

    def mapped(engine):
        one = lambda a: dqj.fixed_point(f, jnp.zeros(()), a, atol=1e-6, rtol=0.0, engine=engine)  # noqa: E731
        return jax.vmap(jax.vmap(one)) if nested else jax.vmap(one)

    z = {engine: np.asarray(mapped(engine)(a)) for engine in ("xla", "host")}
    assert z["host"].shape == a.shape
    np.testing.assert_allclose(z["host"], z["xla"], rtol=0, atol=1e-5)
    np.testing.assert_array_less(np.abs(0.5 * np.cos(z["host"]) + np.asarray(a) - z["host"]), 1e-6)
    grad = jax.grad(lambda a: mapped("host")(a).sum())(a)           # d z*/d a = 1 / (1 + 0.5 sin z*)
    np.testing.assert_allclose(np.asarray(grad), 1 / (1 + 0.5 * np.sin(z["host"])), rtol=1e-4)
