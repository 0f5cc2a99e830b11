"""Implicit gradients of fixed points against finite differences and a dense implicit-function solve."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import deqcore as dq
from deqcore.adjoint.steady_state import FixedPointVJP, OneStepGradient, PhantomGradient, SteadyStateAdjoint
from tests.helpers import fd_gradient, tanh_fixed_point


def _problem(rng, batch, n, m, contraction=0.6):
    W = rng.standard_normal((n, n))
    W *= contraction / np.linalg.norm(W, 2)
    U = rng.standard_normal((n, m)) / np.sqrt(m)
    x = rng.standard_normal((batch, m))
    return W, U, x


def _cell(W, U, x):
    """f(z) = tanh(z Wᵀ + x Uᵀ), the map every test here differentiates through."""
    return lambda z: np.tanh(z @ W.T + x @ U.T)


def _solve(W, U, x, iters=400):
    return tanh_fixed_point(W, x @ U.T, iters)


def _fixed_point_vjp(W, U, x, z_star):
    """θ = (W, x): f(z) = tanh(z Wᵀ + x Uᵀ); pullback returns (dz, (dW, dx))."""

    def vjp(z):
        fz = _cell(W, U, x)(z)

        def pullback(v):
            s = v * (1 - fz ** 2)
            return s @ W, (s.T @ z, s @ U)

        return fz, pullback

    return FixedPointVJP(z_star, vjp, batched=True)


def _loss_grad_fd(W, U, x, c, eps=1e-6):
    """Central differences of L = <c, z*(W, x)> with respect to W and x."""

    def loss(W_, x_):
        return float(np.sum(c * _solve(W_, U, x_)))

    dW = fd_gradient(lambda W_: loss(W_, x), W, eps)
    dx = fd_gradient(lambda x_: loss(W, x_), x, eps)
    return dW, dx


@pytest.mark.parametrize("linear_solver", [dq.LU(), dq.GMRES(rtol=1e-12, atol=0.0, max_steps=200)],
                         ids=["lu", "gmres"])
def test_exact_adjoint_matches_finite_differences(linear_solver):
    rng = np.random.default_rng(0)
    W, U, x = _problem(rng, batch=3, n=4, m=3)
    z = _solve(W, U, x)
    c = rng.standard_normal(z.shape)
    (dW, dx), info = SteadyStateAdjoint(linear_solver=linear_solver).gradient(_fixed_point_vjp(W, U, x, z), c)
    dW_fd, dx_fd = _loss_grad_fd(W, U, x, c)
    np.testing.assert_allclose(dW, dW_fd, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(dx, dx_fd, rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(info.result, 0)


@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), n=st.integers(1, 12))
def test_lu_and_gmres_adjoints_agree_with_dense_ift(seed, batch, n):
    rng = np.random.default_rng(seed)
    W, U, x = _problem(rng, batch, n, m=2)
    z = _solve(W, U, x)
    g = rng.standard_normal(z.shape)
    problem = _fixed_point_vjp(W, U, x, z)
    # Dense implicit-function theorem: λ_b = (I − J_b)^-T g_b with J_b = diag(1 − z_b²) W.
    expected = np.stack([np.linalg.solve((np.eye(n) - (1 - z[b] ** 2)[:, None] * W).T, g[b])
                         for b in range(batch)])
    for linear_solver in (dq.LU(), dq.GMRES(rtol=1e-11, atol=0.0, max_steps=10 * n + 10)):
        _, info = SteadyStateAdjoint(linear_solver=linear_solver).gradient(problem, g)
        np.testing.assert_allclose(info.lam, expected, rtol=1e-7, atol=1e-9)


def test_cheap_setting_is_the_references_budget():
    rng = np.random.default_rng(1)
    W, U, x = _problem(rng, 2, 60, 3)
    z = _solve(W, U, x)
    g = rng.standard_normal(z.shape)
    _, info = SteadyStateAdjoint(accuracy="cheap").gradient(_fixed_point_vjp(W, U, x, z), g)
    # GMRES capped at 10 iterations (the reference's budget): cheap, roughly right on a contractive map.
    assert info.num_steps <= 10 and info.nvjp <= 12
    expected = np.stack([np.linalg.solve((np.eye(60) - (1 - z[b] ** 2)[:, None] * W).T, g[b]) for b in range(2)])
    assert np.linalg.norm(info.lam - expected) <= 1e-2 * np.linalg.norm(expected)


def test_phantom_gradient_converges_to_exact_gradient():
    rng = np.random.default_rng(2)
    W, U, x = _problem(rng, 2, 5, 3, contraction=0.5)
    z = _solve(W, U, x)
    g = rng.standard_normal(z.shape)
    problem = _fixed_point_vjp(W, U, x, z)
    (dW, dx), _ = SteadyStateAdjoint(linear_solver=dq.LU()).gradient(problem, g)
    errors = []
    for steps in (1, 4, 16, 64):
        (pW, px), _ = PhantomGradient(steps=steps, damping=1.0).gradient(problem, g)
        errors.append(np.linalg.norm(pW - dW) + np.linalg.norm(px - dx))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-10


def test_one_step_gradient_is_a_single_vjp():
    rng = np.random.default_rng(3)
    W, U, x = _problem(rng, 2, 3, 2)
    z = _solve(W, U, x)
    g = rng.standard_normal(z.shape)
    (dW, dx), info = OneStepGradient().gradient(_fixed_point_vjp(W, U, x, z), g)
    s = g * (1 - z ** 2)
    np.testing.assert_allclose(dW, s.T @ z)
    np.testing.assert_allclose(dx, s @ U)
    assert info.nvjp == 1


def test_singular_system_reports_linear_solve_failed():
    # f(z) = z + θ has I − J = 0: no fixed point to differentiate through.
    problem = FixedPointVJP(np.zeros((2, 3)), lambda z: (z, lambda v: (v, v)), batched=True)
    with pytest.warns(RuntimeWarning, match="2 of 2 samples"):
        _, info = SteadyStateAdjoint(linear_solver=dq.LU()).gradient(problem, np.ones((2, 3)))
    np.testing.assert_array_equal(info.result, int(dq.ReturnCode.LINEAR_SOLVE_FAILED))
    assert np.isfinite(info.lam).all()


def test_bad_settings_named():
    with pytest.raises(TypeError, match="linear_solver"):
        SteadyStateAdjoint(linear_solver="lu")
    with pytest.raises(ValueError, match="steps"):
        PhantomGradient(steps=0)
    with pytest.raises(ValueError, match="damping"):
        PhantomGradient(damping=1.5)


@pytest.mark.parametrize("forward", [dq.Broyden(), dq.NewtonRaphson()], ids=["broyden", "newton"])   # n=40: dense LU
def test_forward_solve_preconditions_the_adjoint(forward):
    from deqcore.adjoint.steady_state import preconditioner_from_forward

    rng = np.random.default_rng(4)
    W, U, x = _problem(rng, batch=4, n=40, m=5, contraction=0.95)
    sol = dq.fixed_point(_cell(W, U, x), np.zeros((4, 40)), forward, atol=1e-12, rtol=0.0,
                         max_steps=300, batched=True)
    problem = _fixed_point_vjp(W, U, x, sol.value)
    g = rng.standard_normal(sol.value.shape)
    adjoint = SteadyStateAdjoint(linear_solver=dq.GMRES(rtol=1e-10, atol=0.0, restart=40, max_steps=400))
    _, plain = adjoint.gradient(problem, g)
    learned = preconditioner_from_forward(sol.learned, low_rank=True)
    _, conditioned = adjoint.gradient(problem, g, preconditioner=learned)
    np.testing.assert_allclose(conditioned.lam, plain.lam, rtol=1e-7, atol=1e-9)
    assert conditioned.num_steps < plain.num_steps


def test_only_exact_factors_precondition_by_default():
    """Broyden's low-rank estimate is opt-in (its application can cost more than the VJPs it saves); Newton's LU
    factors are always used. No timing decides it, so the adjoint's VJP count is the same on every machine."""
    from deqcore.adjoint.steady_state import preconditioner_from_forward

    rng = np.random.default_rng(5)
    W, U, x = _problem(rng, batch=2, n=10, m=3)
    broyden = dq.fixed_point(_cell(W, U, x), np.zeros((2, 10)), dq.Broyden(), atol=1e-12, rtol=0.0,
                             max_steps=300, batched=True)
    newton = dq.fixed_point(_cell(W, U, x), np.zeros((2, 10)), dq.NewtonRaphson(), atol=1e-12, rtol=0.0,
                            max_steps=300, batched=True)
    assert preconditioner_from_forward(broyden.learned) is None
    assert callable(preconditioner_from_forward(broyden.learned, low_rank=True))
    exact = preconditioner_from_forward(newton.learned)
    problem = _fixed_point_vjp(W, U, x, newton.value)
    g = rng.standard_normal((2, 10))
    adjoint = SteadyStateAdjoint(linear_solver=dq.GMRES(rtol=1e-10, atol=0.0, restart=10, max_steps=100))
    _, plain = adjoint.gradient(problem, g)
    counts = {adjoint.gradient(problem, g, preconditioner=exact)[1].nvjp for _ in range(3)}
    assert len(counts) == 1 and counts.pop() < plain.nvjp       # deterministic, and the exact inverse pays


def _dense_lambda(W, U, x, z_star, g):
    """λ = (I − ∂f/∂zᵀ)⁻¹ g per sample, one dense solve each."""
    s = 1 - _cell(W, U, x)(z_star) ** 2
    return np.stack([np.linalg.solve((np.eye(W.shape[0]) - s[i][:, None] * W).T, g[i]) for i in range(len(g))])


@pytest.mark.parametrize("contraction, gmres", [(0.3, False), (0.9, True), (1.6, True)],
                         ids=["fast", "slow", "divergent-iteration"])
def test_default_adjoint_iterates_then_hands_slow_rows_to_gmres(contraction, gmres, monkeypatch):
    """The default accurate adjoint (plain iteration first, GMRES once it contracts slowly) meets its tolerance on
    true residuals whether the iteration contracts fast, slowly or diverges (spectral radius 1.6)."""
    rng = np.random.default_rng(11)
    n = 60                                                   # above the dense-LU limit: the iterative path
    W = rng.standard_normal((n, n))
    W *= contraction / np.max(np.abs(np.linalg.eigvals(W)))
    U = rng.standard_normal((n, 3))
    x = 0.5 * rng.standard_normal((4, 3))
    z_star = dq.fixed_point(_cell(W, U, x), np.zeros((4, n)), dq.Anderson(), atol=1e-10,
                            rtol=0.0, max_steps=500, batched=True, throw=False).value  # λ's system holds at any z
    g = rng.standard_normal((4, n))
    calls = []
    run = dq.GMRES._run
    monkeypatch.setattr(dq.GMRES, "_run", lambda self, *a, **k: calls.append(1) or run(self, *a, **k))
    adjoint = SteadyStateAdjoint().with_forward(0.0, 1e-10, 300)
    info = adjoint.solve_adjoint(_fixed_point_vjp(W, U, x, z_star), g)
    assert bool(calls) is gmres
    exact = _dense_lambda(W, U, x, z_star, g)
    assert info.success.all()
    s = 1 - _cell(W, U, x)(z_star) ** 2
    true_residual = np.linalg.norm(g - info.lam + (info.lam * s) @ W, axis=1)
    np.testing.assert_array_less(true_residual, 1e-10 * np.linalg.norm(g, axis=1) * (1 + 1e-6))
    np.testing.assert_allclose(info.lam, exact, rtol=1e-7, atol=1e-9 * np.abs(exact).max())
    assert info.nvjp <= 300


def test_default_adjoint_keeps_a_nonfinite_cotangent_to_its_row():
    rng = np.random.default_rng(12)
    W, U, x = _problem(rng, batch=3, n=60, m=4, contraction=0.7)
    z_star = _solve(W, U, x)
    g = rng.standard_normal((3, 60))
    clean = SteadyStateAdjoint().with_forward(0.0, 1e-10, 200).solve_adjoint(_fixed_point_vjp(W, U, x, z_star), g)
    g[1, 5] = np.nan
    with pytest.warns(RuntimeWarning, match="1 of 3"):
        info = SteadyStateAdjoint().with_forward(0.0, 1e-10, 200).solve_adjoint(_fixed_point_vjp(W, U, x, z_star), g)
    assert info.result.tolist() == [0, int(dq.ReturnCode.DIVERGED), 0]
    assert np.isnan(info.lam[1]).all()
    np.testing.assert_allclose(info.lam[[0, 2]], clean.lam[[0, 2]], rtol=1e-8, atol=1e-12)


def test_default_adjoint_warm_start_spends_fewer_vjps():
    rng = np.random.default_rng(13)
    W, U, x = _problem(rng, batch=2, n=60, m=4, contraction=0.8)
    z_star = _solve(W, U, x)
    g = rng.standard_normal((2, 60))
    adjoint = SteadyStateAdjoint().with_forward(0.0, 1e-9, 200)
    cold = adjoint.solve_adjoint(_fixed_point_vjp(W, U, x, z_star), g)
    warm = adjoint.solve_adjoint(_fixed_point_vjp(W, U, x, z_star), g, x0=cold.lam)
    assert warm.success.all() and warm.nvjp < cold.nvjp
    np.testing.assert_allclose(warm.lam, cold.lam, rtol=1e-7, atol=1e-10)


def test_default_adjoint_rows_iterate_and_switch_on_their_own():
    """A batch mixing a fast-contracting sample (saturated tanh) and a slow one: each row's λ equals its solo
    solve, and the fast row rides along in the slow row's GMRES calls (no extra VJPs for the batch)."""
    rng = np.random.default_rng(14)
    n = 60
    W = rng.standard_normal((n, n))
    W *= 0.97 / np.linalg.norm(W, 2)
    U = np.eye(n)[:, :n]
    x = np.stack([np.zeros(n), 8.0 * np.sign(rng.standard_normal(n))])     # slow row, saturated (fast) row
    z_star = _solve(W, U, x, iters=2000)
    g = rng.standard_normal((2, n))
    adjoint = SteadyStateAdjoint().with_forward(0.0, 1e-10, 300)
    both = adjoint.solve_adjoint(_fixed_point_vjp(W, U, x, z_star), g)
    solos = [adjoint.solve_adjoint(_fixed_point_vjp(W, U, x[i:i + 1], z_star[i:i + 1]), g[i:i + 1]) for i in (0, 1)]
    assert both.success.all()
    for i, solo in enumerate(solos):
        np.testing.assert_allclose(both.lam[i], solo.lam[0], rtol=1e-9, atol=1e-13)
    assert solos[1].nvjp < solos[0].nvjp and both.nvjp == max(s.nvjp for s in solos)


def test_default_adjoint_gives_the_same_answer_with_compiled_kernels(monkeypatch):
    """The compiled iteration and Arnoldi steps against the array-namespace references (each CUDA kernel is
    checked against them in tests/test_kernels.py): the same λ to round-off, the same codes and VJP count, on a
    batch mixing rows that iterate to the end and rows handed to GMRES."""
    rng = np.random.default_rng(15)
    n = 60
    W = rng.standard_normal((n, n))
    W *= 0.97 / np.linalg.norm(W, 2)
    x = np.stack([np.zeros(n), 8.0 * np.sign(rng.standard_normal(n)), 0.3 * rng.standard_normal(n)])
    z_star = _solve(W, np.eye(n), x, iters=2000)
    g = rng.standard_normal((3, n))
    adjoint = SteadyStateAdjoint().with_forward(0.0, 1e-10, 300)
    monkeypatch.setenv("DEQCORE_KERNELS", "reference")
    want = adjoint.solve_adjoint(_fixed_point_vjp(W, np.eye(n), x, z_star), g)
    monkeypatch.setenv("DEQCORE_KERNELS", "numba_cpu")
    got = adjoint.solve_adjoint(_fixed_point_vjp(W, np.eye(n), x, z_star), g)
    assert got.result.tolist() == want.result.tolist() == [0, 0, 0]
    assert got.nvjp == want.nvjp
    np.testing.assert_allclose(got.lam, want.lam, rtol=1e-9, atol=1e-12 * np.abs(want.lam).max())


def test_default_adjoint_never_writes_into_what_a_pullback_returned():
    """A pullback may return arrays it keeps (a cache, a buffer it reads again): the default adjoint's GMRES
    (Arnoldi on the VJPs themselves) orthogonalises a copy, every returned array keeps its values, and the answer
    is the dense solve's."""
    rng = np.random.default_rng(5)
    n = 60
    W = rng.standard_normal((n, n))
    W *= 1.3 / np.max(np.abs(np.linalg.eigvals(W)))              # the plain iteration diverges: GMRES runs
    U = rng.standard_normal((n, 3))
    x = 0.5 * rng.standard_normal((3, 3))
    z_star = dq.fixed_point(_cell(W, U, x), np.zeros((3, n)), dq.Anderson(), atol=1e-10,
                            rtol=0.0, max_steps=500, batched=True, throw=False).value
    s = 1 - _cell(W, U, x)(z_star) ** 2
    returned = []

    def pullback(v):
        out = (v * s) @ W
        returned.append((out, out.copy()))
        return out, None

    g = rng.standard_normal((3, n))
    problem = FixedPointVJP(z_star, lambda z: (z, pullback), batched=True, pullback=pullback,
                            pullback_z=lambda v: pullback(v)[0])
    info = SteadyStateAdjoint().with_forward(0.0, 1e-10, 300).solve_adjoint(problem, g)
    assert info.success.all() and len(returned) > 3
    for out, values in returned:
        np.testing.assert_array_equal(out, values)
    np.testing.assert_allclose(info.lam, _dense_lambda(W, U, x, z_star, g), rtol=1e-7, atol=1e-9)
