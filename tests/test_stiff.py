"""Rosenbrock methods (Rodas3, Rodas4, Rodas5P): order conditions of the tableaus, observed order, stiff
problems against SciPy's Radau/BDF, failed linear solves, blow-up, sparse Jacobians, bad input."""

from functools import lru_cache
from itertools import product

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.integrate import solve_ivp

import deqcore as dq
from deqcore.ode.rosenbrock_tableaus import RODAS3, RODAS4, RODAS5P

METHODS = [dq.Rodas3, dq.Rodas4, dq.Rodas5P]
TABLEAUS = [RODAS3, RODAS4, RODAS5P]


# ---- the tableaus: Rosenbrock order conditions on rooted trees (Hairer–Wanner II, §IV.7) ----
@lru_cache(None)
def _trees(order):
    """Rooted trees with ``order`` vertices, each a sorted tuple of child trees."""
    if order == 1:
        return [()]

    def partitions(n, largest):
        if n == 0:
            yield []
            return
        for p in range(min(n, largest), 0, -1):
            for rest in partitions(n - p, p):
                yield [p] + rest

    found = set()
    for sizes in partitions(order - 1, order - 1):
        for kids in product(*[_trees(k) for k in sizes]):
            found.add(tuple(sorted(kids)))
    return sorted(found)


def _size(t):
    return 1 + sum(_size(c) for c in t)


def _density(t):
    out = _size(t)
    for c in t:
        out *= _density(c)
    return out


def _phi(t, alpha, beta):
    """Elementary weights: a vertex with one child couples through β = α + Γ (f' and J both act), a vertex
    with several children through α alone."""
    if not t:
        return np.ones(alpha.shape[0])
    if len(t) == 1:
        return beta @ _phi(t[0], alpha, beta)
    out = np.ones(alpha.shape[0])
    for c in t:
        out = out * (alpha @ _phi(c, alpha, beta))
    return out


def _max_residual(weights, alpha, beta, order):
    return max(abs(weights @ _phi(t, alpha, beta) - 1.0 / _density(t)) for t in _trees(order))


def test_tree_counts():
    assert [len(_trees(k)) for k in range(1, 7)] == [1, 1, 2, 4, 9, 20]


@pytest.mark.parametrize("tab", TABLEAUS, ids=lambda t: t.name)
def test_order_conditions_hold_to_the_claimed_order_and_no_further(tab):
    alpha, Gamma, b, b_hat = tab.standard()
    beta = alpha + Gamma
    np.testing.assert_allclose(alpha.sum(axis=1), tab.c, atol=1e-13)      # c_i = Σ α_ij
    np.testing.assert_allclose(Gamma.sum(axis=1), tab.d, atol=1e-13)      # d_i = Σ γ_ij
    np.testing.assert_allclose(np.diag(Gamma), tab.gamma, atol=1e-15)
    for weights, p in ((b, tab.order), (b_hat, tab.embedded_order)):
        for k in range(1, p + 1):
            assert _max_residual(weights, alpha, beta, k) < 1e-12, (tab.name, p, k)
        assert _max_residual(weights, alpha, beta, p + 1) > 1e-4            # not accidentally higher
    # stiffly accurate: y_new = last stage argument + last increment; L-stable: R(∞) = 0
    assert np.allclose(tab.m[:-1], tab.a[-1, :-1]) and tab.m[-1] == 1.0
    z = -1e12
    R = 1 + z * b @ np.linalg.solve(np.eye(tab.stages) - z * beta, np.ones(tab.stages))
    assert abs(R) < 1e-6


# ---- observed order on a smooth problem ----
def _logistic(t, y):
    return y * (1.0 - y)


@pytest.mark.parametrize("method,order", [(dq.Rodas3, 3), (dq.Rodas4, 4), (dq.Rodas5P, 5)],
                         ids=["Rodas3", "Rodas4", "Rodas5P"])
def test_observed_order_with_fixed_steps(method, order):
    """Fixed steps taken with the stepper itself on a non-autonomous nonlinear problem with a known solution
    (y' = −y² + ∂/∂t of the exact solution): the global error falls like h^p."""
    from deqcore.ode.base import Evaluator

    exact = lambda t: np.array([1.0 / (1.0 + t) + 0.5 * np.sin(3 * t)])                        # noqa: E731
    rhs = lambda t, y: -y * y + exact(t) ** 2 - 1.0 / (1.0 + t) ** 2 + 1.5 * np.cos(3 * t)    # noqa: E731
    errors = []
    for n in (10, 20, 40):
        ev = Evaluator(np, rhs, (), batched=False, autonomous=False, shape=(1,), dtype=np.float64)
        stepper = method().stepper(ev, jac=lambda t, y: np.array([[-2.0 * y[0]]]))
        t, y, h = 0.0, exact(0.0), 1.0 / n
        stepper.start(t, y, rhs(t, y))
        for _ in range(n):
            trial = stepper.attempt(t, y, rhs(t, y), h, None, (1e-6, 1e-6))
            stepper.accept(trial, None, t + h)
            t, y = t + h, trial.y1
        errors.append(abs(y[0] - exact(1.0)[0]))
    slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(slopes > order - 0.35), (errors, slopes)


# ---- stiff problems against SciPy ----
def _robertson(t, y):
    return np.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
                     0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2])


def _robertson_jac(t, y):
    return np.array([[-0.04, 1e4 * y[2], 1e4 * y[1]],
                     [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]], [0.0, 6e7 * y[1], 0.0]])


@lru_cache(None)
def solve_every_compile_case(method):
    """Integrate with ``method`` the problems that would each compile a stiff solver's loop anew if its types
    depended on them: one unknown forwards and backwards in time, Robertson with a scalar and a per-component
    atol, and with its analytic Jacobian (each solve must succeed)."""
    y0 = np.array([1.0, 0.0, 0.0])
    for rhs, start, span, jac, atol in ((lambda t, y: -1e3 * (y - np.cos(t)), np.zeros(1), (0.0, 1.0), None, 1e-10),
                                        (lambda t, y: 1e3 * (y - np.cos(t)), np.zeros(1), (1.0, 0.0), None, 1e-10),
                                        (_robertson, y0, (0.0, 1.0), None, 1e-10),
                                        (_robertson, y0, (0.0, 1.0), None, np.array([1e-8, 1e-12, 1e-8])),
                                        (_robertson, y0, (0.0, 1.0), _robertson_jac, 1e-10)):
        assert dq.integrate(rhs, start, span, method, jac=jac, rtol=1e-6, atol=atol).success


def _robertson_ref(t1):
    """y(t1) of Robertson from SciPy's Radau at rtol 1e-12 with the analytic Jacobian (a copy of the one solve
    per t1 made in this process: 2–6 s each, and several files compare against the same t1)."""
    return _robertson_ref_once(float(t1)).copy()


@lru_cache(None)
def _robertson_ref_once(t1):
    return solve_ivp(_robertson, (0, t1), [1.0, 0, 0], method="Radau", rtol=1e-12, atol=1e-20,
                     jac=_robertson_jac).y[:, -1]


@pytest.mark.parametrize("method,rtol", [(dq.Rodas3, 1e-4), (dq.Rodas5P, 1e-4), (dq.Rodas5P, 1e-6)],
                         ids=["Rodas3-1e-4", "Rodas5P-1e-4", "Rodas5P-1e-6"])
def test_robertson_to_1e11_with_finite_difference_jacobians(method, rtol):
    """The finite-difference increments follow the tiny y2 (an increment of 1.5e-8 gave 900% error)."""
    ref = _robertson_ref(1e11)
    sol = dq.integrate(_robertson, np.array([1.0, 0, 0]), (0.0, 1e11), method(), rtol=rtol, throw=False)
    assert sol.result == dq.ReturnCode.SUCCESS                         # default atol = 1e-6
    np.testing.assert_allclose(sol.ys[-1], ref, rtol=100 * rtol, atol=1e-5)
    analytic = dq.integrate(_robertson, np.array([1.0, 0, 0]), (0.0, 1e11), method(), rtol=rtol,
                            jac=_robertson_jac)
    np.testing.assert_allclose(sol.ys[-1], analytic.ys[-1], rtol=100 * rtol, atol=1e-5)


def _vdp(t, y, mu=1000.0):
    return np.array([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


def test_rodas5p_van_der_pol_against_radau_and_costs_less_than_rodas3():
    ref = solve_ivp(_vdp, (0, 1000.0), [2.0, 0.0], method="Radau", rtol=1e-11, atol=1e-11).y[:, -1]
    cost = {}
    for method in (dq.Rodas3, dq.Rodas5P):
        sol = dq.integrate(_vdp, np.array([2.0, 0.0]), (0.0, 1000.0), method(autonomous=True), rtol=1e-6,
                           atol=1e-6)
        np.testing.assert_allclose(sol.ys[-1], ref, rtol=1e-4, atol=1e-4)
        cost[method] = sol.stats["nfev"]
    assert cost[dq.Rodas5P] < 0.7 * cost[dq.Rodas3]


# ---- failures are reported, never SUCCESS ----
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("solver", [dq.LU(), dq.GMRES()], ids=["LU", "GMRES"])
def test_nan_rhs_is_not_success_and_does_not_raise(method, solver):
    sol = dq.integrate(lambda t, y: y * np.nan, np.ones(2), (0.0, 1.0), method(linear_solver=solver),
                       throw=False)
    assert sol.result != dq.ReturnCode.SUCCESS
    later = dq.integrate(lambda t, y: -y if t < 0.5 else np.full(2, np.inf), np.ones(2), (0.0, 1.0),
                         method(linear_solver=solver), throw=False)
    assert later.result != dq.ReturnCode.SUCCESS and later.t_final < 0.5
    with pytest.raises(dq.SolveError):
        dq.integrate(lambda t, y: y * np.nan, np.ones(2), (0.0, 1.0), method(linear_solver=solver))


def test_non_finite_user_jacobian_is_not_success():
    sol = dq.integrate(lambda t, y: -y, np.ones(2), (0.0, 1.0), dq.Rodas5P(),
                       jac=lambda t, y: np.full((2, 2), np.nan), throw=False)
    assert sol.result == dq.ReturnCode.LINEAR_SOLVE_FAILED      # the stage matrix cannot be factored


def test_singular_stage_matrix_rejects_the_step():
    """J = I/(hγ) exactly for the first step size tried: the stage matrix is singular there; the step must
    be rejected and retried, and the solution still be right."""
    h0 = 0.1
    lam = 1.0 / (h0 * RODAS5P.gamma)
    sol = dq.integrate(lambda t, y: lam * (y - 1.0) + 0.0 * y, np.ones(1) * 1.0, (0.0, 0.3), dq.Rodas5P(),
                       jac=lambda t, y: np.array([[lam]]), dt0=h0, atol=1e-8, rtol=1e-8, throw=False)
    assert sol.result == dq.ReturnCode.SUCCESS and sol.stats["rejected"] >= 1
    np.testing.assert_allclose(sol.ys[-1], [1.0])


def test_batched_steady_state_isolates_a_nan_sample():
    rng = np.random.default_rng(3)
    A = -np.eye(3)[None] * np.array([1.0, 10.0, 100.0])[:, None, None] + 0.1 * rng.standard_normal((3, 3, 3))
    b = rng.standard_normal((3, 3))

    def rhs(t, u):
        out = np.einsum("bij,bj->bi", A, u) + b
        out[1] = np.where(np.abs(u[1]).max() > 0.05, np.nan, out[1])      # sample 1 turns NaN
        return out

    for linear_solver in (dq.LU(), dq.GMRES(rtol=1e-10)):
        sol = dq.steady_state(rhs, np.zeros((3, 3)), dq.Rodas5P(linear_solver), batched=True, atol=1e-9,
                              rtol=1e-9, max_steps=300, throw=False)
        codes = np.asarray(sol.result)
        assert codes[1] != dq.ReturnCode.SUCCESS and codes[0] == codes[2] == dq.ReturnCode.SUCCESS
        for k in (0, 2):
            np.testing.assert_allclose(sol.value[k], np.linalg.solve(A[k], -b[k]), atol=1e-7)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("solver", [dq.LU(), dq.GMRES()], ids=["LU", "GMRES"])
def test_finite_time_blow_up_is_not_stepped_over(method, solver):
    """y' = y², y(0) = 1 blows up at t = 1; no answer on (0, 2) is right."""
    for tol in (1e-3, 1e-6):
        sol = dq.integrate(lambda t, y: y * y, np.ones(1), (0.0, 2.0), method(solver), atol=tol, rtol=tol,
                           throw=False)
        assert sol.result != dq.ReturnCode.SUCCESS and sol.t_final < 1.01
    ok = dq.integrate(lambda t, y: y * y, np.ones(1), (0.0, 0.9), method(solver), atol=1e-8, rtol=1e-8)
    np.testing.assert_allclose(ok.ys[-1], [10.0], rtol=1e-5)


def test_rhs_returning_one_preallocated_buffer_gives_the_same_answer():
    buf = np.empty(3)

    def robertson_into_buffer(t, y):
        buf[:] = _robertson(t, y)
        return buf

    for method in (dq.Rodas3(), dq.Rodas5P(), dq.Rodas4(linear_solver=dq.GMRES(rtol=1e-10))):
        fresh = dq.integrate(_robertson, np.array([1.0, 0, 0]), (0.0, 5.0), method, rtol=1e-6, atol=1e-10,
                             dt0=1e-6)
        reused = dq.integrate(robertson_into_buffer, np.array([1.0, 0, 0]), (0.0, 5.0), method, rtol=1e-6,
                              atol=1e-10, dt0=1e-6)
        np.testing.assert_array_equal(fresh.ys[-1], reused.ys[-1])
    bbuf = np.empty((2, 3))
    A = -np.diag([1.0, 10.0, 100.0])
    fresh = dq.steady_state(lambda t, u: u @ A.T + 1.0, np.zeros((2, 3)), dq.Rodas5P(), batched=True)

    def batched_into_buffer(t, u):
        bbuf[:] = u @ A.T + 1.0
        return bbuf
    reused = dq.steady_state(batched_into_buffer, np.zeros((2, 3)), dq.Rodas5P(), batched=True)
    np.testing.assert_array_equal(fresh.value, reused.value)


# ---- sparse Jacobians ----
def _brusselator_1d(N=32):
    """1-D Brusselator (Hairer–Wanner II, §IV.1), interleaved (u_i, v_i): a band of half-width 2."""
    alpha = 0.02 * (N + 1) ** 2

    def rhs(t, y):
        u, v = y[0::2], y[1::2]
        lap = lambda w, b: np.concatenate([[b], w[:-1]]) - 2 * w + np.concatenate([w[1:], [b]])  # noqa: E731
        out = np.empty_like(y)
        out[0::2] = 1 + u * u * v - 4 * u + alpha * lap(u, 1.0)
        out[1::2] = 3 * u - u * u * v + alpha * lap(v, 3.0)
        return out
    x = np.arange(1, N + 1) / (N + 1)
    y0 = np.empty(2 * N)
    y0[0::2], y0[1::2] = 1 + np.sin(2 * np.pi * x), 3.0
    i = np.arange(2 * N)
    pattern = np.abs(i[:, None] - i[None, :]) <= 2
    return rhs, y0, pattern


def test_sparse_jacobian_with_column_groups_and_sparse_lu_matches_bdf():
    rhs, y0, pattern = _brusselator_1d()
    ref = solve_ivp(rhs, (0, 10.0), y0, method="BDF", rtol=1e-10, atol=1e-10, jac_sparsity=pattern).y[:, -1]
    dense = dq.integrate(rhs, y0, (0.0, 10.0), dq.Rodas5P(autonomous=True), rtol=1e-6, atol=1e-6)
    sparse = dq.integrate(rhs, y0, (0.0, 10.0), dq.Rodas5P(jac_sparsity=sp.csr_matrix(pattern),
                                                           autonomous=True), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sparse.ys[-1], ref, atol=1e-4)
    np.testing.assert_allclose(sparse.ys[-1], dense.ys[-1], atol=1e-5)
    # 5 groups for a band of half-width 2 (plus rare refinements), against 64 columns
    assert sparse.stats["nfev_jac"] <= 6 * sparse.stats["njev"]
    assert dense.stats["nfev_jac"] >= 64 * dense.stats["njev"]


def test_user_sparse_jacobian_is_factored_sparsely():
    n = 50
    main = -np.linspace(1.0, 1e4, n)
    jac = lambda t, y: sp.diags(main)     # noqa: E731
    sol = dq.integrate(lambda t, y: main * y, np.ones(n), (0.0, 1.0), dq.Rodas5P(), jac=jac, rtol=1e-8,
                       atol=1e-12)
    np.testing.assert_allclose(sol.ys[-1], np.exp(main), rtol=1e-5, atol=1e-11)


# ---- bad input ----
def test_bad_jacobians_and_settings_are_named():
    y0 = np.array([1.0, 0, 0])
    with pytest.raises(ValueError, match="jac must return an array of shape \\(3, 3\\)"):
        dq.integrate(_robertson, y0, (0.0, 1.0), dq.Rodas5P(), jac=lambda t, y: np.eye(2))
    with pytest.raises(TypeError, match="jac must return a floating-point array"):
        dq.integrate(_robertson, y0, (0.0, 1.0), dq.Rodas3(), jac=lambda t, y: np.eye(3, dtype=int))
    with pytest.raises(ValueError, match="jac_sparsity"):
        dq.integrate(_robertson, y0, (0.0, 1.0), dq.Rodas5P(jac_sparsity=np.ones((2, 2))))
    with pytest.raises(ValueError, match="jac_sparsity"):
        dq.Rodas5P(linear_solver=dq.GMRES(), jac_sparsity=np.ones((3, 3)))
    with pytest.raises(TypeError, match="autonomous"):
        dq.Rodas4(autonomous="yes")
    with pytest.raises(TypeError, match="linear_solver"):
        dq.Rodas5P(linear_solver="lu")


# ---- one small dense NumPy system: the compiled host path against the array path ----
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("use_jac", [True, False])
def test_compiled_single_system_path_takes_the_array_paths_steps(method, use_jac, monkeypatch):
    """Rosenbrock steps of one small NumPy system run in compiled host kernels that call the BLAS/LAPACK routines
    NumPy and SciPy call (gemv, getrf, getrs); the array code (which batched and CuPy problems use) must give
    the same numbers, bit for bit (a different summation order would move the steps: the error estimate cancels
    stage increments, and finite-difference increments adapt by thresholds)."""
    import deqcore.ode.rosenbrock as rosenbrock

    def solve():
        return dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e3), method(), rtol=1e-5, atol=1e-10,
                            jac=_robertson_jac if use_jac else None, saveat=np.geomspace(1e-3, 1e3, 13))
    host = solve()
    monkeypatch.setattr(rosenbrock, "HOST_SYSTEM_LIMIT", 0)      # the array path
    arrays = solve()
    assert {k: host.stats[k] for k in ("nfev", "num_steps", "rejected", "njev")} == \
        {k: arrays.stats[k] for k in ("nfev", "num_steps", "rejected", "njev")}
    np.testing.assert_array_equal(host.ys, arrays.ys)


# ---- the stiff problems every implicit method is checked on, with SciPy's Radau at rtol 1e-12 as reference ----
STIFF_TEST_CASES = ("robertson", "vdp", "hires", "brusselator")


def stiff_test_case(name):
    """``(rhs, y0, t_span, integrate keywords, method keywords)`` of one of :data:`STIFF_TEST_CASES`."""
    from deqcore.demos.stiff_problems import HIRES_Y0, hires

    if name == "robertson":
        return _robertson, np.array([1.0, 0, 0]), (0, 1e5), dict(rtol=1e-7, atol=1e-12), {}
    if name == "vdp":
        return _vdp, np.array([2.0, 0.0]), (0, 1000.0), dict(rtol=1e-7, atol=1e-7), {}
    if name == "hires":
        return hires, HIRES_Y0, (0, 321.8122), dict(rtol=1e-8, atol=1e-10), {}
    rhs, y0, pattern = _brusselator_1d()
    return rhs, y0, (0, 10.0), dict(rtol=1e-7, atol=1e-7), dict(jac_sparsity=sp.csr_matrix(pattern))


@lru_cache(None)
def scipy_radau_solution(name):
    """y(t1) of a stiff test case from SciPy's Radau at rtol 1e-12 (Robertson with its analytic Jacobian)."""
    rhs, y0, span, _, method = stiff_test_case(name)
    if name == "robertson":                 # the same solve as _robertson_ref's (shared with other files)
        return _robertson_ref(span[1])
    atol = {"robertson": 1e-20, "hires": 1e-14}.get(name, 1e-12)
    extra = dict(jac=_robertson_jac) if name == "robertson" else {}
    if method:
        extra["jac_sparsity"] = method["jac_sparsity"]
    return solve_ivp(rhs, span, y0, method="Radau", rtol=1e-12, atol=atol, **extra).y[:, -1]


# ---- the unbatched implicit methods alike: blow-up, a reused rhs buffer, backwards spans, steady states ----
#: method and the relative accuracy its tight solves below reach
UNBATCHED_IMPLICIT = {"BDF": (dq.BDF, 1e-5), "Radau": (dq.Radau, 1e-6)}


@pytest.mark.parametrize("name", sorted(UNBATCHED_IMPLICIT))
def test_unbatched_implicit_blow_up_is_not_success(name):
    """y' = y², y(0) = 1 blows up at t = 1."""
    method, accuracy = UNBATCHED_IMPLICIT[name]
    for tol in (1e-3, 1e-6):
        sol = dq.integrate(lambda t, y: y * y, np.ones(1), (0.0, 2.0), method(), atol=tol, rtol=tol, throw=False)
        assert sol.result != dq.ReturnCode.SUCCESS and sol.t_final < 1.01
    ok = dq.integrate(lambda t, y: y * y, np.ones(1), (0.0, 0.9), method(), atol=1e-9, rtol=1e-9)
    np.testing.assert_allclose(ok.ys[-1], [10.0], rtol=accuracy)


@pytest.mark.parametrize("name", sorted(UNBATCHED_IMPLICIT))
def test_unbatched_implicit_rhs_reusing_its_buffer_gives_the_same_answer(name):
    method, _ = UNBATCHED_IMPLICIT[name]
    buf = np.empty(3)

    def into_buffer(t, y):
        buf[:] = _robertson(t, y)
        return buf
    fresh = dq.integrate(_robertson, np.array([1.0, 0, 0]), (0.0, 50.0), method(), rtol=1e-6, atol=1e-10)
    reused = dq.integrate(into_buffer, np.array([1.0, 0, 0]), (0.0, 50.0), method(), rtol=1e-6, atol=1e-10)
    np.testing.assert_array_equal(fresh.ys[-1], reused.ys[-1])


@pytest.mark.parametrize("name", sorted(UNBATCHED_IMPLICIT))
def test_unbatched_implicit_backwards_span_and_steady_state(name):
    method, accuracy = UNBATCHED_IMPLICIT[name]
    back = dq.integrate(lambda t, y: -50.0 * y, np.ones(1), (1.0, 0.0), method(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(back.ys[-1], np.exp(50.0), rtol=accuracy)
    A = -np.diag([1.0, 100.0, 1e4])
    sol = dq.steady_state(lambda t, u: A @ u + 1.0, np.zeros(3), method(), atol=1e-10, rtol=1e-10)
    np.testing.assert_allclose(sol.value, np.linalg.solve(A, -np.ones(3)), rtol=1e-8)
