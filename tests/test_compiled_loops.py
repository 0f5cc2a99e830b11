"""The compiled step loops of dq.Radau and dq.BDF (one small dense float64 system: :mod:`deqcore.ode.radau_loop`,
:mod:`deqcore.ode.bdf_loop`) against the driver's loop over the same stepper (``COMPILED_LOOP = False`` in the
method's module): the same attempts, evaluations of f and Jacobians, return codes, recorded steps, dense output
and values, on stiff problems with analytic and finite-difference Jacobians, per-component tolerances, backwards
spans, steady states and failures; errors raised by rhs or jac propagate unchanged; solutions checked against
SciPy, exact solutions and analytic steady states."""

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st
from scipy.integrate import solve_ivp

import deqcore as dq
import deqcore.ode.bdf as bdf
import deqcore.ode.bdf_machine as bdf_machine
import deqcore.ode.radau as radau
import deqcore.ode.radau_machine as radau_machine
from deqcore.demos.stiff_problems import HIRES_T1, HIRES_Y0, hires
from tests.test_stiff import _robertson, _robertson_jac, _vdp


def _vdp_jac(t, y, mu=1000.0):
    return np.array([[0.0, 1.0], [-2.0 * mu * y[0] * y[1] - 1.0, mu * (1.0 - y[0] ** 2)]])


@dataclass
class Loop:
    """One method's compiled loop: the method, the module holding its COMPILED_LOOP flag, and the compiled
    entry point (counted by the ``loop`` fixture)."""

    method: Any
    module: ModuleType
    machine: ModuleType
    entry: str
    calls: list


LOOPS = {"radau": (dq.Radau, radau, radau_machine, "radau_run"),
         "bdf": (dq.BDF, bdf, bdf_machine, "bdf_run")}


@pytest.fixture(params=sorted(LOOPS))
def loop(request, monkeypatch):
    """The method's loop, with the calls of its compiled entry point counted."""
    method, module, machine, entry = LOOPS[request.param]
    calls = []
    run = getattr(machine, entry)

    def counting(*args):
        calls.append(1)
        return run(*args)
    monkeypatch.setattr(machine, entry, counting)
    return Loop(method, module, machine, entry, calls)


def _both(loop, monkeypatch, solve):
    """(compiled loop, driver loop) results of ``solve()``."""
    fast = solve()
    monkeypatch.setattr(loop.module, "COMPILED_LOOP", False)
    slow = solve()
    monkeypatch.setattr(loop.module, "COMPILED_LOOP", True)
    return fast, slow


def _assert_same_solution(fast, slow):
    """The same stats, codes, saved values, step records (with Radau's collocation polynomials; BDF's dense
    output is Hermite, without stages) and dense output."""
    assert fast.stats == slow.stats
    assert fast.result == slow.result
    np.testing.assert_array_equal(fast.ts, slow.ts)
    np.testing.assert_array_equal(fast.ys, slow.ys)
    assert len(fast.steps) == len(slow.steps)
    for a, b in zip(fast.steps, slow.steps):
        assert (a.t, a.h) == (b.t, b.h)
        for x, y in ((a.y0, b.y0), (a.y1, b.y1), (a.f0, b.f0), (a.f1, b.f1)):
            np.testing.assert_array_equal(x, y)
            assert x.shape == y.shape
        if a.stages is None:
            assert b.stages is None
        else:
            np.testing.assert_array_equal(a.stages(0.3), b.stages(0.3))
    if fast.steps:
        inside = np.linspace(fast.problem.t0, fast.t_final, 13)
        np.testing.assert_array_equal(fast(inside), slow(inside))


PROBLEMS = {
    "robertson": (_robertson, _robertson_jac, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), dict(rtol=1e-6, atol=1e-10)),
    "vdp": (_vdp, _vdp_jac, np.array([2.0, 0.0]), (0.0, 3000.0), dict(rtol=1e-5, atol=1e-5)),
    # one tolerance per component, on a (2, 4)-shaped state
    "hires": (lambda t, y: hires(t, y.ravel()).reshape(2, 4), None, np.asarray(HIRES_Y0, float).reshape(2, 4),
              (0.0, HIRES_T1), dict(rtol=1e-6, atol=np.geomspace(1e-8, 1e-10, 8).reshape(2, 4))),
}


@pytest.mark.parametrize("name,use_jac", [("robertson", True), ("robertson", False), ("vdp", True),
                                          ("vdp", False), ("hires", False)])
def test_compiled_loop_takes_the_driver_loops_steps(name, use_jac, loop, monkeypatch):
    f, jac, y0, span, options = PROBLEMS[name]
    fast, slow = _both(loop, monkeypatch, lambda: dq.integrate(f, y0, span, loop.method(),
                                                               jac=jac if use_jac else None, **options))
    assert fast.result == dq.ReturnCode.SUCCESS
    assert loop.calls and len(slow.steps) > 64     # the compiled loop ran; its record grew
    assert fast.stats["njev"] > 1 and (fast.stats["nfev_jac"] > 0) == (not use_jac)
    if name != "robertson" or loop.method is dq.Radau:
        assert fast.stats["rejected"] > 0
    _assert_same_solution(fast, slow)
    if name != "vdp":       # and the solution is right: SciPy's Radau at a tight tolerance
        ref = solve_ivp(lambda t, y: np.ravel(f(t, y.reshape(y0.shape))), span, y0.ravel(), method="Radau",
                        rtol=1e-10, atol=1e-12, jac=jac)
        np.testing.assert_allclose(fast.ys[-1].ravel(), ref.y[:, -1], rtol=1e-3, atol=1e-6)


def test_compiled_loop_with_saveat_backwards_and_loose_tolerances(loop, monkeypatch):
    f, jac, y0, _, _ = PROBLEMS["robertson"]
    times = np.linspace(40.0, 0.0, 9)
    fast, slow = _both(loop, monkeypatch, lambda: dq.integrate(lambda t, y: -f(t, y), y0, (40.0, 0.0),
                                                               loop.method(), rtol=1e-3, atol=1e-7, saveat=times))
    assert loop.calls
    _assert_same_solution(fast, slow)
    rtol = 1e-9 if loop.method is dq.Radau else 1e-8
    fast, slow = _both(loop, monkeypatch, lambda: dq.integrate(lambda t, y: np.array([np.cos(t)]), np.zeros(1),
                                                               (3.0, -2.0), loop.method(), rtol=rtol,
                                                               atol=1e-3 * rtol))
    _assert_same_solution(fast, slow)
    np.testing.assert_allclose(fast(1.0), np.sin([1.0]) - np.sin(3.0), atol=100 * rtol)


@pytest.mark.parametrize("use_jac", [True, False])
def test_compiled_loop_steady_state(use_jac, loop, monkeypatch):
    """Autonomous: f is evaluated at every accepted state (the residual test reads it)."""
    A = -np.diag([1.0, 100.0, 1e4]) + 0.5 * np.eye(3, k=1)
    kwargs = dict(jac=(lambda t, u: A) if use_jac else None, atol=1e-10, rtol=1e-10)
    fast, slow = _both(loop, monkeypatch, lambda: dq.steady_state(lambda t, u: A @ u + 1.0, np.zeros(3),
                                                                  loop.method(), **kwargs))
    assert loop.calls
    assert fast.stats == slow.stats and fast.result == slow.result == dq.ReturnCode.SUCCESS
    np.testing.assert_array_equal(fast.value, slow.value)
    assert fast.residual == slow.residual
    np.testing.assert_allclose(fast.value, np.linalg.solve(A, -np.ones(3)), rtol=1e-8)


@pytest.mark.parametrize("case", ["nan", "later_inf", "blow_up", "bad_jac", "max_steps", "tiny_span"])
def test_compiled_loop_failures_are_the_same_codes(case, loop, monkeypatch):
    problems = {
        "nan": (lambda t, y: y * np.nan, np.ones(2), (0.0, 1.0), {}),
        "later_inf": (lambda t, y: -y if t < 0.5 else np.full(2, np.inf), np.ones(2), (0.0, 1.0), {}),
        "blow_up": (lambda t, y: y * y, np.ones(1), (0.0, 2.0), dict(rtol=1e-6, atol=1e-6)),
        "bad_jac": (lambda t, y: -y, np.ones(2), (0.0, 1.0), dict(jac=lambda t, y: np.full((2, 2), np.nan))),
        "max_steps": (_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), dict(max_steps=20)),
        "tiny_span": (_robertson, np.array([1.0, 0.0, 0.0]), (1e9, 1e9 + 1e-6), {}),
    }
    f, y0, span, kwargs = problems[case]
    fast, slow = _both(loop, monkeypatch, lambda: dq.integrate(f, y0, span, loop.method(), throw=False, **kwargs))
    assert loop.calls
    _assert_same_solution(fast, slow)
    expected = {"bad_jac": dq.ReturnCode.LINEAR_SOLVE_FAILED, "max_steps": dq.ReturnCode.MAX_STEPS,
                "tiny_span": dq.ReturnCode.SUCCESS}
    if case in expected:
        assert fast.result == expected[case]
    else:
        assert fast.result != dq.ReturnCode.SUCCESS


class _Boom(Exception):
    pass


def test_errors_raised_by_rhs_and_jac_propagate_unchanged(loop):
    calls = []

    def rhs(t, y):
        calls.append(t)
        if len(calls) == 40:
            raise _Boom("from rhs")
        return _robertson(t, y)
    with pytest.raises(_Boom, match="from rhs"):
        dq.integrate(rhs, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), loop.method(), throw=False)
    assert len(calls) == 40 and loop.calls
    jac_calls = []

    def jac(t, y):
        jac_calls.append(t)
        if len(jac_calls) == 3:
            raise _Boom("from jac")
        return _robertson_jac(t, y)
    with pytest.raises(_Boom, match="from jac"):
        dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), loop.method(), jac=jac, throw=False)
    assert len(jac_calls) == 3
    with pytest.raises(ValueError, match="rhs must return an array of shape \\(3,\\)"):
        dq.integrate(lambda t, y: np.ones(2) if t > 1.0 else -y, np.ones(3), (0.0, 5.0), loop.method())
    with pytest.raises(TypeError, match="real floating"):
        dq.integrate(lambda t, y: np.ones(3, dtype=int), np.ones(3), (0.0, 5.0), loop.method())


def test_a_sparse_user_jacobian_runs_the_driver_loop(loop, monkeypatch):
    jac = lambda t, y: sp.csr_matrix(_robertson_jac(t, y))   # noqa: E731
    fast, slow = _both(loop, monkeypatch, lambda: dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]),
                                                               (0.0, 100.0), loop.method(), jac=jac, rtol=1e-6,
                                                               atol=1e-10))
    _assert_same_solution(fast, slow)
    assert fast.stats["njev"] > 1


def test_float32_and_large_systems_run_the_driver_loop(loop):
    sol = dq.integrate(lambda t, y: -y, np.ones(2, dtype=np.float32), (0.0, 1.0), loop.method(), rtol=1e-4,
                       atol=1e-6)
    n = 130
    big = dq.integrate(lambda t, y: -y, np.ones(n), (0.0, 1.0), loop.method(), rtol=1e-4, atol=1e-6)
    assert not loop.calls
    np.testing.assert_allclose(sol.ys[-1], np.exp(-1.0), rtol=1e-3)
    np.testing.assert_allclose(big.ys[-1], np.exp(-1.0), rtol=1e-3)


@pytest.mark.parametrize("max_order,ndf", [(2, True), (5, False)])
def test_bdf_compiled_loop_other_orders_and_formulas(max_order, ndf, monkeypatch):
    bdf_loop = Loop(dq.BDF, bdf, bdf_machine, "bdf_run", [])
    f, jac, y0, span, options = PROBLEMS["robertson"]
    fast, slow = _both(bdf_loop, monkeypatch, lambda: dq.integrate(f, y0, (0.0, 100.0),
                                                                   dq.BDF(max_order=max_order, ndf=ndf),
                                                                   jac=jac, rtol=1e-5, atol=1e-9))
    _assert_same_solution(fast, slow)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 5), seed=st.integers(0, 2 ** 16), log_rtol=st.floats(-9.0, -2.0),
       backwards=st.booleans(), use_jac=st.booleans(), method=st.sampled_from(sorted(LOOPS)))
def test_compiled_loops_match_on_random_stiff_linear_systems(n, seed, log_rtol, backwards, use_jac, method):
    """y' = A y + b cos t with eigenvalues spread over four decades: the same solve both ways, and close to
    the exact solution (the matrix exponential and the particular solution)."""
    make, module, _, _ = LOOPS[method]
    rng = np.random.default_rng(seed)
    A = -np.diag(10.0 ** rng.uniform(-1.0, 3.0, n)) + 0.1 * np.triu(rng.standard_normal((n, n)), 1)
    A = -A if backwards else A          # decaying in the direction of integration
    b = rng.standard_normal(n)
    f = lambda t, y: A @ y + b * np.cos(t)       # noqa: E731
    y0, span = rng.standard_normal(n), ((2.0, 0.0) if backwards else (0.0, 2.0))
    solve = lambda: dq.integrate(f, y0, span, make(), jac=(lambda t, y: A) if use_jac else None,  # noqa: E731
                                 rtol=10.0 ** log_rtol, atol=1e-3 * 10.0 ** log_rtol)
    fast = solve()
    module.COMPILED_LOOP = False
    try:
        slow = solve()
    finally:
        module.COMPILED_LOOP = True
    _assert_same_solution(fast, slow)
    # exact: y = e^{A(t-t0)} (y0 - p(t0)) + p(t), p(t) = P cos t + Q sin t with Q = A P + b, -P = A Q
    from scipy.linalg import expm, solve as lsolve
    P = lsolve(-(A @ A + np.eye(n)), A @ b)
    Q = A @ P + b
    t0, t1 = span
    p = lambda t: P * np.cos(t) + Q * np.sin(t)   # noqa: E731
    exact = expm(A * (t1 - t0)) @ (y0 - p(t0)) + p(t1)
    assert fast.result == dq.ReturnCode.SUCCESS
    np.testing.assert_allclose(fast.ys[-1], exact, rtol=0, atol=2e3 * 10.0 ** log_rtol * (1 + np.abs(exact).max()))
