"""The steady-state adjoint's contract: accurate gradients by default (against a dense per-sample float64 solve
and finite differences, on an easy and a hard DEQ map), one bad sample never moves the others, failures are
coded and warned about, and AdjointInfo follows Solution's contract."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deqcore as dq
from deqcore.adjoint import _warn
from deqcore.adjoint.steady_state import AdjointInfo, FixedPointVJP, SteadyStateAdjoint
from tests.helpers import fd_jvp


def deq_map(kind, batch, width, inputs, seed):
    """z = tanh(W z + U x + b): easy (||W||_2 = 0.9) or hard (spectral radius 1.5), as benchmarks/deq_maps.py."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((width, width))
    W *= (0.9 / np.linalg.norm(W, 2)) if kind == "easy" else (1.5 / np.max(np.abs(np.linalg.eigvals(W))))
    U = rng.standard_normal((width, inputs)) / np.sqrt(inputs)
    b = 0.1 * rng.standard_normal(width)
    x = rng.standard_normal((batch, inputs))
    return W, U, b, x


def solve_forward(W, U, b, x, rtol=1e-11):
    inj = x @ U.T + b
    sol = dq.fixed_point(lambda z: np.tanh(z @ W.T + inj), np.zeros((x.shape[0], W.shape[0])),
                         dq.Anderson(), atol=0.0, rtol=rtol, max_steps=500, batched=True, throw=False)
    assert sol.success.all()
    return sol.value


def problem_at(W, U, b, x, z):
    """θ = W: pullback(v) = (∂f/∂zᵀ v, ∂f/∂Wᵀ v)."""
    inj = x @ U.T + b

    def vjp(zz):
        fz = np.tanh(zz @ W.T + inj)

        def pullback(v):
            s = v * (1 - fz ** 2)
            return s @ W, s.T @ zz

        return fz, pullback

    return FixedPointVJP(z, vjp, batched=True)


def dense_gradient(W, z, c):
    """dL/dW for L = <c, z*> by one dense float64 solve per sample."""
    grad = np.zeros_like(W)
    for zi, ci in zip(z, c):
        s = 1 - zi ** 2
        lam = np.linalg.solve((np.eye(len(zi)) - s[:, None] * W).T, ci)
        grad += np.outer(s * lam, zi)
    return grad


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("kind", ["easy", "hard"])
def test_default_adjoint_gives_the_implicit_gradient(kind):
    W, U, b, x = deq_map(kind, batch=6, width=64, inputs=16, seed=3)   # 64 > 50 state elements: GMRES
    z = solve_forward(W, U, b, x)
    c = np.random.default_rng(4).standard_normal(z.shape)
    exact = dense_gradient(W, z, c)
    adjoint = SteadyStateAdjoint().with_forward(atol=0.0, rtol=1e-8, max_steps=300)
    grad, info = adjoint.gradient(problem_at(W, U, b, x, z), c)
    assert info.success.all() and type(adjoint.linear_solver_for(64)).__name__ == "GMRES"
    assert rel(grad, exact) < 1e-6
    # finite differences of L(W + εV) along a random direction, through the forward solve
    V = np.random.default_rng(5).standard_normal(W.shape)
    loss = lambda Wp: float(np.sum(c * solve_forward(Wp, U, b, x, rtol=1e-13)))  # noqa: E731
    fd = fd_jvp(loss, W, V)
    assert abs(np.sum(grad * V) - fd) <= 1e-6 * max(1.0, abs(fd))
    # the reference's cheap budget, one argument away, is visibly less accurate on the hard map
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cheap, cheap_info = SteadyStateAdjoint(accuracy="cheap").gradient(problem_at(W, U, b, x, z), c)
    assert cheap_info.num_steps <= 10
    if kind == "hard":
        assert rel(cheap, exact) > 1e-2 and not cheap_info.success.any()


def test_default_follows_the_forward_tolerance_and_budget():
    adjoint = SteadyStateAdjoint().with_forward(atol=1e-3, rtol=1e-4, max_steps=32)
    assert (adjoint.atol, adjoint.rtol, adjoint.max_steps) == (0.0, 1e-3, 32)
    solver = adjoint.linear_solver_for(1000)
    assert (solver.rtol, solver.atol, solver.max_steps) == (1e-3, 0.0, 32)
    assert type(adjoint.linear_solver_for(50)).__name__ == "LU"
    explicit = SteadyStateAdjoint(rtol=1e-9).with_forward(atol=1e-3, rtol=1e-3, max_steps=32)
    assert explicit.rtol == 1e-9
    cheap = SteadyStateAdjoint(accuracy="cheap")
    assert cheap.with_forward(1e-6, 1e-6, 100) is cheap
    assert cheap.linear_solver_for(1000) == dq.GMRES(rtol=1e-3, atol=1e-3, restart=10, max_steps=10)


ADJOINTS = [SteadyStateAdjoint(), SteadyStateAdjoint(dq.LU()), SteadyStateAdjoint(dq.Anderson())]


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=["default", "lu", "anderson"])
@settings(max_examples=8, deadline=None)
@given(width=st.sampled_from([8, 60]), seed=st.integers(0, 2**31 - 1),
       where=st.sampled_from(["g nan", "g inf", "z nan"]))
def test_a_non_finite_sample_fails_alone(adjoint, width, seed, where):
    """A NaN/inf cotangent or a NaN fixed point in one sample gives that sample a failure code; every other
    sample equals its solo adjoint solve to round-off."""
    W, U, b, x = deq_map("easy", batch=4, width=width, inputs=3, seed=seed % 1000)
    z = solve_forward(W, U, b, x)
    c = np.random.default_rng(seed).standard_normal(z.shape)
    broken = seed % 4
    (c if where.startswith("g") else z)[broken, seed % width] = np.inf if where == "g inf" else np.nan
    adjoint = adjoint.with_forward(0.0, 1e-10, 200)
    _warn.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="ignore"):
            _, info = adjoint.gradient(problem_at(W, U, b, x, z), c)
    assert info.codes[broken] != dq.ReturnCode.SUCCESS
    assert any("1 of 4 samples" in str(w.message) for w in caught)
    for i in set(range(4)) - {broken}:
        solo = adjoint.solve_adjoint(problem_at(W, U, b, x[i:i + 1], z[i:i + 1]), c[i:i + 1])
        assert info.codes[i] == dq.ReturnCode.SUCCESS == solo.codes[0]
        np.testing.assert_allclose(info.lam[i], solo.lam[0], rtol=1e-9, atol=1e-12)


def test_unconverged_adjoint_warns_once_per_call_site_naming_the_count():
    W, U, b, x = deq_map("hard", batch=3, width=64, inputs=4, seed=0)
    z = solve_forward(W, U, b, x)
    problem, c = problem_at(W, U, b, x, z), np.ones(z.shape)
    tight = SteadyStateAdjoint(max_steps=3)
    _warn.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            _, info = tight.gradient(problem, c)           # one call site: one warning
        tight.gradient(problem, c)                         # another call site: another one
    assert [str(w.message).split(":")[0] for w in caught] == [
        "the adjoint solve failed for 3 of 3 samples (MAX_STEPS)"] * 2
    assert caught[0].filename == __file__ and info.codes == [dq.ReturnCode.MAX_STEPS] * 3


def test_adjoint_info_follows_the_solution_contract():
    W, U, b, x = deq_map("easy", batch=3, width=5, inputs=2, seed=1)
    z = solve_forward(W, U, b, x)
    c = np.ones(z.shape)
    c[2, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="1 of 3 samples"):
        _, info = SteadyStateAdjoint().gradient(problem_at(W, U, b, x, z), c)   # LU: a NaN cotangent is flagged
    assert isinstance(info, AdjointInfo) and isinstance(info, dq.Solution)
    assert info.success.tolist() == [True, True, False] and info.codes[2] == dq.ReturnCode.DIVERGED
    assert info.lam is info.value and info.value.shape == z.shape and info.residual.shape == (3,)
    assert info.stats["nvjp"] == info.nvjp == 5 + 1 and info.stats["nfev"] == 1 and info.num_steps == 1
    assert np.all(info.residual[:2] < 1e-12)
    text = repr(info)
    assert "<float64 (3, 5)>" in text and "SUCCESS x2" in text and "DIVERGED x1" in text and "[[" not in text
    with pytest.raises(dq.SolveError, match="1 of 3 samples DIVERGED") as err:
        info.raise_if_failed()
    assert err.value.solution is info


def test_bad_settings_are_named():
    for kwargs, error, message in [
        (dict(atol=-1.0), ValueError, "atol must be a finite number >= 0"),
        (dict(rtol=float("nan")), ValueError, "rtol must be"),
        (dict(max_steps=0), ValueError, "max_steps must be"),
        (dict(accuracy="exact"), ValueError, "accuracy must be one of 'forward', 'cheap'"),
        (dict(linear_solver="lu"), TypeError, "linear_solver must be"),
    ]:
        with pytest.raises(error, match=message):
            SteadyStateAdjoint(**kwargs)
