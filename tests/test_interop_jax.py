"""The JAX adapter: gradients (eager and jitted) against JAX's autodiff of an unrolled solve, vmap against
per-sample solves, input errors."""

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import deqcore as dq  # noqa: E402
from deqcore.interop import jax as dqj  # noqa: E402
from tests.background import EarlyRuns, two_device_jax_starter  # noqa: E402

TIGHT = dict(atol=1e-12, rtol=1e-12, max_steps=300)


def make_params(n=5, m=3, norm=0.7, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n))
    W *= norm / np.linalg.norm(W, 2)
    return {"W": jnp.asarray(W, dtype), "U": jnp.asarray(rng.standard_normal((n, m)), dtype),
            "b": jnp.asarray(rng.standard_normal(n), dtype)}


def cell(z, a):
    params, x = a
    return jnp.tanh(params["W"] @ z + params["U"] @ x + params["b"])


def unrolled(z0, a, steps=200):
    return jax.lax.fori_loop(0, steps, lambda _, z: cell(z, a), z0)


def loss_fn(solve, c):
    return lambda a: jnp.sum(c * solve(a))


@pytest.fixture(scope="module")
def problem():
    params = make_params()
    x = jnp.asarray(np.random.default_rng(1).standard_normal(3))
    c = jnp.asarray(np.random.default_rng(2).standard_normal(5))
    return (params, x), c, jnp.zeros(5)


def test_forward_is_a_fixed_point(problem):
    a, _, z0 = problem
    z = dqj.fixed_point(cell, z0, a, **TIGHT)
    np.testing.assert_allclose(z, cell(z, a), atol=1e-11)
    np.testing.assert_allclose(z, unrolled(z0, a), atol=1e-11)


@pytest.mark.parametrize("jit", [False, True])
def test_grad_matches_unrolled_autodiff(problem, jit):
    a, c, z0 = problem
    ours = jax.grad(loss_fn(lambda a: dqj.fixed_point(cell, z0, a, **TIGHT), c))
    want = jax.grad(loss_fn(lambda a: unrolled(z0, a), c))(a)
    got = (jax.jit(ours) if jit else ours)(a)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10)


def test_grad_with_gmres_adjoint_on_a_larger_state():
    params = make_params(n=80, m=4, norm=0.9, seed=3)
    x = jnp.asarray(np.random.default_rng(4).standard_normal(4))
    z0, c = jnp.zeros(80), jnp.asarray(np.random.default_rng(5).standard_normal(80))
    adjoint = dq.SteadyStateAdjoint(dq.GMRES(rtol=1e-12, atol=0.0, max_steps=400))
    got = jax.grad(loss_fn(lambda a: dqj.fixed_point(cell, z0, a, adjoint=adjoint, **TIGHT), c))((params, x))
    want = jax.grad(loss_fn(lambda a: unrolled(z0, a, 400), c))((params, x))
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-9)


def test_vmap_equals_per_sample_solves(problem):
    (params, _), c, z0 = problem
    xs = jnp.asarray(np.random.default_rng(6).standard_normal((4, 3)))
    solve = jax.jit(jax.vmap(lambda x: dqj.fixed_point(cell, z0, (params, x), **TIGHT)))
    batch = solve(xs)
    for i in range(4):
        np.testing.assert_allclose(batch[i], dqj.fixed_point(cell, z0, (params, xs[i]), **TIGHT), atol=1e-12)
    # gradients through vmap: per-sample losses summed equal the sum of per-sample gradients
    grad_batch = jax.grad(lambda p: jnp.sum(jax.vmap(
        lambda x: dqj.fixed_point(cell, z0, (p, x), **TIGHT))(xs) @ c))(params)
    grad_each = [jax.grad(lambda p: dqj.fixed_point(cell, z0, (p, x), **TIGHT) @ c)(params) for x in xs]
    for k in params:
        np.testing.assert_allclose(grad_batch[k], sum(g[k] for g in grad_each), rtol=1e-9, atol=1e-11)


def test_vmapped_gradient_of_a_shared_weight_is_one_contraction(problem):
    """grad(vmap(...)) equals the per-sample gradients summed, and the compiled program never holds a
    per-sample copy of the shared weight's gradient (a (B, n, n) array summed afterwards)."""
    (params, _), c, z0 = problem
    xs = jnp.asarray(np.random.default_rng(7).standard_normal((6, 3)))
    def loss(p):
        return jnp.sum(jax.vmap(lambda x: dqj.fixed_point(cell, z0, (p, x), **TIGHT))(xs) @ c)
    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    assert "[6,5,5]" not in hlo
    got = jax.jit(jax.grad(loss))(params)
    want = jax.grad(loss_fn(lambda p: jax.vmap(lambda x: unrolled(z0, (p, x)))(xs), c[None]))(params)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-8, atol=1e-10)


def test_per_sample_gradients_through_vmap_of_grad(problem):
    """vmap(grad(...)) with the weight shared: one gradient per sample, each equal to its own solve's."""
    (params, _), c, z0 = problem
    xs = jnp.asarray(np.random.default_rng(8).standard_normal((3, 3)))
    per_sample = jax.vmap(jax.grad(lambda p, x: dqj.fixed_point(cell, z0, (p, x), **TIGHT) @ c), (None, 0))
    got = jax.jit(per_sample)(params, xs)
    for i in range(3):
        want = jax.grad(lambda p: unrolled(z0, (p, xs[i])) @ c)(params)
        for k in params:
            np.testing.assert_allclose(got[k][i], want[k], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("adjoint", [None, dq.SteadyStateAdjoint(dq.GMRES(rtol=1e-12, atol=0.0))])
def test_forward_mode_and_jacobians_match_the_unrolled_solve(problem, adjoint):
    """jax.jvp solves (I − ∂f/∂z) ż = ∂f/∂a·ȧ in deqcore; jacrev maps the adjoint over cotangents and jacfwd
    the tangent solve over tangents, each as one batched solve."""
    (params, x), _, z0 = problem
    ours = lambda x: dqj.fixed_point(cell, z0, (params, x), adjoint=adjoint, **TIGHT)  # noqa: E731
    ref = lambda x: unrolled(z0, (params, x))  # noqa: E731
    dx = jnp.asarray([0.3, -1.0, 0.5])
    np.testing.assert_allclose(jax.jvp(ours, (x,), (dx,))[1], jax.jvp(ref, (x,), (dx,))[1],
                               rtol=1e-8, atol=1e-10)
    want = jax.jacfwd(ref)(x)
    np.testing.assert_allclose(jax.jit(jax.jacrev(ours))(x), want, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(ours))(x), want, rtol=1e-8, atol=1e-10)


def test_gradient_with_respect_to_some_arguments_only(problem):
    """Arguments without a tangent (closed-over data, an integer leaf) are skipped, not differentiated."""
    (params, x), c, z0 = problem
    scale = jnp.asarray(2, jnp.int32)
    f = lambda z, a: cell(z, (a[0], a[1] / a[2].astype(z.dtype)))  # noqa: E731
    got = jax.jit(jax.grad(lambda b: dqj.fixed_point(f, z0, ({**params, "b": b}, x, scale), **TIGHT) @ c))(
        params["b"])
    want = jax.grad(lambda b: unrolled(z0, ({**params, "b": b}, x / 2)) @ c)(params["b"])
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_float32_and_one_step_gradient(problem):
    params = make_params(dtype=np.float32, norm=0.3)
    x = jnp.ones(3, jnp.float32)
    z0 = jnp.zeros(5, jnp.float32)
    opts = dict(atol=1e-6, rtol=1e-6)
    z = dqj.fixed_point(cell, z0, (params, x), **opts)
    assert z.dtype == jnp.float32
    np.testing.assert_allclose(z, cell(z, (params, x)), atol=1e-5)
    one_step = dq.OneStepGradient()
    g = jax.grad(lambda a: dqj.fixed_point(cell, z0, a, adjoint=one_step, **opts).sum())((params, x))
    want = jax.grad(lambda a: cell(z, a).sum())((params, x))          # λ ≈ g: one VJP at z*
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(want)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_inputs(problem):
    a, _, z0 = problem
    with pytest.raises(TypeError, match="z0 has dtype float16"):
        dqj.fixed_point(cell, z0.astype(jnp.float16), a)
    with pytest.raises(TypeError, match="z0 has dtype bfloat16"):
        dqj.fixed_point(cell, z0.astype(jnp.bfloat16), a)
    with pytest.raises(ValueError, match="f must preserve the shape of z"):
        dqj.fixed_point(lambda z, a: z[:2], z0, a)
    with pytest.raises(TypeError, match="f must preserve the dtype"):
        dqj.fixed_point(lambda z, a: z.astype(jnp.float32), z0, a)
    with pytest.raises(TypeError, match="f must be callable"):
        dqj.fixed_point(3, z0, a)
    with pytest.raises(TypeError, match="z0 must be"):
        dqj.fixed_point(cell, [0.0] * 5, a)
    with pytest.raises(TypeError, match="solver must be"):
        dqj.fixed_point(cell, z0, a, solver="anderson")
    with pytest.raises(TypeError, match="adjoint must be"):
        dqj.fixed_point(cell, z0, a, adjoint=dq.PhantomGradient())
    with pytest.raises(ValueError, match="max_steps"):
        dqj.fixed_point(cell, z0, a, max_steps=0)


def test_failed_solve_raises_or_returns_best_iterate(problem):
    a, _, z0 = problem
    with pytest.raises(dq.SolveError, match="max_steps"):        # eagerly the SolveError itself (README)
        dqj.fixed_point(cell, z0, a, solver=dq.FixedPointIteration(), atol=1e-15, rtol=0.0, max_steps=2)
    z = dqj.fixed_point(cell, z0, a, solver=dq.FixedPointIteration(), atol=1e-15, rtol=0.0, max_steps=2,
                        throw=False)
    assert bool(jnp.all(jnp.isfinite(z)))


def test_missing_jax_gives_install_hint():
    code = ("import sys; sys.modules['jax'] = None\n"
            "try:\n    import deqcore.interop.jax\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install deqcore[jax]" in out.stdout


SHARDED_SCRIPT = r'''
import os, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"   # two CPU devices, also on a machine whose default backend is one GPU
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from deqcore.interop import jax as dqj

host_batches = []
original = dqj._host_solve
def recording(f, config, core_ndim, z0, args):
    host_batches.append(int(np.shape(z0)[0]))
    return original(f, config, core_ndim, z0, args)
dqj._host_solve = recording

rng = np.random.default_rng(0)
W = rng.standard_normal((4, 4)); W *= 0.8 / np.linalg.norm(W, 2)
params = {"W": jnp.asarray(W), "b": jnp.asarray(rng.standard_normal(4))}
x = jnp.asarray(rng.standard_normal((10, 4)))
c = jnp.asarray(rng.standard_normal((10, 4)))
f = lambda z, a: jnp.tanh(a[0]["W"] @ z + a[1] + a[0]["b"])
opts = dict(atol=1e-12, rtol=0.0, max_steps=200)
mesh = jax.make_mesh((2,), ("b",))

def sharded(params, x):
    return dqj.sharded_fixed_point(f, jnp.zeros_like(x), (params, x), mesh=mesh, in_axes=(None, 0), **opts)

def unsharded(params, x):
    return jax.vmap(lambda z, x: dqj.fixed_point(f, z, (params, x), **opts))(jnp.zeros_like(x), x)

loss = lambda solve: (lambda p, x: jnp.sum(c * solve(p, x)))
z = jax.jit(sharded)(params, x).block_until_ready()
batches_forward = list(host_batches)
z_ref = unsharded(params, x)
g = jax.jit(jax.grad(loss(sharded), argnums=(0, 1)))(params, x)
g_ref = jax.grad(loss(unsharded), argnums=(0, 1))(params, x)
leaves = jax.tree_util.tree_leaves
err = lambda a, b: max(float(jnp.abs(u - v).max()) for u, v in zip(leaves(a), leaves(b)))
zn = np.asarray(z)
fixed = float(np.abs(zn - np.tanh(zn @ W.T + np.asarray(x) + np.asarray(params["b"]))).max())
print(json.dumps({"value": err(z, z_ref), "grad": err(g, g_ref), "fixed": fixed,
                  "axis0": z.sharding.spec[0], "batches_forward": batches_forward,
                  "devices": len(z.sharding.device_set)}))
'''


# the sharded run starts once the tests are collected, on the core the serial run leaves idle (conftest calls
# these)
EARLY = EarlyRuns({"test_sharded_batch_is_solved_per_device_and_matches_the_unsharded_run":
                   two_device_jax_starter(SHARDED_SCRIPT)})
start_early, stop_early = EARLY.start_early, EARLY.stop


def test_sharded_batch_is_solved_per_device_and_matches_the_unsharded_run():
    """Two CPU devices (XLA_FLAGS must be set before JAX starts, hence the subprocess): values and gradients
    equal the unsharded vmapped solve, the result stays sharded, and each host solve sees one device's rows."""
    import json

    try:
        [run] = EARLY.runs("test_sharded_batch_is_solved_per_device_and_matches_the_unsharded_run")
        code, stdout, stderr = run.result(timeout=240)
    finally:
        EARLY.stop()
    assert code == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["value"] < 1e-12 and report["grad"] < 1e-10 and report["fixed"] < 1e-11, report
    assert report["axis0"] == "b" and report["devices"] == 2, report
    assert report["batches_forward"] == [5, 5], report      # two solves of 5 rows, never one of 10


def test_sharded_fixed_point_rejects_bad_arguments(problem):
    mesh = jax.make_mesh((1,), ("b",))
    f = lambda z, a: 0.5 * jnp.cos(z) + a  # noqa: E731
    with pytest.raises(ValueError, match="axis 'x' is not an axis of mesh"):
        dqj.sharded_fixed_point(f, jnp.zeros((2, 1)), jnp.ones((2, 1)), mesh=mesh, axis="x")
    with pytest.raises(ValueError, match="in_axes"):
        dqj.sharded_fixed_point(f, jnp.zeros((2, 1)), jnp.ones((2, 1)), mesh=mesh, in_axes=1)
    with pytest.raises(ValueError, match="in_axes"):
        dqj.sharded_fixed_point(f, jnp.zeros((2, 1)), (jnp.ones((2, 1)),), mesh=mesh, in_axes=(0, None))
    with pytest.raises(ValueError, match="leading axis"):
        dqj.sharded_fixed_point(f, jnp.zeros(()), jnp.ones(()), mesh=mesh)
