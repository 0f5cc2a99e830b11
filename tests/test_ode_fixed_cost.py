"""What a solve sets up once, made cheap (the host initial step, the compiled loops' cached templates, the
steppers' shared coefficients), must leave every solve's numbers as they were: the host initial step is the
array one to the last bit, and state cached across solves never leaks from one problem into the next."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import deqcore as dq
import deqcore.ode.bdf as bdf
import deqcore.ode.radau as radau
from deqcore.ode.base import Evaluator
from deqcore.ode.controller import initial_step, initial_step_host
from tests.test_stiff import _robertson


def _decay(t, y):          # the same shape as Robertson, another problem
    return np.array([-50.0 * (y[0] - np.cos(t)), y[0] - 2.0 * y[1], -1e3 * (y[2] - y[1])])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_host_initial_step_is_the_array_one_to_the_last_bit(seed, direction):
    rng = np.random.default_rng(seed)
    n = 2 * int(rng.integers(1, 20))
    A = rng.normal(size=(n, n)) * 10.0 ** rng.uniform(-2, 3)
    y0 = rng.normal(size=n) * 10.0 ** rng.uniform(-6, 2, size=n)
    if seed == 0:
        y0[:] = 0.0                                 # a zero state: the small-norm branch
    atol = 10.0 ** rng.uniform(-12, -3, size=n) if seed % 2 else float(10.0 ** rng.uniform(-12, -3))
    rtol, exponent = float(10.0 ** rng.uniform(-10, -1)), int(rng.integers(2, 6))
    span = float(rng.uniform(1e-9, 1e3))
    rhs = lambda t, y: (A @ y.reshape(-1) + np.sin(t)).reshape(y.shape)      # noqa: E731
    if seed >= 3:
        y0 = y0.reshape(2, -1)                      # a state of two axes: norms over all its elements
        atol = atol.reshape(2, -1) if np.ndim(atol) else atol
    ev = Evaluator(np, rhs, (), batched=False, autonomous=False, shape=y0.shape, dtype=y0.dtype)
    f0 = rhs(0.3, y0)
    expected = initial_step(np, lambda t, y, dh: ev(t + dh, y), np.full(1, 0.3), y0, f0, direction,
                            ev.full_atol(atol), rtol, exponent, False, span)
    got = initial_step_host(ev, 0.3, y0, f0, direction, ev.full_atol(atol), rtol, exponent, span)
    assert type(got) is float and got == float(expected[0])


def test_host_initial_step_with_a_non_finite_derivative_falls_back_like_the_array_one():
    y0 = np.array([1.0, 2.0])
    f0 = np.array([np.inf, 1.0])
    got = initial_step_host(lambda t, y: y * np.nan, 0.0, y0, f0, 1.0, 1e-6, 1e-3, 5, 1.0)
    expected = initial_step(np, lambda t, y, dh: y * np.nan, np.zeros(1), y0, f0, 1.0, 1e-6, 1e-3, 5, False, 1.0)
    assert got == float(expected[0]) == 1e-6


@pytest.mark.parametrize("method", [dq.Radau, dq.BDF])
def test_back_to_back_solves_of_different_problems_share_nothing(method):
    """Two right-hand sides of one shape, solved alternately: each solve gives exactly what a solve of that
    problem alone gives (the first solve of it in this test, and the driver's loop for Radau), and agrees
    with SciPy."""
    y0 = np.array([1.0, 0.0, 0.0])
    kw = dict(rtol=1e-6, atol=1e-10)
    first = {f: dq.integrate(f, y0, (0.0, 3.0), method(), **kw) for f in (_robertson, _decay)}
    for f in (_decay, _robertson, _decay):
        again = dq.integrate(f, y0, (0.0, 3.0), method(), **kw)
        assert again.stats == first[f].stats
        np.testing.assert_array_equal(again.ys, first[f].ys)
        np.testing.assert_array_equal(again.ts, first[f].ts)
    for f, sol in first.items():
        ref = solve_ivp(f, (0.0, 3.0), y0, method="Radau", rtol=1e-11, atol=1e-14).y[:, -1]
        np.testing.assert_allclose(sol.ys[-1], ref, rtol=1e-4, atol=1e-9)
    # a different size between them, then the first again
    dq.integrate(lambda t, y: -y, np.ones(5), (0.0, 1.0), method(), **kw)
    again = dq.integrate(_robertson, y0, (0.0, 3.0), method(), **kw)
    assert again.stats == first[_robertson].stats


def test_radau_compiled_loop_matches_the_driver_loop_after_other_solves(monkeypatch):
    y0 = np.array([1.0, 0.0, 0.0])
    kw = dict(rtol=1e-5, atol=1e-9)
    dq.integrate(_decay, y0, (0.0, 2.0), dq.Radau(), **kw)      # leaves its cached state behind
    fast = dq.integrate(_robertson, y0, (0.0, 2.0), dq.Radau(), **kw)
    monkeypatch.setattr(radau, "COMPILED_LOOP", False)
    slow = dq.integrate(_robertson, y0, (0.0, 2.0), dq.Radau(), **kw)
    assert fast.stats == slow.stats
    np.testing.assert_array_equal(fast.ys, slow.ys)


def test_shared_radau_coefficients_are_never_written():
    before = [a.copy() for a in radau._coefficients(np.dtype(np.float64))]
    dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 10.0), dq.Radau(), rtol=1e-4, atol=1e-8)
    dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 10.0), dq.Radau(jac_sparsity=np.ones((3, 3))),
                 rtol=1e-4, atol=1e-8)
    after = radau._coefficients(np.dtype(np.float64))
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(after[0], radau.COEF.T)
    np.testing.assert_array_equal(after[1], radau.COEF.T_inv)


def test_a_tiny_span_takes_one_step_and_reports_its_counts():
    """The fixed cost's benchmark case (t1 = 1e-9): one accepted step; stats as dicts of ints."""
    for method in (dq.Radau(), dq.BDF()):
        calls = []
        counted = lambda t, y: calls.append(t) or _robertson(t, y)      # noqa: E731
        sol = dq.integrate(counted, np.array([1.0, 0.0, 0.0]), (0.0, 1e-9), method, rtol=1e-2, atol=1e-8)
        assert sol.success and sol.stats["accepted"] == 1 and sol.ts.tolist() == [0.0, 1e-9]
        assert all(type(v) is int for v in sol.stats.values())
        assert sol.stats["nfev"] == len(calls) and all(type(t) is float for t in calls)
        ref = solve_ivp(_robertson, (0.0, 1e-9), [1.0, 0.0, 0.0], method="Radau", rtol=1e-12,
                        atol=1e-20).y[:, -1]
        np.testing.assert_allclose(sol.ys[-1], ref, rtol=1e-6, atol=1e-14)


_LOOPS = {"Radau": radau, "BDF": bdf}


@pytest.mark.parametrize("outer_name, inner_name", [("Radau", "Radau"), ("BDF", "BDF"), ("BDF", "Radau"),
                                                    ("Radau", "BDF")])
def test_a_solve_inside_the_rhs_of_another_gets_its_own_callback_server(monkeypatch, outer_name, inner_name):
    """The compiled loops share one process-wide callback: a solve started from inside a right-hand side (a
    nested solve, of the same method or the other one) serves its own requests, and the outer one resumes
    with its own afterwards: the outer solve is the one its driver's loop makes, step for step."""
    y0 = np.array([1.0, 0.0, 0.0])
    inner_y0 = np.array([1.0, 0.5])
    inner_method = getattr(dq, inner_name)

    def inner_rate(t):
        sol = dq.integrate(lambda s, z: np.array([-3.0 * z[0], z[0] - z[1]]), inner_y0, (0.0, 0.1 + 0.01 * t),
                           inner_method(), rtol=1e-8, atol=1e-10)
        return float(sol.ys[-1, 1])

    def outer(t, y):
        return _decay(t, y) * inner_rate(t)

    kw = dict(rtol=1e-4, atol=1e-8)
    method = getattr(dq, outer_name)
    fast = dq.integrate(outer, y0, (0.0, 1.0), method(), **kw)
    monkeypatch.setattr(_LOOPS[outer_name], "COMPILED_LOOP", False)
    slow = dq.integrate(outer, y0, (0.0, 1.0), method(), **kw)
    assert fast.stats == slow.stats
    np.testing.assert_array_equal(fast.ys, slow.ys)


@pytest.mark.parametrize("method", [dq.Radau, dq.BDF])
def test_solves_in_threads_match_the_same_solves_in_sequence(method):
    from concurrent.futures import ThreadPoolExecutor

    y0 = np.array([1.0, 0.0, 0.0])
    jobs = [(_robertson, 1e-6), (_decay, 1e-7), (_robertson, 1e-5), (_decay, 1e-6)] * 2

    def solve(job):
        f, rtol = job
        sol = dq.integrate(f, y0, (0.0, 5.0), method(), rtol=rtol, atol=rtol * 1e-4)
        return sol.stats, sol.ys[-1]

    sequential = [solve(job) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(solve, jobs))
    for (stats_a, y_a), (stats_b, y_b) in zip(sequential, threaded):
        assert stats_a == stats_b
        np.testing.assert_array_equal(y_a, y_b)
