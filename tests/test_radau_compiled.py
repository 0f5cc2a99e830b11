"""dq.Radau's compiled step loop (one small dense float64 system, :mod:`deqcore.ode.radau_loop`) against the
driver's loop over the same stepper (``radau.COMPILED_LOOP = False``): the same attempts, evaluations of f and
Jacobians, return codes, recorded steps, dense output and values, on stiff problems with analytic and
finite-difference Jacobians, per-component tolerances, backwards spans, steady states and failures; errors
raised by rhs or jac propagate unchanged."""

import numpy as np
import pytest
import scipy.sparse as sp

import deqcore as dq
import deqcore.ode.radau as radau
import deqcore.ode.radau_machine as radau_machine
from deqcore.demos.stiff_problems import HIRES_T1, HIRES_Y0, hires
from tests.test_stiff import _robertson, _robertson_jac, _vdp


def _vdp_jac(t, y, mu=1000.0):
    return np.array([[0.0, 1.0], [-2.0 * mu * y[0] * y[1] - 1.0, mu * (1.0 - y[0] ** 2)]])


@pytest.fixture
def counted_loop(monkeypatch):
    """Counts the calls of the compiled loop."""
    calls = []
    run = radau_machine.radau_run

    def counting(*args):
        calls.append(1)
        return run(*args)
    monkeypatch.setattr(radau_machine, "radau_run", counting)
    return calls


def _both(monkeypatch, solve):
    """(compiled loop, driver loop) results of ``solve()``."""
    fast = solve()
    monkeypatch.setattr(radau, "COMPILED_LOOP", False)
    slow = solve()
    monkeypatch.setattr(radau, "COMPILED_LOOP", True)
    return fast, slow


def _assert_same_solution(fast, slow):
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
def test_compiled_loop_takes_the_driver_loops_steps(name, use_jac, monkeypatch, counted_loop):
    f, jac, y0, span, options = PROBLEMS[name]
    fast, slow = _both(monkeypatch, lambda: dq.integrate(f, y0, span, dq.Radau(), jac=jac if use_jac else None,
                                                         **options))
    assert fast.result == dq.ReturnCode.SUCCESS
    assert counted_loop and len(slow.steps) > 64     # the compiled loop ran; its record grew
    assert fast.stats["rejected"] > 0 and fast.stats["njev"] > 1
    _assert_same_solution(fast, slow)


def test_compiled_loop_with_saveat_backwards_and_loose_tolerances(monkeypatch, counted_loop):
    f, jac, y0, _, _ = PROBLEMS["robertson"]
    times = np.linspace(40.0, 0.0, 9)
    fast, slow = _both(monkeypatch, lambda: dq.integrate(lambda t, y: -f(t, y), y0, (40.0, 0.0), dq.Radau(),
                                                         rtol=1e-3, atol=1e-7, saveat=times))
    assert counted_loop
    _assert_same_solution(fast, slow)
    fast, slow = _both(monkeypatch, lambda: dq.integrate(lambda t, y: np.array([np.cos(t)]), np.zeros(1),
                                                         (3.0, -2.0), dq.Radau(), rtol=1e-9, atol=1e-12))
    _assert_same_solution(fast, slow)
    np.testing.assert_allclose(fast(1.0), np.sin([1.0]) - np.sin(3.0), atol=1e-8)


@pytest.mark.parametrize("use_jac", [True, False])
def test_compiled_loop_steady_state(use_jac, monkeypatch, counted_loop):
    """Autonomous: f is evaluated at every accepted state (the residual test reads it)."""
    A = -np.diag([1.0, 100.0, 1e4]) + 0.5 * np.eye(3, k=1)
    kwargs = dict(jac=(lambda t, u: A) if use_jac else None, atol=1e-10, rtol=1e-10)
    fast, slow = _both(monkeypatch, lambda: dq.steady_state(lambda t, u: A @ u + 1.0, np.zeros(3), dq.Radau(),
                                                            **kwargs))
    assert counted_loop
    assert fast.stats == slow.stats and fast.result == slow.result == dq.ReturnCode.SUCCESS
    np.testing.assert_array_equal(fast.value, slow.value)
    assert fast.residual == slow.residual
    np.testing.assert_allclose(fast.value, np.linalg.solve(A, -np.ones(3)), rtol=1e-8)


@pytest.mark.parametrize("case", ["nan", "later_inf", "blow_up", "bad_jac", "max_steps", "tiny_span"])
def test_compiled_loop_failures_are_the_same_codes(case, monkeypatch, counted_loop):
    problems = {
        "nan": (lambda t, y: y * np.nan, np.ones(2), (0.0, 1.0), {}),
        "later_inf": (lambda t, y: -y if t < 0.5 else np.full(2, np.inf), np.ones(2), (0.0, 1.0), {}),
        "blow_up": (lambda t, y: y * y, np.ones(1), (0.0, 2.0), dict(rtol=1e-6, atol=1e-6)),
        "bad_jac": (lambda t, y: -y, np.ones(2), (0.0, 1.0), dict(jac=lambda t, y: np.full((2, 2), np.nan))),
        "max_steps": (_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), dict(max_steps=20)),
        "tiny_span": (_robertson, np.array([1.0, 0.0, 0.0]), (1e9, 1e9 + 1e-6), {}),
    }
    f, y0, span, kwargs = problems[case]
    fast, slow = _both(monkeypatch, lambda: dq.integrate(f, y0, span, dq.Radau(), throw=False, **kwargs))
    assert counted_loop
    _assert_same_solution(fast, slow)
    expected = {"bad_jac": dq.ReturnCode.LINEAR_SOLVE_FAILED, "max_steps": dq.ReturnCode.MAX_STEPS,
                "tiny_span": dq.ReturnCode.SUCCESS}
    if case in expected:
        assert fast.result == expected[case]
    else:
        assert fast.result != dq.ReturnCode.SUCCESS


class _Boom(Exception):
    pass


def test_errors_raised_by_rhs_and_jac_propagate_unchanged(counted_loop):
    calls = []

    def rhs(t, y):
        calls.append(t)
        if len(calls) == 40:
            raise _Boom("from rhs")
        return _robertson(t, y)
    with pytest.raises(_Boom, match="from rhs"):
        dq.integrate(rhs, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), dq.Radau(), throw=False)
    assert len(calls) == 40 and counted_loop
    jac_calls = []

    def jac(t, y):
        jac_calls.append(t)
        if len(jac_calls) == 3:
            raise _Boom("from jac")
        return _robertson_jac(t, y)
    with pytest.raises(_Boom, match="from jac"):
        dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), dq.Radau(), jac=jac, throw=False)
    with pytest.raises(ValueError, match="rhs must return an array of shape \\(3,\\)"):
        dq.integrate(lambda t, y: np.ones(2) if t > 1.0 else -y, np.ones(3), (0.0, 5.0), dq.Radau())
    with pytest.raises(TypeError, match="real floating"):
        dq.integrate(lambda t, y: np.ones(3, dtype=int), np.ones(3), (0.0, 5.0), dq.Radau())


def test_a_sparse_user_jacobian_runs_the_driver_loop(monkeypatch):
    jac = lambda t, y: sp.csr_matrix(_robertson_jac(t, y))   # noqa: E731
    fast, slow = _both(monkeypatch, lambda: dq.integrate(_robertson, np.array([1.0, 0.0, 0.0]), (0.0, 100.0),
                                                         dq.Radau(), jac=jac, rtol=1e-6, atol=1e-10))
    _assert_same_solution(fast, slow)
