"""The fused ODE step kernels against their references, and the solvers with fused kernels against the same
solvers on the reference implementations.

tests/test_kernels.py runs every kernel's registered example; here: edge cases (NaN rows, one row, one stage,
the prediction-only Adams path, rows split over several CUDA blocks), random shapes, the control kernel's
decisions one by one, and whole solves (same steps, same values to round-off)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deqcore as dq
from deqcore.backend import get_namespace, is_cupy_namespace, kernels as registry, to_host
from deqcore.ode import driver, kernels_numba
from deqcore.ode.base import Evaluator
from deqcore.ode.controller import pi_factor, pi_factor_array
from deqcore.ode.explicit import ExplicitRKStepper
from deqcore.ode.tableaus import BS3, TSIT5, ButcherTableau
from deqcore.results import ReturnCode
from tests.helpers import assert_same, host, on, steady_state_rhs

IMPLS = ["numba_cpu", "numba_cuda"]


@pytest.fixture(params=IMPLS)
def impl(request, xp):
    """Each fused implementation on each namespace it takes: the CUDA kernels on NumPy arrays run on the
    simulator, on CuPy arrays on the device."""
    if request.param == "numba_cpu" and is_cupy_namespace(xp):
        pytest.skip("the Numba CPU kernels take NumPy arrays")
    return request.param


def _impl(name, impl):
    return registry.registered_kernels()[name].load(impl)


def _same(out, ref, dtype=np.float64):
    assert_same(out, ref, dtype, float32=1e-5, float64=1e-12)


def _run_both(name, impl, args, dtype=np.float64, xp=np):
    """The reference on NumPy and ``impl`` on ``xp``, on fresh copies of ``args`` (kernels may write into
    their arguments); returns the reference's output."""
    ref = registry.registered_kernels()[name].reference(*on(np, args))
    _same(_impl(name, impl)(*on(xp, args)), ref, dtype)
    return ref


# ---- stage combination and error sums ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stage_and_error_on_one_row_with_one_stage(impl, xp, dtype):
    rng = np.random.default_rng(0)
    y = rng.standard_normal((1, 7)).astype(dtype)
    ks = rng.standard_normal((2, 1, 7)).astype(dtype)
    h = np.array([0.25])
    _run_both("rk_stage", impl, (y, ks, np.array([0.5]), h), dtype, xp)
    args = (y, ks, np.array([1.0]), np.array([0.5, -0.5]), h, np.empty_like(y), True, 1e-3, 1e-2)
    y_new, err_sq, y_max = _run_both("rk_combine_error", impl, args, dtype, xp)
    # by hand: y_new = y + h k0, err = h (k0 − k1)/2, scaled by atol + rtol max(|y|, |y_new|)
    np.testing.assert_allclose(y_new, y + dtype(0.25) * ks[0], rtol=1e-6)
    scale = 1e-3 + 1e-2 * np.maximum(np.abs(y), np.abs(y_new)).astype(float)
    err = 0.125 * (ks[0] - ks[1]).astype(float)
    np.testing.assert_allclose(err_sq, [np.sum((err / scale) ** 2)], rtol=1e-5)
    np.testing.assert_allclose(y_max, [np.abs(y_new).max()], rtol=1e-6)


def test_nan_rows_stay_in_their_row(impl, xp):
    rng = np.random.default_rng(1)
    y = rng.standard_normal((3, 5))
    ks = rng.standard_normal((4, 3, 5))
    ks[2, 1, 3] = np.nan
    args = (y, ks, BS3.b.copy(), BS3.b_err.copy(), np.full(3, 0.1), np.empty_like(y), True, 1e-6, 1e-6)
    y_new, err_sq, y_max = _run_both("rk_combine_error", impl, args, xp=xp)
    assert np.isnan(err_sq[1]) and np.isnan(y_max[1])
    assert np.isfinite(err_sq[[0, 2]]).all() and np.isfinite(y_max[[0, 2]]).all()
    assert np.isnan(y_new[1, 3]) and np.isfinite(np.delete(y_new[1], 3)).all()


def test_given_new_state_is_only_read(impl, xp):
    """FSAL: the new state comes in (here with an infinity: its row's maximum is inf, its error finite)."""
    rng = np.random.default_rng(2)
    y = rng.standard_normal((2, 6))
    y_new = rng.standard_normal((2, 6))
    y_new[0, 2] = np.inf
    ks = rng.standard_normal((7, 2, 6))
    before = y_new.copy()
    args = (y, ks, TSIT5.b.copy(), TSIT5.b_err.copy(), np.array([0.1, 0.2]), y_new, False, 1e-6, 1e-3)
    out, err_sq, y_max = _run_both("rk_combine_error", impl, args, xp=xp)
    np.testing.assert_array_equal(out, before)
    assert y_max[0] == np.inf and np.isfinite(err_sq).all()


def test_rows_longer_than_one_cuda_block_are_split(monkeypatch, xp):
    """A row reduced by several blocks (partial sums and maxima, then combined) equals the reference."""
    monkeypatch.setattr(kernels_numba, "CHUNK_ELEMENTS", 8)
    threads = kernels_numba._RK_COMBINE_ERROR.threads
    m = 2 * threads + 16                   # three blocks per row
    rng = np.random.default_rng(3)
    y = rng.standard_normal((2, m))
    ks = rng.standard_normal((7, 2, m))
    ks[1, 1, m - 10] = np.nan              # in the last chunk of row 1
    grid, _, _ = kernels_numba._row_partials(np, 2, m, threads)
    assert grid == (2, 3)
    h = np.array([0.1, 0.3])
    _run_both("rk_combine_error", "numba_cuda",
              (y, ks, TSIT5.b.copy(), TSIT5.b_err.copy(), h, np.empty_like(y), True, 1e-6, 1e-3), xp=xp)
    f = rng.standard_normal((2, m))
    h1, h2 = np.array([0.1, 0.1]), np.array([0.2, 0.05])
    _run_both("adams_correct_error", "numba_cuda",
              (y, y + 0.1 * f, f, f, f * 0.5, f * 0.25, h, h1, h2, np.empty_like(y), True, 1e-6, 1e-3), xp=xp)


@settings(max_examples=20)
@given(rows=st.integers(1, 4), m=st.integers(1, 40), stages=st.integers(1, 7), seed=st.integers(0, 2**31 - 1),
       compute_new=st.booleans())
def test_random_shapes_on_the_cpu(rows, m, stages, seed, compute_new):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((rows, m))
    ks = rng.standard_normal((7, rows, m))
    a, e = rng.standard_normal(stages), rng.standard_normal(stages)
    h = 10.0 ** rng.uniform(-4, 0, rows) * rng.choice([-1.0, 1.0], rows)
    _run_both("rk_stage", "numba_cpu", (y, ks, a, h))
    y_new = y + rng.standard_normal((rows, m))
    _run_both("rk_combine_error", "numba_cpu", (y, ks, a, e, h, y_new, compute_new, 1e-6, 1e-4))


# ---- Adams -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("corrector", [True, False])
def test_adams_kernels(impl, xp, corrector):
    rng = np.random.default_rng(4)
    y, f0, f1, f2, f_pred = (rng.standard_normal((3, 10)) for _ in range(5))
    h, h1, h2 = np.array([0.1, -0.2, 0.05]), np.array([0.1, -0.1, 0.2]), np.array([0.3, -0.1, 0.05])
    f_pred[2, 4] = np.nan
    y_pred = _run_both("adams_predict", impl, (y, f0, f1, f2, h, h1, h2), xp=xp)
    new = np.empty_like(y) if corrector else y_pred
    args = (y, y_pred, f_pred, f0, f1, f2, h, h1, h2, new, corrector, 1e-6, 1e-3)
    y_new, err_sq, y_max = _run_both("adams_correct_error", impl, args, xp=xp)
    if not corrector:
        np.testing.assert_array_equal(y_new, y_pred)
    assert np.isnan(err_sq[2]) and np.isfinite(err_sq[:2]).all()


def test_adams_prediction_is_exact_for_quadratic_derivatives():
    """AB3 integrates the quadratic through the last three derivatives exactly; AM3 with f_pred = f(t+h) too,
    and then the error estimate of a quadratic f vanishes."""
    f = lambda t: 1.0 - 2.0 * t + 3.0 * t * t  # noqa: E731
    F = lambda t: t - t * t + t ** 3  # noqa: E731
    t0, h, h1, h2 = 0.4, 0.15, 0.1, 0.2
    row = lambda v: np.array([[v]])  # noqa: E731
    steps = (np.array([v]) for v in (h, h1, h2))
    args = (row(F(t0)), row(f(t0)), row(f(t0 - h1)), row(f(t0 - h1 - h2)), *steps)
    for impl in ("reference", "numba_cpu"):
        kernel = registry.get_kernel("adams_predict", np, impl)
        y_pred = kernel(*args)
        np.testing.assert_allclose(y_pred, row(F(t0 + h)), rtol=1e-13)
        correct = registry.get_kernel("adams_correct_error", np, impl)
        y_new, err_sq, _ = correct(args[0], y_pred, row(f(t0 + h)), *args[1:], np.empty((1, 1)), True, 1e-6,
                                   0.0)
        np.testing.assert_allclose(y_new, row(F(t0 + h)), rtol=1e-13)
        assert err_sq[0] < 1e-20


# ---- step control ------------------------------------------------------------------------------------------

@settings(max_examples=50)
@given(err=st.floats(0.0, 1e6) | st.just(math.nan) | st.just(math.inf), err_prev=st.floats(1e-4, 1.0),
       after_reject=st.booleans(), exponent=st.integers(2, 6))
def test_scalar_pi_factor_equals_the_array_controller(err, err_prev, after_reject, exponent):
    with np.errstate(all="ignore"):
        expected = pi_factor_array(np, np.array([err]), np.array([err_prev]), np.array([after_reject]),
                                   exponent)
    # the scalar and array paths associate the powers differently: equal to a few ulps, not bit for bit
    assert math.isclose(pi_factor(err, err_prev, after_reject, exponent), float(expected[0]),
                        rel_tol=8 * np.finfo(float).eps, abs_tol=0.0)


def _control_args(err, h, t, active, after_reject=False, f_max=1.0, y_max=1.0, t_end=math.inf, steady=True,
                  exponent=4.0):
    rows = len(err)
    n = lambda v: np.asarray(v, dtype=float) * np.ones(rows)  # noqa: E731
    return [4 * n(err) ** 2, n(y_max), n(f_max), np.full(rows, 2e-6), n(exponent), n(t), n(h), np.zeros(rows),
            np.full(rows, 0.5), np.full(rows, after_reject), np.asarray(active), np.zeros(rows, dtype=np.int64),
            np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64),
            np.zeros(rows, dtype=bool), np.zeros(2, dtype=np.int64), 4, t_end, 1.0, steady, 1e150,
            float(np.finfo(float).eps), 9]


@pytest.mark.parametrize("impl", ["reference"] + IMPLS)
def test_control_decisions(impl, xp):
    if impl == "numba_cpu" and is_cupy_namespace(xp):
        pytest.skip("the Numba CPU kernels take NumPy arrays")
    control = registry.get_kernel("ode_control", xp, impl)
    # rows: accepted; rejected; accepted and converged; accepted but blown up; NaN error; step vanishes; idle
    args = _control_args(err=[0.5, 2.0, 0.5, 0.5, math.nan, 2.0, 0.5],
                         h=[0.1, 0.1, 0.1, 0.1, 0.1, 1e-17, 0.1], t=[1.0] * 7, active=[True] * 6 + [False],
                         f_max=[1.0, 1.0, 1e-9, 1.0, 1.0, 1.0, 1.0],
                         y_max=[1.0, 1.0, 1.0, np.inf, 1.0, 1.0, 1.0])
    out = host(control(*on(xp, args)))
    t, h_next, err_prev, after_reject, active, codes, acc, rej, nfev, ok, summary = out
    np.testing.assert_array_equal(ok, [True, False, True, True, False, False, False])
    np.testing.assert_allclose(t, [1.1, 1.0, 1.1, 1.1, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(err_prev[:3], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(h_next[0], 0.1 * pi_factor(0.5, 0.5, False, 4))
    np.testing.assert_allclose(h_next[1], 0.1 * pi_factor(2.0, 0.5, False, 4))
    assert h_next[4] == pytest.approx(0.02) and h_next[6] == 0.1
    np.testing.assert_array_equal(active, [True, True, False, False, True, False, False])
    diverged, too_small = int(ReturnCode.DIVERGED), int(ReturnCode.DT_TOO_SMALL)
    np.testing.assert_array_equal(codes, [0, 0, 0, diverged, 0, too_small, 0])
    np.testing.assert_array_equal(after_reject, [False, True, False, False, True, True, False])
    np.testing.assert_array_equal(acc + rej, [1] * 6 + [0])
    np.testing.assert_array_equal(nfev, [9] * 6 + [0])
    np.testing.assert_array_equal(summary, [3, 3])


def test_control_reaches_a_finite_end_and_agrees_with_the_reference(impl, xp):
    args = _control_args(err=[0.1, 0.5, 0.9, 1.5], h=[0.5, 0.2, 0.3, 0.1], t=[0.5, 0.5, 0.2, 0.9],
                         active=[True] * 4, after_reject=True, t_end=1.0, steady=False)
    out = _run_both("ode_control", impl, args, xp=xp)
    assert out[0][0] == 1.0                                          # lands exactly on t_end, and stops
    np.testing.assert_allclose(out[0][1:], [0.7, 0.5, 0.9])
    np.testing.assert_array_equal(out[4], [False, True, True, True])
    assert out[1][0] == 0.5                                          # no growth after a rejection


def test_control_with_a_different_error_exponent_per_row(impl, xp):
    args = _control_args(err=[0.3, 0.3, 3.0], h=[0.1, 0.1, 0.1], t=[0.0] * 3, active=[True] * 3,
                         exponent=[3.0, 4.0, 5.0], steady=False)
    out = _run_both("ode_control", impl, args, xp=xp)
    expected = [0.1 * pi_factor(0.3, 0.3, False, 3.0), 0.1 * pi_factor(0.3, 0.3, False, 4.0),
                0.1 * pi_factor(3.0, 0.5, False, 5.0)]
    np.testing.assert_allclose(out[1], expected, rtol=1e-14)


# ---- whole solves: fused kernels against the references -----------------------------------------------

def _deq_map(seed, B, n, xp=np):
    return steady_state_rhs(np.random.default_rng(seed), B, n, 0.8, xp)


def _van_der_pol(t, y):
    return get_namespace(y).stack([y[1], 2.0 * (1.0 - y[0] ** 2) * y[1] - y[0]])


def _solve_all(monkeypatch, mode):
    monkeypatch.setenv("DEQCORE_KERNELS", mode)
    g = _deq_map(5, 6, 4)
    out = []
    for solver, tol in ((dq.Tsit5(), 1e-8), (dq.VCABM3(), 1e-8), (dq.VCAB3(), 1e-8), (dq.Rodas3(), 1e-5)):
        batched = dq.steady_state(g, np.zeros((6, 4)), solver, atol=tol, rtol=tol, batched=True,
                                  max_steps=3000)
        single = dq.steady_state(lambda t, z: g(t, z[None])[0], np.zeros(4), solver, atol=tol, rtol=tol)
        ode = dq.integrate(_van_der_pol, np.array([2.0, 0.0]), (0.0, 3.0), solver, atol=tol, rtol=tol,
                           saveat=[1.0, 2.5])
        back = dq.integrate(_van_der_pol, np.array([2.0, 0.0]), (0.0, -0.5), solver, atol=tol, rtol=tol)
        out.append([tol, (batched.value, batched.stats["nfev_per_sample"], batched.result),
                    (single.value, single.stats["nfev"], single.residual),
                    (ode.ys, ode.stats["nfev"], ode.stats["rejected"]),
                    (back.ys[-1], back.stats["nfev"], back.ts.size)])
    return out


def test_solves_with_fused_kernels_equal_the_reference_ones(monkeypatch):
    fused, reference = _solve_all(monkeypatch, "auto"), _solve_all(monkeypatch, "reference")
    for (tol, *per_solver_fused), (_, *per_solver_ref) in zip(fused, reference):
        # step sizes agree to round-off; the solutions then to round-off times the sensitivity to h
        for (value, count, extra), (value_ref, count_ref, extra_ref) in zip(per_solver_fused, per_solver_ref):
            # (Rosenbrock: its finite-difference Jacobian adapts its increments to round-off, so its values move
            # by a little more than the others')
            np.testing.assert_allclose(value, value_ref, rtol=1e-11, atol=max(1e-12, 1e-4 * tol))
            np.testing.assert_array_equal(count, count_ref)
            np.testing.assert_allclose(extra, extra_ref, rtol=1e-9, atol=1e-12)


def test_solves_on_the_cuda_kernels_equal_the_reference_ones(monkeypatch, xp):
    """The CUDA kernels on the simulator for NumPy arrays (tiny problems, a few steps: the simulator is slow),
    on the device for a CuPy ``y0``: batched VCABM3 through its starter and first Adams step, and Tsit5 steps
    of an unbatched integration, against the reference kernels (on NumPy)."""
    out = {}
    for mode, on_xp in (("reference", np), ("numba_cuda", xp)):
        monkeypatch.setenv("DEQCORE_KERNELS", mode)
        steady = dq.steady_state(_deq_map(8, 2, 3, on_xp), on_xp.zeros((2, 3)), dq.VCABM3(), atol=1e-3,
                                 rtol=1e-3, batched=True, max_steps=3, throw=False)
        ode = dq.integrate(_van_der_pol, on_xp.asarray([2.0, 0.0]), (0.0, 1.0), atol=1e-3, rtol=1e-3,
                           max_steps=2, throw=False)
        assert get_namespace(steady.value, ode.ys) is on_xp
        out[mode] = (to_host(steady.value), to_host(steady.stats["accepted_per_sample"]), to_host(ode.ys),
                     ode.stats["nfev"])
    for fused, ref in zip(out["numba_cuda"], out["reference"]):
        np.testing.assert_allclose(fused, ref, rtol=1e-12, atol=1e-14)


def test_float32_steady_state_on_fused_kernels():
    g = _deq_map(6, 5, 8)
    z0 = np.zeros((5, 8), dtype=np.float32)
    sol = dq.steady_state(lambda t, z: g(t, z).astype(np.float32), z0, atol=1e-4, rtol=1e-4, batched=True)
    assert sol.value.dtype == np.float32 and sol.success.all()
    assert (sol.residual <= 1e-4 * (1 + np.abs(sol.value).max(axis=1))).all()


def test_batched_loop_moves_two_counts_to_the_host_per_step(monkeypatch):
    calls = []
    real = driver.to_host
    monkeypatch.setattr(driver, "to_host", lambda x: calls.append(np.shape(x)) or real(x))
    sol = dq.steady_state(_deq_map(7, 4, 3), np.zeros((4, 3)), atol=1e-6, rtol=1e-6, batched=True)
    steps = sol.stats["num_steps"]
    assert calls[:steps] == [(2,)] * steps and len(calls) == steps + 5  # + t, codes and counters at the end


# ---- steppers ---------------------------------------------------------------------------------------------

def test_tableau_without_fsal_computes_the_new_state_in_the_error_pass():
    no_fsal = ButcherTableau(BS3.a, BS3.b, BS3.c, BS3.b_err, BS3.order, BS3.error_order, fsal=False)
    y0 = np.array([2.0, 0.0])
    trials = []
    for tab in (BS3, no_fsal):
        ev = Evaluator(np, _van_der_pol, (), False, False, y0.shape, y0.dtype)
        stepper = ExplicitRKStepper(ev, tab)
        trials.append(stepper.attempt(0.0, y0, ev(0.0, y0), 0.05, None, (1e-6, 1e-6)))
        trials.append(stepper.attempt(0.0, y0, ev(0.0, y0), 0.05))   # a replay: no error computed
        assert trials[-1].err_sq is None
    for trial in trials[1:]:
        np.testing.assert_allclose(trial.y1, trials[0].y1, rtol=1e-14)
        np.testing.assert_allclose(trial.f1, trials[0].f1, rtol=1e-14)
    np.testing.assert_allclose(trials[2].err_sq, trials[0].err_sq, rtol=1e-12)


def test_kernels_are_registered_with_examples_traffic_and_ptx_targets():
    for name in ("rk_stage", "rk_combine_error", "adams_predict", "adams_correct_error", "ode_control"):
        spec = registry.registered_kernels()[name]
        args = registry.resolve(spec.example)(np.random.default_rng(0), np.float32)
        assert registry.resolve(spec.traffic)(*args) > 0
        # one PTX target per float type where the kernel reads the state; the control reads only float64 rows
        assert len(spec.cuda_ptx_targets) == (1 if name == "ode_control" else 2)

