"""ODE adjoints against central finite differences (float64) and against the discrete adjoint."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import deqcore as dq
from tests.helpers import fd_gradient

ADJOINTS = [dq.GaussAdjoint(), dq.BacksolveAdjoint(), dq.DiscreteAdjoint()]


def _rhs(t, y, params):
    return np.tanh(params["W"] @ y + params["b"] * np.cos(t)) - params["decay"][0] * y


def _vjp(t, y, args):
    p = args[0]
    th = np.tanh(p["W"] @ y + p["b"] * np.cos(t))
    f = th - p["decay"][0] * y

    def pullback(a):
        g = a * (1.0 - th**2)
        return p["W"].T @ g - p["decay"][0] * a, ({"W": np.outer(g, y), "b": g * np.cos(t),
                                                    "decay": np.array([-(a @ y)])},)
    return f, pullback


def _problem(seed, n):
    rng = np.random.default_rng(seed)
    params = {"W": rng.standard_normal((n, n)) / np.sqrt(n), "b": rng.standard_normal(n),
              "decay": np.array([0.3])}
    return params, rng.standard_normal(n), rng.standard_normal(n)


def _loss(y0, params, w, t1=1.5):
    sol = dq.integrate(_rhs, y0, (0.0, t1), args=(params,), atol=1e-12, rtol=1e-12)
    return w @ sol.ys[-1]


def _finite_differences(y0, params, w):
    dy0 = fd_gradient(lambda y: _loss(y, params, w), y0)
    dparams = {key: fd_gradient(lambda v, key=key: _loss(y0, {**params, key: v}, w), value)
               for key, value in params.items()}
    return dy0, dparams


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=lambda a: type(a).__name__)
def test_adjoint_gradients_match_finite_differences(adjoint):
    params, y0, w = _problem(3, 3)
    fd_y0, fd_params = _finite_differences(y0, params, w)
    sol = dq.integrate(_rhs, y0, (0.0, 1.5), args=(params,), atol=1e-10, rtol=1e-10)
    dy0, (dparams,) = dq.ode_gradients(_vjp, sol, w, adjoint)
    np.testing.assert_allclose(dy0, fd_y0, atol=1e-7)
    for key in params:
        np.testing.assert_allclose(dparams[key], fd_params[key], atol=1e-7)


@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4), adjoint=st.sampled_from(ADJOINTS[:2]))
def test_continuous_adjoints_agree_with_the_discrete_adjoint(seed, n, adjoint):
    params, y0, w = _problem(seed, n)
    sol = dq.integrate(_rhs, y0, (0.0, 1.5), args=(params,), atol=1e-9, rtol=1e-9)
    exact_y0, (exact,) = dq.ode_gradients(_vjp, sol, w, dq.DiscreteAdjoint())
    dy0, (grads,) = dq.ode_gradients(_vjp, sol, w, adjoint)
    np.testing.assert_allclose(dy0, exact_y0, atol=1e-6)
    for key in params:
        np.testing.assert_allclose(grads[key], exact[key], atol=1e-6)


def test_discrete_adjoint_is_exact_for_the_discrete_solution():
    """With loose tolerances the discrete gradient equals finite differences of the same step sequence."""
    params, y0, w = _problem(5, 2)
    sol = dq.integrate(_rhs, y0, (0.0, 1.5), args=(params,), atol=1e-3, rtol=1e-3)
    dy0, _ = dq.ode_gradients(_vjp, sol, w, dq.DiscreteAdjoint())

    def replay(y):  # the same accepted steps from a perturbed start
        from deqcore.ode.base import Evaluator
        from deqcore.ode.explicit import ExplicitRKStepper
        from deqcore.ode.tableaus import TSIT5
        ev = Evaluator(np, _rhs, (params,), False, False, y.shape, y.dtype)
        stepper = ExplicitRKStepper(ev, TSIT5)
        for step in sol.steps:
            y = stepper.attempt(np.array([step.t]), y, ev(np.array([step.t]), y), np.array([step.h])).y1
        return w @ y

    fd = fd_gradient(replay, y0)
    np.testing.assert_allclose(dy0, fd, atol=1e-9)


def test_gradients_with_other_forward_methods_and_backwards_spans():
    params, y0, w = _problem(7, 2)
    ref = dq.ode_gradients(_vjp, dq.integrate(_rhs, y0, (0.0, 1.5), args=(params,), atol=1e-10, rtol=1e-10),
                           w, dq.DiscreteAdjoint())
    sol = dq.integrate(_rhs, y0, (0.0, 1.5), dq.VCABM3(), args=(params,), atol=1e-10, rtol=1e-10)
    dy0, (grads,) = dq.ode_gradients(_vjp, sol, w)
    np.testing.assert_allclose(dy0, ref[0], atol=1e-6)
    np.testing.assert_allclose(grads["W"], ref[1][0]["W"], atol=1e-6)
    # a backwards solve: y(−1) from y(0); the gradient of w·y(−1) w.r.t. y0 by finite differences
    back = dq.integrate(_rhs, y0, (0.0, -1.0), args=(params,), atol=1e-10, rtol=1e-10)
    fd = fd_gradient(lambda y: w @ dq.integrate(_rhs, y, (0.0, -1.0), args=(params,), atol=1e-12,
                                                rtol=1e-12).ys[-1], y0)
    for adjoint in ADJOINTS:
        np.testing.assert_allclose(dq.ode_gradients(_vjp, back, w, adjoint)[0], fd, atol=1e-6)


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("span", [(0.0, 1.0), (1.0, 0.0)], ids=["forwards", "backwards"])
def test_parameter_gradient_of_exponential_decay_in_both_directions(adjoint, span):
    """y' = −k y: y(t1) = y(t0) exp(−k (t1 − t0)), so dy(t1)/dk = −(t1 − t0) y(t1)."""
    k = np.array([0.5])
    sol = dq.integrate(lambda t, y, k: -k * y, np.ones(1), span, args=(k,), atol=1e-11, rtol=1e-11)
    vjp = lambda t, y, args: (-args[0] * y, lambda a: (-args[0] * a, (-(a * y),)))  # noqa: E731
    dy0, (dk,) = dq.ode_gradients(vjp, sol, np.ones(1), adjoint)
    length = span[1] - span[0]
    np.testing.assert_allclose(dy0, np.exp(-0.5 * length), rtol=1e-7)
    np.testing.assert_allclose(dk, -length * np.exp(-0.5 * length), rtol=1e-7)


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=lambda a: type(a).__name__)
def test_parameter_gradients_on_a_backwards_span_match_finite_differences(adjoint):
    params, y0, w = _problem(11, 2)
    loss = lambda p: w @ dq.integrate(_rhs, y0, (1.0, -0.5), args=(p,), atol=1e-12, rtol=1e-12).ys[-1]  # noqa
    sol = dq.integrate(_rhs, y0, (1.0, -0.5), args=(params,), atol=1e-10, rtol=1e-10)
    _, (grads,) = dq.ode_gradients(_vjp, sol, w, adjoint)
    for key in ("b", "decay"):
        fd = fd_gradient(lambda v, key=key: loss({**params, key: v}), params[key])
        np.testing.assert_allclose(grads[key], fd, atol=1e-6)


def test_ode_gradients_bad_input():
    params, y0, w = _problem(1, 2)
    sol = dq.integrate(_rhs, y0, (0.0, 1.0), args=(params,))
    with pytest.raises(ValueError, match="dL_dyT"):
        dq.ode_gradients(_vjp, sol, np.ones(3))
    with pytest.raises(TypeError, match="adjoint"):
        dq.ode_gradients(_vjp, sol, w, adjoint="gauss")
    with pytest.raises(TypeError, match="vjp"):
        dq.ode_gradients(None, sol, w)
    with pytest.raises(TypeError, match="DiscreteAdjoint"):
        dq.ode_gradients(_vjp, dq.integrate(_rhs, y0, (0.0, 1.0), dq.VCABM3(), args=(params,)), w,
                         dq.DiscreteAdjoint())
    with pytest.raises(ValueError, match="quadrature_points"):
        dq.GaussAdjoint(quadrature_points=0)
    failed = dq.integrate(_rhs, y0, (0.0, 1.0), args=(params,), max_steps=2, throw=False)
    with pytest.raises(ValueError, match="MAX_STEPS"):
        dq.ode_gradients(_vjp, failed, w)
