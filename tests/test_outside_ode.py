"""ODE promises on cases the other test files leave out: dense output and ``value`` that never hand out the
solution's own records, a zero ``atol`` on a component that stays zero, a right-hand side that is non-finite at
the start (never called at t = NaN), and ODE adjoints that check the user's ``vjp`` (shape, dtype, non-finite
values) instead of broadcasting it into a wrong gradient, the Adams methods' first step on a fast decay, and
Radau's refusal, naming atol, of a zero atol at a zero start that f moves.
References: analytic solutions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import deqcore as dq

EXPLICIT_AND_ROSENBROCK = [dq.Tsit5(), dq.VCABM3(), dq.Rodas5P()]
EVERY_METHOD = EXPLICIT_AND_ROSENBROCK + [dq.Radau(), dq.BDF()]


def _name(solver):
    return type(solver).__name__


# ------------------------------------------------------------------------------------- dense output, value
@pytest.mark.parametrize("solver", EXPLICIT_AND_ROSENBROCK, ids=_name)
def test_dense_output_and_value_are_new_arrays_not_the_solution_s_records(solver):
    sol = dq.integrate(lambda t, y: -y, np.ones(2), (0.0, 1.0), solver, atol=1e-10, rtol=1e-10)
    inner = float(sol.ts[1])                                   # a step's end: the interpolant's own record
    for t in (0.0, inner, 1.0):
        sol(t)[...] = 99.0                                      # the caller writes into what it got
    sol.value[...] = 77.0
    want = np.exp(-np.array([0.0, inner, 1.0]))
    np.testing.assert_allclose(sol(np.array([0.0, inner, 1.0]))[:, 0], want, rtol=1e-8)
    np.testing.assert_allclose(sol(inner), np.exp(-inner), rtol=1e-8)
    np.testing.assert_allclose(sol.ys[-1], np.exp(-1.0), rtol=1e-8)
    assert sol.value is sol.value and np.all(sol.value == 77.0)  # one array of the caller's, kept


# ---------------------------------------------------------------------------------------- zero atol entries
@pytest.mark.parametrize("solver", EVERY_METHOD, ids=_name)
def test_a_zero_atol_on_a_component_that_stays_zero_is_met_not_a_failure(solver):
    # weights atol + rtol·|y| are 0 where y stays 0: the error there is exactly 0 and passes (it was 0/0:
    # DIVERGED for the explicit methods, ZeroDivisionError in the compiled kernels of the stiff ones)
    sol = dq.integrate(lambda t, y: np.array([0.0, -y[1]]), np.array([0.0, 1.0]), (0.0, 1.0), solver,
                       atol=np.array([0.0, 1e-8]), rtol=1e-6)
    assert sol.success
    assert sol.value[0] == 0.0
    np.testing.assert_allclose(sol.value[1], math.exp(-1.0), rtol=2e-4)


@pytest.mark.parametrize("solver", [dq.Rodas5P(), dq.BDF()], ids=_name)
def test_pure_relative_tolerance_from_a_zero_start_needs_no_zero_increment(solver):
    # atol=0 at y0 = 0: the finite-difference Jacobian's increment factor·max(|y|, atol) was 0 (a division by 0)
    sol = dq.integrate(lambda t, y: 1.0 - 0.5 * y, np.zeros(1), (0.0, 2.0), solver, atol=0.0, rtol=1e-6)
    assert sol.success
    np.testing.assert_allclose(sol.value, 2.0 * (1.0 - math.exp(-1.0)), rtol=1e-4)


# ----------------------------------------------------------------------------- non-finite rhs at the start
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("solver", EVERY_METHOD, ids=_name)
def test_a_rhs_non_finite_at_the_start_is_a_failure_and_never_called_at_t_nan(solver, dtype):
    times = []

    def rhs(t, y):
        times.append(t)
        return np.full(y.shape, np.nan, y.dtype) if t < 0.5 else -y

    sol = dq.integrate(rhs, np.ones(2, dtype), (0.0, 1.0), solver, throw=False)
    assert not sol.success and sol.result in (dq.ReturnCode.DIVERGED, dq.ReturnCode.LINEAR_SOLVE_FAILED)
    assert all(0.0 <= t <= 1.0 for t in times), [t for t in times if not 0.0 <= t <= 1.0][:3]
    np.testing.assert_array_equal(sol.value, np.ones(2, dtype))


# -------------------------------------------------------------------------------------------- ODE adjoints
K = np.array([0.5, 1.5])


def _decay_solution():
    return dq.integrate(lambda t, y, k: -k * y, np.ones(2), (0.0, 1.0), args=(K,), atol=1e-10, rtol=1e-10)


ADJOINTS = [dq.GaussAdjoint(), dq.BacksolveAdjoint(), dq.DiscreteAdjoint()]


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=_name)
def test_ode_gradients_refuse_a_pullback_shaped_or_typed_unlike_the_state_naming_vjp(adjoint):
    sol = _decay_solution()
    short = lambda t, y, args: (-args[0] * y, lambda a: ((-args[0] * a)[:1], (-(a * y),)))   # broadcasts
    narrow = lambda t, y, args: (-args[0] * y, lambda a: ((-args[0] * a).astype(np.float32), (-(a * y),)))
    with pytest.raises(ValueError, match=r"vjp .*shaped like y0 \(2,\)"):
        dq.ode_gradients(short, sol, np.ones(2), adjoint)
    with pytest.raises(TypeError, match="vjp .*float64, got float32"):
        dq.ode_gradients(narrow, sol, np.ones(2), adjoint)


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=_name)
def test_ode_gradients_never_return_a_silent_nan(adjoint):
    nan = lambda t, y, args: (-args[0] * y, lambda a: (np.full(2, np.nan), (-(a * y),)))
    with pytest.raises((ValueError, dq.SolveError), match="NaN"):
        dq.ode_gradients(nan, _decay_solution(), np.ones(2), adjoint)


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=_name)
def test_ode_gradients_of_a_0d_state_are_a_0d_array(adjoint):
    sol = dq.integrate(lambda t, y: -y, np.array(1.0, np.float32), (0.0, 1.0), atol=1e-7, rtol=1e-4)
    dy0, _ = dq.ode_gradients(lambda t, y, a: (-y, lambda c: (-c, None)), sol, np.array(1.0, np.float32),
                              adjoint)
    assert isinstance(dy0, np.ndarray) and dy0.shape == () and dy0.dtype == np.float32
    np.testing.assert_allclose(dy0, math.exp(-1.0), rtol=1e-3)


# ------------------------------------------------------------------------------------ the Adams first step
@pytest.mark.parametrize("solver", [dq.VCAB3(), dq.VCABM3()], ids=_name)
@pytest.mark.parametrize("lam, atol, rtol", [(1e3, 1e-6, 1e-3), (1e6, 1e-10, 1e-8)])
def test_adams_methods_do_not_accept_a_blind_first_step_on_a_fast_decay(solver, lam, atol, rtol):
    # the first step is a Bogacki–Shampine 3(2) step, whose error estimate is exactly 0 at hλ = −1 on y' = −λy;
    # sized with the Adams steps' exponent 4, Hairer's starting step was 1/λ there and two such steps reached
    # t1 with SUCCESS 178× (default tolerances) to 1.7e7× (1e-8) the tolerance off e^−2
    sol = dq.integrate(lambda t, y: -lam * y, np.ones(1), (0.0, 2.0 / lam), solver, atol=atol, rtol=rtol)
    assert sol.steps[0].h * lam < 0.5
    assert abs(sol.value[0] - math.exp(-2.0)) <= 100.0 * (atol + rtol * math.exp(-2.0))


def test_radau_refuses_a_zero_atol_at_a_zero_start_that_f_moves_by_naming_atol():
    # its Newton weights atol + rtol·|y| are 0 there: every step failed, down to any step size, and the solve
    # ended DIVERGED with advice about non-finite states (SciPy's Radau fails there too)
    with pytest.raises(ValueError, match=r"atol is 0 where y0 is 0 and f moves it \(2 components, the"):
        dq.integrate(lambda t, y: 1.0 - y, np.zeros(2), (0.0, 1.0), dq.Radau(), atol=0.0, rtol=1e-6)
    sol = dq.integrate(lambda t, y: 1.0 - y, np.zeros(2), (0.0, 1.0), dq.Radau(), atol=1e-12, rtol=1e-6)
    np.testing.assert_allclose(sol.value, 1.0 - math.exp(-1.0), rtol=1e-5)
