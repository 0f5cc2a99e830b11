"""dq.Radau (Radau IIA, order 5): its coefficients against their defining conditions, the transformed Newton
solve against the full 3n-system solve, observed order 5, stiff problems against SciPy's Radau at rtol 1e-10,
Jacobian paths (analytic, finite differences, sparse) agreeing, dense output against analytic solutions,
backwards spans, failures reported as codes, bad input named."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import deqcore as dq
from deqcore.demos.stiff_problems import HIRES_Y0, hires
from deqcore.ode.messages import ode_message
from deqcore.ode.radau import COEF, extrapolation_matrix
from tests.test_stiff import (STIFF_TEST_CASES, _brusselator_1d, _robertson, _robertson_jac, _vdp,
                              scipy_radau_solution, solve_every_compile_case,
                              stiff_test_case)


# ---- the coefficients ----
def test_coefficients_satisfy_their_defining_conditions():
    c, A = COEF.c, COEF.A
    for k in range(1, 4):                                 # collocation: Σ_j a_ij c_j^(k-1) = c_i^k / k
        np.testing.assert_allclose(A @ c ** (k - 1), c ** k / k, atol=1e-14)
    np.testing.assert_allclose(A[2] @ c ** 3, 1 / 4, atol=1e-14)   # b = last row: order 2s − 1 = 5 quadrature
    np.testing.assert_allclose(A[2] @ c ** 4, 1 / 5, atol=1e-14)
    Lam = COEF.T_inv @ np.linalg.inv(A) @ COEF.T                   # block diagonal: γ and a rotation block
    np.testing.assert_allclose(Lam[0], [COEF.gamma, 0, 0], atol=1e-12)
    np.testing.assert_allclose([Lam[1, 1], Lam[2, 1]], [COEF.mu.real, COEF.mu.imag], atol=1e-12)
    np.testing.assert_allclose([Lam[2, 2], Lam[1, 2]], [COEF.mu.real, -COEF.mu.imag], atol=1e-12)
    # the collocation polynomial passes through the stages; extrapolating with ratio 0 gives Z_new = 0
    np.testing.assert_allclose(np.eye(3) @ COEF.dense @ (c[:, None] ** np.arange(1, 4)).T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(extrapolation_matrix(0.0), 0.0, atol=1e-13)


@settings(max_examples=15)
@given(seed=st.integers(0, 2 ** 16), n=st.integers(1, 5), log_h=st.floats(-4, 1))
def test_transformed_newton_solve_equals_the_full_system_solve(seed, n, log_h):
    """(Λ/h ⊗ I − I ⊗ J) ΔW = R split into a real and a complex n × n solve equals the 3n × 3n solve."""
    rng = np.random.default_rng(seed)
    J, h = rng.standard_normal((n, n)), 10.0 ** log_h
    Lam = COEF.T_inv @ np.linalg.inv(COEF.A) @ COEF.T
    R = rng.standard_normal((3, n))
    full = np.linalg.solve(np.kron(Lam / h, np.eye(n)) - np.kron(np.eye(3), J), R.reshape(-1)).reshape(3, n)
    real = np.linalg.solve(COEF.gamma / h * np.eye(n) - J, R[0])
    cplx = np.linalg.solve(COEF.mu / h * np.eye(n) - J, R[1] + 1j * R[2])
    np.testing.assert_allclose(np.stack([real, cplx.real, cplx.imag]), full, rtol=1e-8, atol=1e-10 * np.abs(full).max())


# ---- accuracy ----
def test_observed_order_is_five_on_a_smooth_problem():
    """y'' = −y: the error at t = 10 falls like (number of steps)^−5 over a tolerance sweep."""
    f = lambda t, y: np.array([y[1], -y[0]])   # noqa: E731
    steps, errors = [], []
    for rtol in (1e-5, 1e-6, 1e-7, 1e-8, 1e-9):
        sol = dq.integrate(f, np.array([0.0, 1.0]), (0.0, 10.0), dq.Radau(), rtol=rtol, atol=rtol)
        steps.append(sol.stats["accepted"])
        errors.append(np.abs(sol.ys[-1] - [np.sin(10.0), np.cos(10.0)]).max())
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert -6.0 < slope < -4.2, (slope, steps, errors)


@pytest.mark.parametrize("name", STIFF_TEST_CASES)
def test_stiff_problems_against_scipy_radau(name):
    rhs, y0, span, tolerances, method = stiff_test_case(name)
    sol = dq.integrate(rhs, y0, span, dq.Radau(**method), **tolerances)
    rtol, atol = {"robertson": (1e-5, 1e-11), "vdp": (1e-4, 1e-4), "hires": (1e-5, 1e-9),
                  "brusselator": (1e-7, 1e-5)}[name]
    np.testing.assert_allclose(sol.ys[-1], scipy_radau_solution(name), rtol=rtol, atol=atol)
    if name == "brusselator":
        assert sol.stats["nfev_jac"] <= 7 * sol.stats["njev"]     # 5 colour groups, not 64 columns
    assert sol.result == dq.ReturnCode.SUCCESS
    # the point of the method's bookkeeping: J and the factors are reused across steps
    assert sol.stats["njev"] < 0.5 * sol.stats["accepted"]
    assert sol.stats["nfactor"] < sol.stats["accepted"]


def test_analytic_finite_difference_and_sparse_jacobians_agree():
    y0 = np.array([1.0, 0, 0])
    options = dict(rtol=1e-8, atol=1e-13)
    fd = dq.integrate(_robertson, y0, (0, 1e5), dq.Radau(), **options)
    exact = dq.integrate(_robertson, y0, (0, 1e5), dq.Radau(), jac=_robertson_jac, **options)
    sparse = dq.integrate(_robertson, y0, (0, 1e5), dq.Radau(), jac=lambda t, y: sp.csr_matrix(_robertson_jac(t, y)),
                          **options)
    for sol in (fd, exact, sparse):
        np.testing.assert_allclose(sol.ys[-1], scipy_radau_solution("robertson"), rtol=1e-5, atol=1e-11)
    for sol in (exact, sparse):
        assert sol.stats["nfev_jac"] == 0
    assert fd.stats["nfev_jac"] >= 3 * fd.stats["njev"]


def test_sparsity_pattern_gives_the_dense_answer():
    rhs, y0, pattern = _brusselator_1d(N=16)
    dense = dq.integrate(rhs, y0, (0.0, 5.0), dq.Radau(), rtol=1e-8, atol=1e-8)
    sparse = dq.integrate(rhs, y0, (0.0, 5.0), dq.Radau(jac_sparsity=pattern), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(sparse.ys[-1], dense.ys[-1], atol=1e-7)
    # each Jacobian costs one f per column group (5 + refinements) instead of one per column (32); the dense run
    # (a Jacobian costing over two Newton iterations) keeps its Jacobians longer, so compare per Jacobian
    per_jac = lambda sol: sol.stats["nfev_jac"] / sol.stats["njev"]     # noqa: E731
    assert per_jac(sparse) < 0.4 * per_jac(dense)


def test_compiled_sparse_newton_takes_the_array_codes_steps(monkeypatch):
    """Newton's iterations with sparse factors run compiled (radau_sparse): the same steps and numbers as the
    array code, bit for bit, and the answer of SciPy's LSODA at a tight tolerance (2-D Brusselator, 32
    unknowns, and a run that starts from a rejected first step)."""
    import deqcore.ode.radau as radau
    from deqcore.demos.stiff_problems import brusselator_2d
    from scipy.integrate import solve_ivp

    f, y0, pattern = brusselator_2d(4)
    ref = solve_ivp(f, (0.0, 2.0), y0, method="LSODA", rtol=1e-11, atol=1e-12).y[:, -1]
    kernel, calls = radau.radau_newton_sparse, []
    monkeypatch.setattr(radau, "radau_newton_sparse", lambda *a: calls.append(1) or kernel(*a))
    for rtol, dt0 in ((1e-7, None), (1e-4, 1.0)):
        runs = {}
        del calls[:]
        for compiled in (True, False):
            monkeypatch.setattr(radau, "SPARSE_COMPILED", compiled)
            runs[compiled] = dq.integrate(f, y0, (0.0, 2.0), dq.Radau(jac_sparsity=pattern), rtol=rtol,
                                          atol=rtol, dt0=dt0)
        fast, slow = runs[True], runs[False]
        assert len(calls) >= fast.stats["accepted"] > 0          # the compiled iterations ran
        assert fast.stats == slow.stats
        assert np.array_equal(fast.ts, slow.ts) and np.array_equal(fast.ys, slow.ys)
        assert fast.stats["rejected"] > 0 or dt0 is None
        np.testing.assert_allclose(fast.ys[-1], ref, rtol=0, atol=30 * rtol)


@settings(max_examples=8)
@given(lam=st.floats(1.0, 1e6), rtol=st.sampled_from([1e-4, 1e-6, 1e-8]))
def test_error_and_dense_output_follow_the_tolerance_on_a_stiff_linear_problem(lam, rtol):
    """y' = −λ(y − cos t): global error a small multiple of the tolerance. The dense output is the collocation
    polynomial, which interpolates the slow solution cos t through y0 and the 3 stages: besides the
    tolerance, an interpolation error ≤ h⁴/4! · max|θ(θ − c₁)(θ − c₂)(θ − 1)| (< h⁴/1000) per step of size h."""
    exact = lambda t: (lam ** 2 * np.cos(t) + lam * np.sin(t)) / (lam ** 2 + 1) \
        + (1.0 - lam ** 2 / (lam ** 2 + 1)) * np.exp(-lam * t)          # noqa: E731
    sol = dq.integrate(lambda t, y: -lam * (y - np.cos(t)), np.ones(1), (0.0, 2.0), dq.Radau(), rtol=rtol,
                       atol=rtol)
    assert sol.result == dq.ReturnCode.SUCCESS
    assert abs(sol.ys[-1, 0] - exact(2.0)) < 20 * rtol
    times = np.linspace(0.5, 2.0, 7)
    h_max = max(abs(step.h) for step in sol.steps)
    assert np.abs(sol(times)[:, 0] - exact(times)).max() < 50 * rtol + h_max ** 4 / 1000


def test_dense_output_is_the_collocation_polynomial():
    """Dense output on y'' = −y against sin/cos between the steps; continuous across step ends; saveat uses it."""
    f = lambda t, y: np.array([y[1], -y[0]])   # noqa: E731
    sol = dq.integrate(f, np.array([0.0, 1.0]), (0.0, 10.0), dq.Radau(), rtol=1e-9, atol=1e-12)
    times = np.linspace(0.0, 10.0, 201)
    np.testing.assert_allclose(sol(times)[:, 0], np.sin(times), atol=1e-7)
    step = sol.steps[len(sol.steps) // 2]
    inside = step.t + np.array([0.0, 0.3, 0.7, 1.0]) * step.h
    values = np.stack([step.stages(th) for th in (0.0, 0.3, 0.7, 1.0)])
    np.testing.assert_allclose(values[[0, -1]], np.stack([step.y0, step.y1]), atol=1e-15)
    np.testing.assert_allclose(values[:, 0], np.sin(inside), atol=1e-8)
    saved = dq.integrate(f, np.array([0.0, 1.0]), (0.0, 10.0), dq.Radau(), rtol=1e-9, atol=1e-12, saveat=[2.5, 7.5])
    np.testing.assert_allclose(saved.ys[:, 0], np.sin([2.5, 7.5]), atol=1e-7)


def test_gauss_adjoint_on_a_radau_forward_solve():
    """GaussAdjoint integrates on the forward dense output: dL/dk of L = y(1), y' = −k y, against −exp(−k)."""
    k = np.array([0.5])
    sol = dq.integrate(lambda t, y, k: -k * y, np.ones(1), (0.0, 1.0), dq.Radau(), args=(k,), atol=1e-10,
                       rtol=1e-10)
    vjp = lambda t, y, args: (-args[0] * y, lambda a: (-args[0] * a, (-(a * y),)))   # noqa: E731
    dy0, (dk,) = dq.ode_gradients(vjp, sol, np.ones(1), dq.GaussAdjoint())
    np.testing.assert_allclose(dk, -np.exp(-0.5), rtol=1e-6)
    np.testing.assert_allclose(dy0, np.exp(-0.5), rtol=1e-6)


def test_backwards_span_with_saveat():
    wave = dq.integrate(lambda t, y: np.array([np.cos(t)]), np.zeros(1), (3.0, -2.0), dq.Radau(), rtol=1e-9,
                        atol=1e-12, saveat=[1.0, -1.0])
    np.testing.assert_allclose(wave.ys[:, 0], np.sin([1.0, -1.0]) - np.sin(3.0), atol=1e-8)


# ---- failures are codes, never SUCCESS, never an exception with throw=False ----
def test_nan_rhs_is_not_success_and_does_not_raise():
    sol = dq.integrate(lambda t, y: y * np.nan, np.ones(2), (0.0, 1.0), dq.Radau(), throw=False)
    assert sol.result != dq.ReturnCode.SUCCESS
    later = dq.integrate(lambda t, y: -y if t < 0.5 else np.full(2, np.inf), np.ones(2), (0.0, 1.0), dq.Radau(),
                         throw=False)
    assert later.result != dq.ReturnCode.SUCCESS and later.t_final < 0.5
    with pytest.raises(dq.SolveError):
        dq.integrate(lambda t, y: y * np.nan, np.ones(2), (0.0, 1.0), dq.Radau())


@pytest.mark.parametrize("layout", [np.asarray, sp.csr_matrix])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_matrix_that_cannot_be_factored_ends_with_linear_solve_failed(bad, layout):
    """Dense J: LAPACK's factors; sparse J: the shared sparse factorisation (deqcore.ode.sparse_lu)."""
    sol = dq.integrate(lambda t, y: -y, np.ones(2), (0.0, 1.0), dq.Radau(),
                       jac=lambda t, y: layout(np.full((2, 2), bad)), throw=False)
    assert sol.result == dq.ReturnCode.LINEAR_SOLVE_FAILED
    assert "linear solve" in ode_message(sol.result)


# ---- one small dense NumPy system: the compiled host path against the array path ----
def _vdp_jac(t, y, mu=1000.0):
    return np.array([[0.0, 1.0], [-2.0 * mu * y[0] * y[1] - 1.0, mu * (1.0 - y[0] ** 2)]])


@pytest.mark.parametrize("name,use_jac", [("robertson", True), ("robertson", False), ("vdp", True), ("vdp", False),
                                          ("hires", False)])
def test_compiled_single_system_path_takes_the_array_paths_steps(name, use_jac, monkeypatch):
    """Radau's Newton iterations, error estimates and extrapolations of one small dense NumPy system run in
    compiled host kernels calling the BLAS/LAPACK routines the array code reaches (gemm, gemv, dot, d/zgetrf,
    d/zgetrs); the array code (sparse and large systems) must take the same steps with the same evaluations of
    f, and end at the same values."""
    import deqcore.ode.radau as radau

    monkeypatch.setattr(radau, "COMPILED_LOOP", False)     # the driver's loop (tests/test_compiled_loops.py)
    calls = []
    kernel = radau.radau_newton
    monkeypatch.setattr(radau, "radau_newton", lambda *args: calls.append(1) or kernel(*args))
    if name == "robertson":
        problem = (_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), _robertson_jac, dict(rtol=1e-6, atol=1e-10))
    elif name == "vdp":
        problem = (_vdp, np.array([2.0, 0.0]), (0.0, 1000.0), _vdp_jac, dict(rtol=1e-6, atol=1e-6))
    else:                   # one tolerance per component, on a (2, 4)-shaped state
        problem = (lambda t, y: hires(t, y.ravel()).reshape(2, 4), np.asarray(HIRES_Y0, float).reshape(2, 4),
                   (0.0, 321.8122), None, dict(rtol=1e-7, atol=np.geomspace(1e-9, 1e-11, 8).reshape(2, 4)))
    f, y0, span, jac, options = problem

    def solve():
        return dq.integrate(f, y0, span, dq.Radau(), jac=jac if use_jac else None,
                            saveat=np.linspace(*span, 7), **options)
    host = solve()
    assert len(calls) >= host.stats["accepted"]              # the compiled Newton kernel ran every step
    monkeypatch.setattr(radau, "HOST_SYSTEM_LIMIT", 0)      # the array path
    calls.clear()
    arrays = solve()
    assert not calls
    keys = ("num_steps", "accepted", "rejected", "nfev", "njev", "nfactor", "nlinsolve")
    assert {k: host.stats[k] for k in keys} == {k: arrays.stats[k] for k in keys}
    np.testing.assert_allclose(host.ys, arrays.ys, rtol=1e-12, atol=1e-300)


# ---- bad input ----
def test_bad_settings_and_unsupported_problems_are_named():
    for kwargs, error, name in [(dict(jac_rate=1.5), ValueError, "jac_rate"), (dict(jac_rate="x"), TypeError, "jac_rate"),
                                (dict(newton_tol=0.0), ValueError, "newton_tol"),
                                (dict(max_newton_iter=1), ValueError, "max_newton_iter"),
                                (dict(max_newton_iter=3.0), TypeError, "max_newton_iter"),
                                (dict(jac_sparsity=np.ones((2, 3))), ValueError, "jac_sparsity")]:
        with pytest.raises(error, match=name):
            dq.Radau(**kwargs)
    with pytest.raises(ValueError, match="jac_sparsity"):
        dq.integrate(_robertson, np.array([1.0, 0, 0]), (0, 1.0), dq.Radau(jac_sparsity=np.eye(2)))
    with pytest.raises(ValueError, match="batched=False"):
        dq.steady_state(lambda t, u: -u, np.ones((2, 3)), dq.Radau(), batched=True)
    with pytest.raises(ValueError, match="jac must return an array of shape \\(3, 3\\)"):
        dq.integrate(_robertson, np.array([1.0, 0, 0]), (0.0, 1.0), dq.Radau(), jac=lambda t, y: np.eye(2))


def test_the_compiled_loop_is_one_machine_code_for_every_problem():
    """The compiled loop (one small dense float64 system) and its helpers are compiled once whatever the
    system's size, Jacobian, tolerances, direction or steady state: Numba compiles a function once per
    argument types (read-only arrays included), and once per constant argument when callers pass different
    ones (a flag, a code, a buffer index); each compilation costs the first solve seconds."""
    from deqcore.ode import radau_machine
    solve_every_compile_case(dq.Radau())
    assert dq.steady_state(_robertson, np.array([1.0, 0.0, 0.0]), dq.Radau(), atol=1e-8, rtol=1e-6).success
    assert len(radau_machine.radau_run.signatures) == 1
    for helper in (radau_machine._reject, radau_machine._reject_newton):   # compiled here unless cached on disk
        assert len(helper.signatures) <= 1, helper.__name__
