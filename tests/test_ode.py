"""ODE integration: tableaus, convergence orders, agreement with SciPy, dense output, steady states,
the stiff method, bad input and return codes."""

from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.integrate import solve_ivp

import deqcore as dq
from deqcore.ode.tableaus import BS3, TSIT5

EXPLICIT = [dq.Tsit5(), dq.VCAB3(), dq.VCABM3()]
ALL = EXPLICIT + [dq.Rodas3()]


def _order_conditions(w, a, c, order):
    """Residuals of the Runge–Kutta order conditions for weights ``w`` up to ``order`` (≤ 5)."""
    ac = a @ c
    conds = [w.sum() - 1, w @ c - 1 / 2]
    if order >= 3:
        conds += [w @ c**2 - 1 / 3, w @ ac - 1 / 6]
    if order >= 4:
        conds += [w @ c**3 - 1 / 4, w @ (c * ac) - 1 / 8, w @ a @ c**2 - 1 / 12, w @ a @ ac - 1 / 24]
    if order >= 5:
        conds += [w @ c**4 - 1 / 5, w @ (c**2 * ac) - 1 / 10, w @ ac**2 - 1 / 20,
                  w @ (c * (a @ c**2)) - 1 / 15,
                  w @ a @ c**3 - 1 / 20, w @ (c * (a @ ac)) - 1 / 30, w @ a @ (c * ac) - 1 / 40,
                  w @ a @ a @ c**2 - 1 / 60, w @ a @ a @ ac - 1 / 120]
    return np.abs(conds)


@pytest.mark.parametrize("tab", [TSIT5, BS3], ids=["Tsit5", "BS3"])
def test_tableau_order_conditions(tab):
    np.testing.assert_allclose(tab.a.sum(axis=1), tab.c, atol=1e-14)
    assert _order_conditions(tab.b, tab.a, tab.c, tab.order).max() < 1e-12
    b_hat = tab.b - tab.b_err
    assert _order_conditions(b_hat, tab.a, tab.c, tab.error_order).max() < 1e-12
    # the embedded pair is genuinely of lower order
    assert _order_conditions(b_hat, tab.a, tab.c, tab.error_order + 1).max() > 1e-5


def test_tsit5_interpolant_matches_weights_at_ends():
    np.testing.assert_allclose(TSIT5.interpolation_weights(1.0), TSIT5.b, atol=1e-13)
    np.testing.assert_allclose(TSIT5.interpolation_weights(0.0), 0.0, atol=1e-15)


def _decay(t, y):
    return -y


def _oscillator(t, y):
    return np.array([y[1], -y[0]])


def _logistic(t, y):
    return y * (1.0 - y)


PROBLEMS = {
    "decay": (_decay, np.array([1.0]), 2.0, lambda t: np.array([np.exp(-t)])),
    "oscillator": (_oscillator, np.array([0.0, 1.0]), 6.0, lambda t: np.array([np.sin(t), np.cos(t)])),
    "logistic": (_logistic, np.array([0.1]), 4.0, lambda t: np.array([0.1 / (0.1 + 0.9 * np.exp(-t))])),
}


@pytest.mark.parametrize("name", PROBLEMS)
@pytest.mark.parametrize("solver,order",
                         [(dq.Tsit5(), 5), (dq.VCAB3(), 3), (dq.VCABM3(), 3), (dq.Rodas3(), 3)],
                         ids=["Tsit5", "VCAB3", "VCABM3", "Rodas3"])
def test_convergence_order_from_tolerance_sweep(name, solver, order):
    """With local error ∝ h^(q+1) controlled to tol, the global error of an order-p method scales like
    tol^(p/(q+1)) and the work like tol^(−1/(q+1)): the slope of log(error) against log(steps) is −p."""
    rhs, y0, t1, exact = PROBLEMS[name]
    errors, steps = [], []
    for tol in (1e-5, 1e-7, 1e-9):
        sol = dq.integrate(rhs, y0, (0.0, t1), solver, atol=tol, rtol=tol)
        errors.append(np.abs(sol.ys[-1] - exact(t1)).max())
        steps.append(sol.stats["accepted"])
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope > order - 0.7, (errors, steps)
    assert errors[-1] < 1e-6


@pytest.mark.parametrize("solver", EXPLICIT, ids=lambda s: type(s).__name__)
def test_agrees_with_solve_ivp_at_tight_tolerance(solver):
    f = lambda t, y: np.array([y[1], (1 - y[0] ** 2) * y[1] - y[0]])  # Van der Pol, mu = 1
    ref = solve_ivp(f, (0, 5), [2.0, 0.0], method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
    sol = dq.integrate(f, np.array([2.0, 0.0]), (0.0, 5.0), solver, atol=1e-10, rtol=1e-10)
    np.testing.assert_allclose(sol.ys[-1], ref, atol=5e-7 if solver != dq.Tsit5() else 1e-8)
    assert sol.result == dq.ReturnCode.SUCCESS and sol.ts[-1] == 5.0


@pytest.mark.parametrize("tol", [1e-4, 1e-6])
def test_tsit5_needs_no_more_evaluations_than_rk45_at_the_same_tolerance(tol):
    f = lambda t, y: np.array([y[1], (1 - y[0] ** 2) * y[1] - y[0]])
    ref = solve_ivp(f, (0, 10), [2.0, 0.0], method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
    r = solve_ivp(f, (0, 10), [2.0, 0.0], method="RK45", rtol=tol, atol=tol)
    sol = dq.integrate(f, np.array([2.0, 0.0]), (0.0, 10.0), atol=tol, rtol=tol)
    assert sol.stats["nfev"] <= r.nfev
    assert np.abs(sol.ys[-1] - ref).max() <= np.abs(r.y[:, -1] - ref).max()


@pytest.mark.parametrize("solver,tol", [(dq.Tsit5(), 1e-7), (dq.VCABM3(), 1e-5), (dq.Rodas3(), 1e-5)],
                         ids=["Tsit5", "VCABM3", "Rodas3"])
def test_dense_output_and_saveat(solver, tol):
    sol = dq.integrate(_oscillator, np.array([0.0, 1.0]), (0.0, 6.0), solver, atol=1e-9, rtol=1e-9)
    t = np.linspace(0.0, 6.0, 57)
    np.testing.assert_allclose(sol(t)[:, 0], np.sin(t), atol=tol)
    saved = dq.integrate(_oscillator, np.array([0.0, 1.0]), (0.0, 6.0), solver, atol=1e-9, rtol=1e-9,
                         saveat=t)
    np.testing.assert_array_equal(saved.ts, t)
    np.testing.assert_allclose(saved.ys[:, 1], np.cos(t), atol=tol)


def test_tsit5_interpolant_is_fourth_order():
    """Interpolation error inside fixed-size steps shrinks like h^5 (a 4th-order interpolant)."""
    errs = []
    for h in (0.2, 0.1):
        sol = dq.integrate(_decay, np.array([1.0]), (0.0, 1.0), dt0=h, atol=1e3, rtol=1e3, max_steps=100)
        t = np.array([0.5 * h])
        errs.append(abs(sol(t)[0, 0] - np.exp(-t[0])) - abs(sol.ys[1, 0] - np.exp(-h)) * 0.5)
    assert np.log2(abs(errs[0]) / abs(errs[1])) > 4.5


@pytest.mark.parametrize("solver", ALL, ids=lambda s: type(s).__name__)
def test_backwards_integration(solver):
    y3 = np.array([np.sin(3.0), np.cos(3.0)])
    sol = dq.integrate(_oscillator, y3, (3.0, 0.0), solver, atol=1e-9, rtol=1e-9)
    assert sol.ts[0] == 3.0 and sol.ts[-1] == 0.0 and np.all(np.diff(sol.ts) < 0)
    np.testing.assert_allclose(sol.ys[-1], [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(sol(1.5), [np.sin(1.5), np.cos(1.5)], atol=1e-5)


def test_args_and_float32():
    sol = dq.integrate(lambda t, y, k: -k * y, np.ones(3, dtype=np.float32), (0.0, 1.0), args=(2.0,))
    assert sol.ys.dtype == np.float32
    np.testing.assert_allclose(sol.ys[-1], np.exp(-2.0), rtol=1e-3)


def _stable_system(rng, B, n):
    M = rng.standard_normal((B, n, n)) / np.sqrt(n)
    shift = np.abs(np.linalg.eigvals(M)).max(axis=-1) + 0.5
    return M - shift[:, None, None] * np.eye(n), rng.standard_normal((B, n))


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), solver=st.sampled_from(ALL))
def test_steady_state_of_stable_linear_system_is_the_linear_solve(seed, n, solver):
    rng = np.random.default_rng(seed)
    A, b = _stable_system(rng, 1, n)
    sol = dq.steady_state(lambda t, u: A[0] @ u + b[0], np.zeros(n), solver, atol=1e-8, rtol=1e-8,
                          max_steps=20_000)
    exact = np.linalg.solve(A[0], -b[0])
    # the steady-state test: max|f(u)| ≤ atol + rtol·max|f(u0)|, on the value returned
    tol = 1e-8 * (1 + np.abs(b[0]).max())
    assert sol.success and sol.residual <= tol
    np.testing.assert_allclose(sol.residual, np.abs(A[0] @ sol.value + b[0]).max(), rtol=1e-6, atol=1e-15)
    # |u − u*|₂ ≤ |A⁻¹|₂ · |f(u)|₂ ≤ |A⁻¹|₂ · √n · tol
    bound = 1.01 * np.linalg.norm(np.linalg.inv(A[0]), 2) * np.sqrt(n) * tol
    np.testing.assert_allclose(sol.value, exact, atol=bound)


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 5), n=st.integers(1, 5),
       solver=st.sampled_from([dq.VCABM3(), dq.VCAB3(), dq.Tsit5()]))
def test_batched_steady_state_equals_unbatched_solves(seed, B, n, solver):
    rng = np.random.default_rng(seed)
    A, b = _stable_system(rng, B, n)
    batched = dq.steady_state(lambda t, u: np.einsum("bij,bj->bi", A, u) + b, np.zeros((B, n)), solver,
                              atol=1e-8, rtol=1e-8, batched=True, max_steps=20_000)
    assert batched.success.all() and batched.stats["nfev_per_sample"].shape == (B,)
    for i in range(B):
        single = dq.steady_state(lambda t, u: A[i] @ u + b[i], np.zeros(n), solver, atol=1e-8, rtol=1e-8,
                                 max_steps=20_000)
        # each sample is controlled on its own: only round-off (batched matmul vs matvec) differs, which can
        # flip a borderline accept/reject; both stay within the tolerance of the same steady state
        np.testing.assert_allclose(batched.value[i], single.value, rtol=1e-6, atol=1e-6)
        assert batched.stats["nfev_per_sample"][i] <= batched.stats["nfev"]
    assert batched.stats["nfev"] == batched.stats["nfev_per_sample"].max()


def test_batched_steady_state_freezes_converged_samples_and_reports_codes():
    A = np.array([-np.eye(2), [[0.0, 1.0], [-1.0, 0.0]]])  # sample 1 oscillates forever
    b = np.array([[1.0, 1.0], [0.0, 0.0]])
    rhs = lambda t, u: np.einsum("bij,bj->bi", A, u) + b
    sol = dq.steady_state(rhs, np.ones((2, 2)) * 0.5, atol=1e-6, rtol=1e-6, batched=True, max_steps=200,
                          throw=False)
    assert sol.codes == [dq.ReturnCode.SUCCESS, dq.ReturnCode.MAX_STEPS]
    np.testing.assert_allclose(sol.value[0], 1.0, atol=1e-5)
    assert sol.stats["nfev_per_sample"][0] < sol.stats["nfev_per_sample"][1] == sol.stats["nfev"]
    assert sol.residual[0] <= 2e-6 < sol.residual[1]
    with pytest.raises(dq.SolveError, match="MAX_STEPS"):
        dq.steady_state(rhs, np.ones((2, 2)) * 0.5, batched=True, max_steps=200)


def _robertson(t, y):
    return np.array([-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                     3e7 * y[1] ** 2])


@lru_cache(None)
def _robertson_radau_100():
    """y(100) of Robertson from SciPy's Radau at rtol 1e-11, solved once for the three linear solvers."""
    return solve_ivp(_robertson, (0, 100.0), [1.0, 0, 0], method="Radau", rtol=1e-11, atol=1e-13).y[:, -1]


@pytest.mark.parametrize("linear_solver", [dq.LU(), "jac", dq.GMRES(rtol=1e-10, restart=3)],
                         ids=["LU", "jac", "GMRES"])
def test_rodas3_on_robertson_against_radau(linear_solver):
    jac = None
    if linear_solver == "jac":
        linear_solver = dq.LU()
        jac = lambda t, y: np.array([[-0.04, 1e4 * y[2], 1e4 * y[1]],
                                     [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]], [0.0, 6e7 * y[1], 0.0]])
    ref = _robertson_radau_100()
    sol = dq.integrate(_robertson, np.array([1.0, 0, 0]), (0.0, 100.0), dq.Rodas3(linear_solver),
                       atol=1e-10, rtol=1e-6, jac=jac)
    np.testing.assert_allclose(sol.ys[-1], ref, rtol=2e-5)
    assert sol.stats["accepted"] < 1000
    if jac is not None:
        assert sol.stats["nfev"] < 10 * sol.stats["accepted"]  # no finite-difference Jacobians


def test_rodas3_is_l_stable():
    sol = dq.integrate(lambda t, y: -1e12 * y, np.ones(1), (0.0, 1.0), dq.Rodas3(), dt0=0.5, atol=1e-3,
                       rtol=1e-3)
    assert abs(sol.ys[1, 0]) < 1e-9


def test_rodas3_batched_steady_state():
    rng = np.random.default_rng(1)
    A, b = _stable_system(rng, 3, 4)
    A = A * np.array([1.0, 100.0, 1e4])[:, None, None]  # increasingly stiff samples
    sol = dq.steady_state(lambda t, u: np.einsum("bij,bj->bi", A, u) + b, np.zeros((3, 4)), dq.Rodas3(),
                          atol=1e-7, rtol=1e-7, batched=True)
    np.testing.assert_allclose(sol.value, np.linalg.solve(A, -b[..., None])[..., 0], atol=1e-6)
    assert sol.stats["nfev_per_sample"][2] < sol.stats["nfev_per_sample"][0]  # the stiffest sample relaxes fastest with big steps


# ---- bad input and return codes ----

@pytest.mark.parametrize("kwargs,match", [
    (dict(t_span=(1.0, 1.0)), "t_span"),
    (dict(t_span=(0.0, np.inf)), r"t_span\[1\]"),
    (dict(t_span=(0.0,)), "t_span"),
    (dict(dt0=-0.1), "dt0"),
    (dict(dt0=0.0), "dt0"),
    (dict(saveat=[0.5, 0.2]), "saveat"),
    (dict(saveat=[0.5, 2.0]), "saveat"),
    (dict(y0=np.array([np.nan])), "y0"),
    (dict(atol=-1.0), "atol"),
    (dict(atol=0.0, rtol=0.0), "atol"),
    (dict(max_steps=0), "max_steps"),
])
def test_bad_input_names_the_argument(kwargs, match):
    call = dict(rhs=_decay, y0=np.ones(1), t_span=(0.0, 1.0))
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dq.integrate(**call)


def test_bad_types():
    with pytest.raises(TypeError, match="rhs"):
        dq.integrate(None, np.ones(1), (0.0, 1.0))
    with pytest.raises(TypeError, match="y0"):
        dq.integrate(_decay, np.ones(1, dtype=int), (0.0, 1.0))
    with pytest.raises(TypeError, match="solver"):
        dq.integrate(_decay, np.ones(1), (0.0, 1.0), dq.LU())
    with pytest.raises(ValueError, match="rhs must return"):
        dq.integrate(lambda t, y: np.ones(2), np.ones(1), (0.0, 1.0))
    with pytest.raises(TypeError, match="linear_solver"):
        dq.Rodas3(linear_solver="lu")
    with pytest.raises(TypeError, match="batched"):
        dq.steady_state(_decay, np.ones(1), batched=1)


def test_max_steps_code():
    sol = dq.integrate(_oscillator, np.array([0.0, 1.0]), (0.0, 100.0), max_steps=5, throw=False)
    assert sol.result == dq.ReturnCode.MAX_STEPS and sol.stats["num_steps"] == 5 and sol.t_final < 100
    with pytest.raises(dq.SolveError, match="MAX_STEPS"):
        dq.integrate(_oscillator, np.array([0.0, 1.0]), (0.0, 100.0), max_steps=5)


def test_finite_time_blow_up_is_dt_too_small():
    sol = dq.integrate(lambda t, y: y * y, np.ones(1), (0.0, 2.0), throw=False)
    assert sol.result == dq.ReturnCode.DT_TOO_SMALL and abs(sol.t_final - 1.0) < 1e-3


def test_non_finite_rhs_is_diverged():
    sol = dq.integrate(lambda t, y: y / (0.5 - t) ** 3 if t < 0.5 else np.full_like(y, np.nan), np.ones(1),
                       (0.0, 1.0), throw=False)
    assert sol.result == dq.ReturnCode.DIVERGED
    with pytest.raises(dq.SolveError, match="DIVERGED"):
        dq.integrate(lambda t, y: np.full_like(y, np.inf), np.ones(1), (0.0, 1.0))


# ---- corners: local error control, shared buffers, dtypes, arguments, messages -------------------------------

def _kepler(t, y):
    r3 = (y[0] ** 2 + y[1] ** 2) ** 1.5
    return np.array([y[2], y[3], -y[0] / r3, -y[1] / r3])


@pytest.mark.parametrize("solver", EXPLICIT, ids=lambda s: type(s).__name__)
def test_every_accepted_step_meets_the_tolerance_on_detest_d5(solver):
    """DETEST D5 (eccentricity 0.9) at rtol = atol = 1e-3 through the first pericentre passage: the true local
    error of each accepted step (DOP853 at 1e-12 from the step's start) stays within the tolerance."""
    e, tol = 0.9, 1e-3
    y0 = np.array([1 - e, 0.0, 0.0, np.sqrt((1 + e) / (1 - e))])
    sol = dq.integrate(_kepler, y0, (0.0, 7.0), solver, atol=tol, rtol=tol)
    worst = 0.0
    for step in sol.steps:
        exact = solve_ivp(_kepler, (step.t, step.t + step.h), step.y0, method="DOP853", rtol=1e-12,
                          atol=1e-12).y[:, -1]
        scale = tol + tol * np.maximum(np.abs(step.y0), np.abs(step.y1))
        worst = max(worst, np.sqrt(np.mean(((step.y1 - exact) / scale) ** 2)))
    assert worst <= 1.2, worst


class _Buffered:
    """A right-hand side that writes every result into the same preallocated array."""

    def __init__(self, f, shape):
        self.f, self.out = f, np.empty(shape)

    def __call__(self, t, y):
        self.out[...] = self.f(t, y)
        return self.out


@pytest.mark.parametrize("solver", ALL, ids=lambda s: type(s).__name__)
def test_rhs_returning_one_preallocated_array_gives_the_same_solution(solver):
    fresh = dq.integrate(_oscillator, np.array([0.0, 1.0]), (0.0, 6.0), solver, atol=1e-8, rtol=1e-8)
    shared = dq.integrate(_Buffered(_oscillator, 2), np.array([0.0, 1.0]), (0.0, 6.0), solver, atol=1e-8,
                          rtol=1e-8)
    np.testing.assert_array_equal(shared.ys, fresh.ys)
    np.testing.assert_allclose(shared.ys[-1], [np.sin(6.0), np.cos(6.0)], atol=1e-5)


@pytest.mark.parametrize("solver", EXPLICIT, ids=lambda s: type(s).__name__)
def test_batched_steady_state_with_one_preallocated_array(solver):
    k = np.array([[1.0], [3.0]])
    f = lambda t, u: -k * (u - 2.0) + 0.1 * np.sin(u)  # noqa: E731
    fresh = dq.steady_state(f, np.zeros((2, 3)), solver, atol=1e-9, rtol=1e-9, batched=True)
    shared = dq.steady_state(_Buffered(f, (2, 3)), np.zeros((2, 3)), solver, atol=1e-9, rtol=1e-9,
                             batched=True)
    np.testing.assert_array_equal(shared.value, fresh.value)
    assert shared.success.all()


def test_float32_state_at_large_times():
    """t is float64 whatever the state's dtype: steps of 0.1 at t = 1e8 are fine."""
    sol = dq.integrate(lambda t, y: -y, np.ones(2, dtype=np.float32), (1e8, 1e8 + 1.0), atol=1e-6, rtol=1e-4)
    assert sol.success and sol.ys.dtype == np.float32
    np.testing.assert_allclose(sol.ys[-1], np.exp(-1.0), rtol=1e-3)


def test_solution_does_not_alias_the_callers_y0():
    y0 = np.ones(2)
    sol = dq.integrate(_decay, y0, (0.0, 1.0))
    y0[:] = 5.0
    np.testing.assert_array_equal(sol.steps[0].y0, [1.0, 1.0])
    np.testing.assert_array_equal(sol.ys[0], [1.0, 1.0])
    assert sol(0.0)[0] == 1.0


@pytest.mark.parametrize("call", [
    lambda: dq.integrate(_decay, np.ones(0), (0.0, 1.0)),
    lambda: dq.steady_state(_decay, np.ones(0)),
    lambda: dq.steady_state(_decay, np.ones((3, 0)), batched=True),
    lambda: dq.steady_state(_decay, np.ones((0, 2)), batched=True),
])
def test_empty_y0_is_refused(call):
    with pytest.raises(ValueError, match="y0"):
        call()


def test_failure_messages_give_ode_advice():
    with pytest.raises(dq.SolveError) as info:
        dq.integrate(_oscillator, np.array([0.0, 1.0]), (0.0, 100.0), max_steps=5)
    message = str(info.value)
    assert "MAX_STEPS" in message and "max_steps" in message and "Rodas5P" in message and "BDF" in message
    assert "Anderson" not in message and "Broyden" not in message
    assert info.value.solution is not None and info.value.solution.t_final < 100
    with pytest.raises(dq.SolveError) as info:
        dq.steady_state(lambda t, u: u * u + 1.0, np.zeros(2))
    assert "Anderson" not in str(info.value) and info.value.solution.value.shape == (2,)


def test_tolerances_below_the_dtype_resolution_are_raised_with_a_warning():
    with pytest.warns(UserWarning, match="rtol"):
        sol = dq.integrate(_decay, np.ones(1), (0.0, 1.0), atol=1e-30, rtol=1e-20)
    assert sol.problem.rtol == 100 * np.finfo(np.float64).eps
    np.testing.assert_allclose(sol.ys[-1], np.exp(-1.0), rtol=1e-12)
    with pytest.warns(UserWarning, match="float32"):
        dq.integrate(_decay, np.ones(1, dtype=np.float32), (0.0, 1.0), rtol=1e-9)


def test_a_tiny_dt0_is_raised_to_the_resolution_of_t():
    sol = dq.integrate(_decay, np.ones(1), (0.0, 1.0), dt0=1e-300, atol=1e-9, rtol=1e-9)
    assert sol.success and abs(sol.ys[-1, 0] - np.exp(-1.0)) < 1e-7


def test_t_span_may_be_an_array():
    sol = dq.integrate(_decay, np.ones(1), np.array([0.0, 1.0]), atol=1e-10, rtol=1e-10)
    assert sol.ts[-1] == 1.0 and abs(sol.ys[-1, 0] - np.exp(-1.0)) < 1e-8
    with pytest.raises(ValueError, match="t_span"):
        dq.integrate(_decay, np.ones(1), np.array([0.0, 1.0, 2.0]))


def test_atol_per_component():
    """y' = −y with components of size 1 and 1e-6: a per-component atol holds the small one to its scale,
    as solve_ivp does with the same array."""
    y0, atol = np.array([1.0, 1e-6]), np.array([1e-4, 1e-12])
    exact = y0 * np.exp(-2.0)
    sol = dq.integrate(_decay, y0, (0.0, 2.0), atol=atol, rtol=1e-8)
    ref = solve_ivp(_decay, (0.0, 2.0), y0, rtol=1e-8, atol=atol).y[:, -1]
    err, err_ref = np.abs(sol.ys[-1] - exact), np.abs(ref - exact)
    assert err[1] <= 1e-11 and err[1] <= 10 * max(err_ref[1], 1e-14)
    loose = dq.integrate(_decay, y0, (0.0, 2.0), atol=1e-4, rtol=1e-8)
    assert sol.stats["nfev"] > loose.stats["nfev"]                  # the small component costs steps
    for solver in (dq.VCABM3(), dq.Rodas3()):
        other = dq.integrate(_decay, y0, (0.0, 2.0), solver, atol=atol, rtol=1e-8)
        assert abs(other.ys[-1, 1] - exact[1]) <= 1e-10
    with pytest.raises(ValueError, match="atol"):
        dq.integrate(_decay, y0, (0.0, 1.0), atol=np.ones(3))
    with pytest.raises(ValueError, match="atol"):
        dq.integrate(_decay, y0, (0.0, 1.0), atol=np.array([1e-6, -1.0]))


def test_dense_output_builds_its_step_index_once():
    sol = dq.integrate(_oscillator, np.array([0.0, 1.0]), (0.0, 6.0))
    sol(1.0)
    ends = sol._ends
    sol(np.array([2.0, 3.0]))
    assert sol._ends is ends and ends[1].size == len(sol.steps)


def test_ode_solution_follows_the_solution_contract():
    sol = dq.integrate(_oscillator, np.array([0.0, 1.0]), (0.0, 2.0), atol=1e-9, rtol=1e-9)
    assert sol.success and sol.result == dq.ReturnCode.SUCCESS and sol.raise_if_failed() is sol
    np.testing.assert_array_equal(sol.value, sol.ys[-1])
    np.testing.assert_allclose(sol.residual, np.abs(_oscillator(2.0, sol.value)).max(), rtol=1e-12)
    assert "nfev" in sol.stats and "nfe" not in sol.stats and "ys" not in repr(sol)
    failed = dq.integrate(_oscillator, np.array([0.0, 1.0]), (0.0, 50.0), max_steps=3, throw=False)
    with pytest.raises(dq.SolveError) as info:
        failed.raise_if_failed()
    assert info.value.solution is failed and info.value.result == dq.ReturnCode.MAX_STEPS
    steady = dq.steady_state(_decay, np.ones((2, 2)), batched=True)
    assert set(steady.stats) >= {"nfev", "nfev_per_sample", "accepted_per_sample"}
    assert "nfe" not in steady.stats


# ---- steady states: a runaway is not a steady state; one sample never moves another -------------------------

@pytest.mark.parametrize("solver", ALL, ids=lambda s: type(s).__name__)
def test_a_runaway_is_not_a_steady_state(solver):
    sol = dq.steady_state(lambda t, u: np.ones_like(u), np.zeros(2), solver, throw=False)
    assert sol.result != dq.ReturnCode.SUCCESS
    # batched: a relaxing sample beside the runaway one
    rhs = lambda t, u: np.stack([1.0 - u[0], np.ones_like(u[1])])  # noqa: E731
    sol = dq.steady_state(rhs, np.zeros((2, 2)), solver, batched=True, throw=False)
    assert sol.codes[0] == dq.ReturnCode.SUCCESS and sol.codes[1] != dq.ReturnCode.SUCCESS
    np.testing.assert_allclose(sol.value[0], 1.0, atol=1e-4)


def _relaxation(k, c):
    """u' = −k (u − c) + 0.2 sin(u), elementwise per sample (k, c of shape (B, 1)); k < 0 gives NaN."""
    return lambda t, u: -k * (u - c) + 0.2 * np.sin(u) + 0.0 * np.sqrt(k)


@pytest.mark.parametrize("solver", EXPLICIT, ids=lambda s: type(s).__name__)
def test_each_batched_sample_equals_its_own_solve_beside_stiff_and_nan_neighbours(solver):
    k = np.array([[1.0], [2e3], [-1.0], [0.5]])      # a normal, a stiff, a NaN-producing and a slow sample
    c = np.array([[1.0], [2.0], [0.0], [-1.5]])
    y0 = np.zeros((4, 3))
    with np.errstate(invalid="ignore"):
        batched = dq.steady_state(_relaxation(k, c), y0, solver, atol=1e-8, rtol=1e-8, batched=True,
                                  max_steps=300, throw=False)
        assert batched.codes[2] == dq.ReturnCode.DIVERGED
        for i in (0, 1, 3):
            single = dq.steady_state(_relaxation(k[i], c[i]), y0[i], solver, atol=1e-8, rtol=1e-8,
                                     max_steps=300, throw=False)
            assert batched.codes[i] == single.result
            np.testing.assert_allclose(batched.value[i], single.value, rtol=1e-14, atol=1e-15)
            assert batched.stats["accepted_per_sample"][i] == single.stats["accepted"]
