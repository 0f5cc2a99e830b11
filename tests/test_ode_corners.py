"""ODE corners: spans of 10⁻¹² and spans at |t| = 10⁸ (the step floor and t's float64 grid), for every method,
forwards and backwards, float32 and float64 states.
References: analytic solutions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import deqcore as dq

EVERY_METHOD = [dq.Tsit5(), dq.VCAB3(), dq.VCABM3(), dq.Rodas3(), dq.Rodas4(), dq.Rodas5P(), dq.Radau(),
                dq.BDF()]


def _name(solver):
    return type(solver).__name__


def _decay(lam):
    return lambda t, y: -lam * y


# ------------------------------------------------------------------------------------------- tiny spans
TINY_SPANS = [(0.0, 1e-12), (1e-12, 0.0), (1.0, 1.0 + 1e-11), (1.0 + 1e-11, 1.0), (-3e-12, 0.0)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("span", TINY_SPANS, ids=str)
@pytest.mark.parametrize("solver", EVERY_METHOD, ids=_name)
def test_a_tiny_span_moves_the_state_by_its_length_times_f(solver, span, dtype):
    # y(t1) = y0 + (t1 − t0)·f to within (t1 − t0)² and y0's rounding
    y0 = np.array([0.5, 2.0], dtype)
    f = lambda t, y: np.array([1.0, -3.0], y.dtype) * np.array([1.0, y[1]], y.dtype)   # noqa: E731
    sol = dq.integrate(f, y0, span, solver, atol=1e-12, rtol=1e-9 if dtype == np.float64 else 2e-5)
    assert sol.success and sol.ts[-1] == span[1]
    length = span[1] - span[0]
    want = np.array([0.5 + length, 2.0 * math.exp(-3.0 * length)])
    np.testing.assert_allclose(sol.value, want, rtol=2 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("span", TINY_SPANS[:4], ids=str)
@pytest.mark.parametrize("solver", EVERY_METHOD, ids=_name)
def test_a_tiny_span_with_dynamics_of_its_own_scale_is_solved_to_the_tolerance(solver, span, dtype):
    # λ·|t1 − t0| = 2: steps far below the old absolute floor 8 eps·max(|t|, 1) near t = 0, and below the
    # first step BDF took at t = 1 (10⁻¹⁶: DT_TOO_SMALL after one step, where steps of 8 eps are allowed)
    length = span[1] - span[0]
    lam = 2.0 / abs(length)
    atol, rtol = 1e-9, 1e-6 if dtype == np.float64 else 2e-5
    sol = dq.integrate(_decay(lam), np.ones(1, dtype), span, solver, atol=atol, rtol=rtol)
    want = math.exp(-lam * length)
    assert sol.success, sol.result
    assert abs(float(sol.value[0]) - want) <= 50 * (atol + rtol * want)


# ------------------------------------------------------------------------------------------ large |t|
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("span", [(1e8, 1e8 + 1e-7), (1e8, 1e8 - 1e-7), (-1e8, -1e8 + 3e-7)], ids=str)
@pytest.mark.parametrize("solver", EVERY_METHOD, ids=_name)
def test_a_span_of_a_few_units_in_the_last_place_of_t_is_solved(solver, span, dtype):
    # at |t| = 1e8 a step of t is a multiple of 1.49e-8: the span holds 7 to 20 of them, and the tolerance
    # asks for steps of a few of them. The old floor 8 eps·|t| = 1.8e-7 was larger than the span
    length = span[1] - span[0]
    lam = 1e6          # BDF's first steps (order 1, error (hλ)²/2) need two to four of them at rtol 1e-3
    atol, rtol = 1e-12, 1e-3
    sol = dq.integrate(_decay(lam), np.ones(1, dtype), span, solver, atol=atol, rtol=rtol)
    assert sol.success, sol.result
    want = math.exp(-lam * length)
    assert abs(float(sol.value[0]) - want) <= 50 * (atol + rtol * want)


@pytest.mark.parametrize("solver", [dq.Tsit5(), dq.VCABM3(), dq.Rodas5P(), dq.BDF()], ids=_name)
def test_steps_at_large_t_are_steps_of_t_s_grid_so_time_and_state_agree(solver):
    # y₀' = 1 integrates the time itself; y₁ oscillates fast so that the steps are a few units in the last
    # place of t (1.49e-8). A step h that t cannot take moved y₀ by h but t by round(t + h) − t (up to
    # half a unit off each step): the state's clock drifted from t
    w = 3e5
    f = lambda t, y: np.array([1.0, w * math.cos(w * (t - 1e8))])   # noqa: E731
    sol = dq.integrate(f, np.zeros(2), (1e8, 1e8 + 1e-5), solver, atol=1e-9, rtol=1e-3)
    assert sol.success
    elapsed = sol.ts - 1e8
    np.testing.assert_allclose(sol.ys[:, 0], elapsed, rtol=1e-9, atol=1e-20)
    np.testing.assert_allclose(sol.ys[:, 1], np.sin(w * elapsed), atol=0.05)


def test_dt0_below_the_floor_is_raised_to_a_floor_of_the_span_s_scale():
    sol = dq.integrate(lambda t, y: -y, np.ones(1), (0.0, 1e-12), dq.Tsit5(), dt0=1e-30)
    assert sol.success and sol.steps[0].h >= 2 * np.finfo(float).eps * 1e-12
    np.testing.assert_allclose(sol.value, math.exp(-1e-12), rtol=1e-15)


# ------------------------------------------------------------- batched steady states: samples alone
def _batch_rhs(t, u, c):
    # du = A u + c[:, :2] + c[:, 2]·u² per sample (elementwise: no product whose rounding depends on the batch)
    Au = np.stack([-2.0 * u[:, 0] + u[:, 1], 0.5 * u[:, 0] - 1.5 * u[:, 1]], axis=1)
    return Au + c[:, :2] + c[:, 2:3] * u ** 2


def _batch_jac(t, u, c):
    J = np.zeros((u.shape[0], 2, 2))
    J[:, 0, 0], J[:, 0, 1] = -2.0 + 2.0 * c[:, 2] * u[:, 0], 1.0
    J[:, 1, 0], J[:, 1, 1] = 0.5, -1.5 + 2.0 * c[:, 2] * u[:, 1]
    return J


@pytest.mark.parametrize("solver", [dq.VCABM3(), dq.Tsit5(), dq.Rodas5P(), dq.Rodas4(), dq.Rodas3()], ids=_name)
def test_batched_steady_state_samples_beside_failing_ones_are_unchanged_bit_for_bit(solver):
    # sample 1 blows up (u² growth), sample 2 has a NaN source: samples 0 and 3 end exactly as in the same
    # batch with healthy samples in their places, and (explicit methods) exactly as solved alone
    c = np.array([[1.0, 0.5, 0.0], [5.0, 5.0, 3.0], [np.nan, 0.0, 0.0], [0.1, -0.3, 0.0]])
    u0 = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, -2.0]])
    jac = _batch_jac if isinstance(solver, (dq.Rodas5P, dq.Rodas4, dq.Rodas3)) else None
    options = dict(batched=True, throw=False, atol=1e-9, rtol=1e-9, max_steps=400, jac=jac)
    sol = dq.steady_state(_batch_rhs, u0, solver, args=(c,), **options)
    assert int(sol.result[1]) != int(dq.ReturnCode.SUCCESS) and int(sol.result[2]) != int(dq.ReturnCode.SUCCESS)
    healthy_c, healthy_u0 = c.copy(), u0.copy()
    healthy_c[1:3], healthy_u0[1:3] = [[0.3, -0.2, 0.0], [0.2, 0.2, 0.0]], [[1.0, -1.0], [0.5, 0.5]]
    healthy = dq.steady_state(_batch_rhs, healthy_u0, solver, args=(healthy_c,), **options)
    A = np.array([[-2.0, 1.0], [0.5, -1.5]])
    for i in (0, 3):
        assert int(healthy.result[i]) == int(sol.result[i])
        np.testing.assert_array_equal(sol.value[i], healthy.value[i])
        if jac is None:     # (the Rosenbrock stages' sums round with the batch's length: not compared alone)
            alone = dq.steady_state(_batch_rhs, u0[i:i + 1], solver, args=(c[i:i + 1],), **options)
            assert int(alone.result[0]) == int(sol.result[i])
            np.testing.assert_array_equal(sol.value[i], alone.value[0])
        if int(sol.result[i]) == int(dq.ReturnCode.SUCCESS):
            np.testing.assert_allclose(sol.value[i], np.linalg.solve(A, -c[i, :2]), atol=1e-7)


@pytest.mark.parametrize("span", [(0.0, 5e-324), (1e-310, 0.0), (-1.5e308, 1.5e308)], ids=str)
def test_a_span_whose_length_is_subnormal_or_infinite_is_refused_naming_t_span(span):
    # (0, 5e-324): Rodas5P raised ZeroDivisionError, Radau ended LINEAR_SOLVE_FAILED; (−1.5e308, 1.5e308):
    # t1 − t0 = inf, DIVERGED
    for solver in (dq.Rodas5P(), dq.Radau(), dq.Tsit5()):
        with pytest.raises(ValueError, match="t_span must have a length"):
            dq.integrate(lambda t, y: -y, np.ones(2), span, solver)
    sol = dq.integrate(lambda t, y: -y, np.ones(2), (0.0, 1e-300), dq.Rodas5P())     # a normal one is solved
    np.testing.assert_array_equal(sol.value, np.ones(2))
