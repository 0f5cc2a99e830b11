"""The JAX adapter's XLA engine (solver loop and implicit adjoint inside XLA): fixed points and gradients against
the host engine and the exact implicit gradient of a dense float64 solve, jit/grad/vmap/jvp, per-system return
codes, errors, engine choice."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import deqcore as dq  # noqa: E402
from deqcore.interop import jax as dqj  # noqa: E402

N, M = 6, 3
TIGHT = dict(atol=1e-12, rtol=1e-12, max_steps=300)


def cell(z, a):
    W, U, b, x = a
    return jnp.tanh(W @ z + U @ x + b)


def make_args(seed=0, norm=0.8, dtype=np.float64):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, N))
    W *= norm / np.linalg.norm(W, 2)
    U, b, x = rng.standard_normal((N, M)), rng.standard_normal(N), rng.standard_normal(M)
    return tuple(jnp.asarray(a, dtype) for a in (W, U, b, x))


def exact(a, c):
    """z* (Newton-refined in float64) and dL/dW, dL/dx for L = <c, z*> by the implicit function theorem."""
    W, U, b, x = (np.asarray(v, np.float64) for v in a)
    z = np.zeros(N)
    for _ in range(200):
        z = np.tanh(W @ z + U @ x + b)
    for _ in range(5):
        s = 1 - np.tanh(W @ z + U @ x + b) ** 2
        z = z - np.linalg.solve(np.eye(N) - s[:, None] * W, z - np.tanh(W @ z + U @ x + b))
    s = 1 - np.tanh(W @ z + U @ x + b) ** 2
    lam = np.asarray(jnp.linalg.solve(jnp.asarray((np.eye(N) - s[:, None] * W).T), jnp.asarray(c, jnp.float64)))
    return z, np.outer(s * lam, z), U.T @ (s * lam)


@jax.jit
def solve_and_grad(a, c):
    """The default XLA engine's solution and dL/da for L = <c, z*>, at TIGHT tolerances: one compiled program
    shared by the tests (compiling the engine's loops is what costs time here)."""
    def value(a):
        return dqj.fixed_point_solution(cell, jnp.zeros(N), a, **TIGHT).value

    return dqj.fixed_point_solution(cell, jnp.zeros(N), a, **TIGHT), jax.grad(lambda a: jnp.vdot(c, value(a)))(a)


def loss(c, **options):
    return lambda a: jnp.vdot(c, dqj.fixed_point(cell, jnp.zeros(N, a[0].dtype), a, **options))


@pytest.fixture(scope="module")
def problem():
    return make_args(), jnp.asarray(np.random.default_rng(1).standard_normal(N))


def test_value_and_gradient_match_the_exact_implicit_gradient_and_the_host_engine(problem):
    a, c = problem
    z_ref, gW, gx = exact(a, c)
    out, grad = solve_and_grad(a, c)
    assert int(out.code) == 0
    np.testing.assert_allclose(out.value, z_ref, atol=1e-11)
    np.testing.assert_allclose(grad[0], gW, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad[3], gx, rtol=1e-9, atol=1e-12)
    host = jax.jit(jax.grad(loss(c, engine="host", **TIGHT)))(a)
    for g, h in zip(grad, host):
        np.testing.assert_allclose(g, h, rtol=1e-9, atol=1e-12)


def test_default_engine_is_xla_and_takes_the_host_solvers_steps(problem):
    """The same algorithm and test as the host: plain iteration takes exactly the host driver's steps,
    Anderson the same count within one (rounding in the small solve)."""
    a, _ = problem
    assert dqj.choose_engine("auto", dq.Anderson(), None) == "xla"
    G = jax.jit(lambda z: cell(z, a))
    for solver, slack in ((dq.FixedPointIteration(), 0), (dq.Anderson(), 1)):
        host = dq.fixed_point(lambda z: np.asarray(G(jnp.asarray(z))), np.zeros(N), solver, atol=1e-10, rtol=0.0,
                              max_steps=300)
        ours = dqj.fixed_point_solution(cell, jnp.zeros(N), a, solver, atol=1e-10, rtol=0.0, max_steps=300)
        assert int(ours.code) == int(dq.ReturnCode.SUCCESS)
        assert abs(int(ours.num_steps) - host.stats["num_steps"]) <= slack, (solver, ours.num_steps, host.stats)
        assert float(ours.residual) <= 1e-10
        np.testing.assert_allclose(ours.value, host.value, atol=1e-9)


@pytest.mark.parametrize("adjoint", [dq.SteadyStateAdjoint(dq.LU()), dq.SteadyStateAdjoint(dq.GMRES(rtol=1e-12)),
                                     dq.SteadyStateAdjoint(dq.Anderson(), rtol=1e-12)],
                         ids=["LU", "GMRES", "Anderson"])
def test_adjoint_solvers_inside_xla(problem, adjoint):
    a, c = problem
    _, gW, _ = exact(a, c)
    got = jax.jit(jax.grad(loss(c, adjoint=adjoint, engine="xla", **TIGHT)))(a)
    np.testing.assert_allclose(got[0], gW, rtol=1e-8, atol=1e-11)


def test_one_step_gradient_is_one_vjp_at_the_fixed_point(problem):
    a, c = problem
    z = dqj.fixed_point(cell, jnp.zeros(N), a, engine="xla", **TIGHT)
    got = jax.grad(loss(c, adjoint=dq.OneStepGradient(), engine="xla", **TIGHT))(a)
    want = jax.grad(lambda a: jnp.vdot(c, cell(z, a)))(a)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_jvp_solves_the_tangent_system(problem):
    a, _ = problem
    W, U, b, x = a
    z_ref, _, _ = exact(a, np.ones(N))
    s = 1 - np.tanh(np.asarray(W) @ z_ref + np.asarray(U) @ np.asarray(x) + np.asarray(b)) ** 2
    dz_dx = np.linalg.solve(np.eye(N) - s[:, None] * np.asarray(W), s[:, None] * np.asarray(U))
    solve = lambda x: dqj.fixed_point(cell, jnp.zeros(N), (W, U, b, x), engine="xla", **TIGHT)  # noqa: E731
    dx = jnp.asarray([0.3, -1.0, 0.5])
    np.testing.assert_allclose(jax.jvp(solve, (x,), (dx,))[1], dz_dx @ np.asarray(dx), rtol=1e-9, atol=1e-12)


def test_vmap_gives_per_system_codes_and_a_nan_sample_fails_alone(problem):
    """Under vmap each sample is its own system: one NaN sample is DIVERGED (never SUCCESS), and the others'
    values and step counts equal their solo solves."""
    (W, U, b, _), c = problem
    xs = np.random.default_rng(3).standard_normal((4, M))
    xs[1, 0] = np.nan
    xs = jnp.asarray(xs)

    def solution(x, steps):
        return dqj.fixed_point_solution(cell, jnp.zeros(N), (W, U, b, x), **{**TIGHT, "max_steps": steps})

    out = jax.jit(jax.vmap(solution, in_axes=(0, None)), static_argnums=1)(xs, TIGHT["max_steps"])
    assert [dq.ReturnCode(int(k)).name for k in out.code] == ["SUCCESS", "DIVERGED", "SUCCESS", "SUCCESS"]
    for i in (0, 2, 3):
        solo = solve_and_grad((W, U, b, xs[i]), c)[0]
        np.testing.assert_allclose(out.value[i], solo.value, atol=1e-12)
        assert int(solo.num_steps) == int(out.num_steps[i])
        np.testing.assert_allclose(solo.value, exact((W, U, b, xs[i]), c)[0], atol=1e-11)


def test_vmapped_gradient_of_a_shared_weight_matches_the_exact_sum(problem):
    (W, U, b, _), c = problem
    xs = jnp.asarray(np.random.default_rng(4).standard_normal((5, M)))

    def total(W):
        zs = jax.vmap(lambda x: dqj.fixed_point(cell, jnp.zeros(N), (W, U, b, x), engine="xla", **TIGHT))(xs)
        return jnp.sum(zs @ c)

    got = jax.jit(jax.grad(total))(W)
    want = sum(exact((W, U, b, x), c)[1] for x in xs)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_failure_raises_under_jit_or_warns_with_throw_false(problem):
    a, _ = problem
    opts = dict(solver=dq.FixedPointIteration(), atol=1e-15, rtol=0.0, max_steps=2, engine="xla")
    with pytest.raises((dq.SolveError, jax.errors.JaxRuntimeError), match="SolveError.*MAX_STEPS"):
        jax.block_until_ready(jax.jit(lambda a: dqj.fixed_point(cell, jnp.zeros(N), a, **opts))(a))
    with pytest.warns(RuntimeWarning, match="failed for 1 of 1 samples \\(MAX_STEPS\\)"):
        z = jax.block_until_ready(jax.jit(lambda a: dqj.fixed_point(cell, jnp.zeros(N), a, throw=False,
                                                                     **opts))(a))
    assert bool(jnp.all(jnp.isfinite(z)))
    out = dqj.fixed_point_solution(cell, jnp.zeros(N), a, **opts)          # the code itself: MAX_STEPS, no error
    assert dq.ReturnCode(int(out.code)).name == "MAX_STEPS" and int(out.num_steps) == 2


def test_float32_keeps_its_dtype_and_solves_to_its_tolerance():
    a = make_args(seed=5, dtype=np.float32)
    c = jnp.asarray(np.random.default_rng(6).standard_normal(N), jnp.float32)
    opts = dict(atol=1e-6, rtol=1e-6)

    @jax.jit
    def run(a):
        def value(a):
            return dqj.fixed_point_solution(cell, jnp.zeros(N, jnp.float32), a, **opts)
        return value(a), jax.grad(lambda a: jnp.vdot(c, value(a).value))(a)

    out, g = run(a)
    assert out.value.dtype == jnp.float32 and int(out.code) == 0
    assert float(jnp.abs(cell(out.value, a) - out.value).max()) <= 2e-6
    assert g[0].dtype == jnp.float32
    _, gW, _ = exact(a, np.asarray(c, np.float64))
    np.testing.assert_allclose(g[0], gW, rtol=1e-4, atol=1e-5)


def test_engine_choice_and_bad_arguments(problem):
    a, _ = problem
    z0 = jnp.zeros(N)
    with pytest.raises(ValueError, match="engine must be one of"):
        dqj.fixed_point(cell, z0, a, engine="gpu")
    with pytest.raises(ValueError, match="solver=Broyden"):
        dqj.fixed_point(cell, z0, a, dq.Broyden(), engine="xla")
    with pytest.raises(ValueError, match="engine='host' cannot report"):
        dqj.fixed_point_solution(cell, z0, a, engine="host")
    assert dqj.choose_engine("auto", dq.Broyden(), None) == "host"
    assert dqj.choose_engine("auto", dq.Anderson(), dq.SteadyStateAdjoint(dq.Broyden())) == "host"
    with pytest.raises(ValueError, match="engine must be 'host'"):
        dqj.sharded_fixed_point(cell, jnp.zeros((2, N)), a, mesh=jax.make_mesh((1,), ("b",)), in_axes=None,
                                engine="xla")


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), norm=st.floats(0.1, 0.95))
def test_random_contractive_maps_converge_with_the_exact_gradient(seed, norm):
    a = make_args(seed=seed, norm=norm)
    c = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(N))
    out, grad = solve_and_grad(a, c)
    z_ref, gW, _ = exact(a, c)
    assert int(out.code) == 0
    residual = float(jnp.abs(cell(out.value, a) - out.value).max())           # the test: atol + rtol·max|z|
    assert residual == float(out.residual) <= TIGHT["atol"] + TIGHT["rtol"] * float(jnp.abs(out.value).max())
    np.testing.assert_allclose(grad[0], gW, rtol=1e-7, atol=1e-10)
