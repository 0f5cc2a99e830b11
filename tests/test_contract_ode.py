"""The contract of the ODE entry points, fuzzed: a bad argument raises ValueError/TypeError naming it; a failing
sample inside a good batch gets its own code while every other sample equals its solo solve.

Entry points: integrate, steady_state (batched and not) and ode_gradients with every ODE adjoint."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import deqcore as dq
from tests.helpers import EXPLICIT_ODE_SOLVERS

SOLVERS = EXPLICIT_ODE_SOLVERS
ADJOINTS = [dq.GaussAdjoint(), dq.BacksolveAdjoint(), dq.DiscreteAdjoint()]


def _decay(t, y):
    return -y


def _bad_tolerance():
    return st.sampled_from([-1.0, float("nan"), float("inf"), "1e-6", None, True, np.array([1e-6, -1.0])])


# (argument, strategy of bad values); each is checked on integrate and, where it exists, steady_state
BAD = {
    "y0": st.sampled_from([np.ones(2, dtype=int), np.array([1.0, np.nan]), np.array([np.inf]), [1.0, 2.0],
                           np.ones(0), np.ones(2, dtype=np.complex128), np.ones(2, dtype=np.longdouble),
                           np.ones(2, dtype=np.float16)]),
    "atol": _bad_tolerance(),
    "rtol": _bad_tolerance(),
    "max_steps": st.sampled_from([0, -3, 2.5, True, "10", None]),
    "args": st.sampled_from([[1.0], 1.0, "a"]),
    "solver": st.sampled_from([dq.LU(), "Tsit5", dq.Tsit5, None.__class__]),
    "throw": st.sampled_from(["False", 1, None]),
    "rhs": st.sampled_from([None, 3.0, "f"]),
    "batched": st.sampled_from([1, "yes", None]),
}
BAD_INTEGRATE = {
    "t_span": st.sampled_from([(0.0,), (1.0, 1.0), (0.0, float("nan")), (0.0, float("inf")), "01",
                               np.array([0.0, 1.0, 2.0]), (0.0, "1"), None]),
    "dt0": st.sampled_from([0.0, -0.1, float("nan"), "0.1"]),
    "saveat": st.sampled_from([[0.5, 0.2], [2.0], [float("nan")], [], [[0.1]]]),
}


@settings(max_examples=30)
@given(data=st.data(), name=st.sampled_from(sorted(BAD) + sorted(BAD_INTEGRATE)),
       entry=st.sampled_from(["integrate", "steady_state", "steady_state_batched"]))
def test_bad_argument_raises_an_error_naming_it(data, name, entry):
    if name in BAD_INTEGRATE and entry != "integrate":
        entry = "integrate"
    if name == "batched":
        entry = "steady_state"
    value = data.draw(BAD[name] if name in BAD else BAD_INTEGRATE[name])
    if name == "solver" and value is None:
        return                                       # None means the default solver
    call = dict(rhs=_decay, y0=np.ones((2, 2)) if entry == "steady_state_batched" else np.ones(2))
    if entry == "integrate":
        call["t_span"] = (0.0, 1.0)
    call[name] = value
    fn = dq.integrate if entry == "integrate" else dq.steady_state
    if entry == "steady_state_batched":
        call["batched"] = True
    if name == "rhs":
        rhs = call.pop("rhs")
        with pytest.raises((TypeError, ValueError), match="rhs"):
            fn(rhs, **call)
        return
    with pytest.raises((TypeError, ValueError), match=name.split("[")[0]):
        fn(**call)


@settings(max_examples=20)
@given(kind=st.sampled_from(["shape", "dtype", "complex", "scalar"]), entry=st.sampled_from(["ivp", "steady"]),
       solver=st.sampled_from(SOLVERS + [dq.Rodas3(), dq.BDF(), dq.Radau()]))
def test_a_bad_rhs_result_is_named(kind, entry, solver):
    out = {"shape": np.ones(3), "dtype": np.ones(2, dtype=int), "complex": np.ones(2, dtype=complex),
           "scalar": 1.0}[kind]
    rhs = lambda t, y: out  # noqa: E731
    with pytest.raises((TypeError, ValueError), match="rhs"):
        if entry == "ivp":
            dq.integrate(rhs, np.ones(2), (0.0, 1.0), solver)
        else:
            dq.steady_state(rhs, np.ones(2), solver)


def _vjp(t, y, args):
    k = args[0]
    return -k * y, lambda a: (-k * a, (-(a * y),))


@settings(max_examples=20)
@given(adjoint=st.sampled_from(ADJOINTS),
       bad=st.sampled_from(["shape", "int", "nan", "vjp", "solution", "adjoint", "failed"]))
def test_ode_gradients_bad_arguments(adjoint, bad):
    k = np.array([0.5])
    sol = dq.integrate(lambda t, y, k: -k * y, np.ones(2), (0.0, 1.0), args=(k,))
    call = dict(vjp=_vjp, solution=sol, dL_dyT=np.ones(2), adjoint=adjoint)
    name = {"shape": "dL_dyT", "int": "dL_dyT", "nan": "dL_dyT", "vjp": "vjp", "solution": "solution",
            "adjoint": "adjoint", "failed": "MAX_STEPS"}[bad]
    call.update({"shape": dict(dL_dyT=np.ones(3)), "int": dict(dL_dyT=np.ones(2, dtype=int)),
                 "nan": dict(dL_dyT=np.array([1.0, np.nan])), "vjp": dict(vjp=None),
                 "solution": dict(solution=sol.ys), "adjoint": dict(adjoint="gauss"),
                 "failed": dict(solution=dq.integrate(lambda t, y, k: -k * y, np.ones(2), (0.0, 50.0),
                                                      args=(k,), max_steps=2, throw=False))}[bad])
    with pytest.raises((TypeError, ValueError), match=name):
        dq.ode_gradients(call["vjp"], call["solution"], call["dL_dyT"], call["adjoint"])


@pytest.mark.parametrize("make", [
    lambda: dq.GaussAdjoint(atol=-1.0), lambda: dq.GaussAdjoint(quadrature_points=0),
    lambda: dq.BacksolveAdjoint(rtol=float("nan")), lambda: dq.BacksolveAdjoint(max_steps=0),
    lambda: dq.GaussAdjoint(solver="Tsit5"),
])
def test_adjoint_settings_are_checked(make):
    with pytest.raises((TypeError, ValueError)):
        make()


# ---- failing samples inside good batches --------------------------------------------------------------------

def _batch_rhs(k, c, kind):
    """Elementwise per-sample dynamics (so a row's arithmetic is the same batched or alone):
    relax: u' = −k (u − c) + 0.2 sin u; the failing kinds replace it in their samples."""
    def rhs(t, u):
        out = -k * (u - c) + 0.2 * np.sin(u)
        bad = kind != "ok"
        if bad.any():
            b = bad[:, 0]
            alt = {"nan": np.full_like(u, np.nan), "runaway": np.ones_like(u),
                   "oscillate": np.stack([u[:, 1], -u[:, 0]], axis=1) if u.shape[1] == 2 else u * 0 + 1,
                   "blowup": u * u + 1.0}
            for name, value in alt.items():
                m = (kind[:, 0] == name) & b
                out = np.where(m[:, None], value, out)
        return out
    return rhs


@settings(max_examples=12)
@given(seed=st.integers(0, 2**16), B=st.integers(2, 4), solver=st.sampled_from(SOLVERS),
       failure=st.sampled_from(["nan", "runaway", "oscillate", "blowup"]))
def test_a_failing_sample_never_moves_its_neighbours(seed, B, solver, failure):
    rng = np.random.default_rng(seed)
    n = 2
    k = rng.uniform(0.5, 3.0, (B, 1))
    c = rng.uniform(-2.0, 2.0, (B, 1))
    kind = np.full((B, 1), "ok", dtype=object)
    bad = int(rng.integers(B))
    kind[bad, 0] = failure
    y0 = rng.uniform(-1.0, 1.0, (B, n))
    options = dict(atol=1e-7, rtol=1e-7, max_steps=400, throw=False)
    with np.errstate(all="ignore"):
        batched = dq.steady_state(_batch_rhs(k, c, kind), y0, solver, batched=True, **options)
        assert batched.codes[bad] != dq.ReturnCode.SUCCESS
        for i in range(B):
            if i == bad:
                continue
            single = dq.steady_state(_batch_rhs(k[i:i + 1], c[i:i + 1], kind[i:i + 1]),
                                     y0[i:i + 1], solver, batched=True, **options)
            assert batched.codes[i] == dq.ReturnCode.SUCCESS == single.codes[0]
            np.testing.assert_allclose(batched.value[i], single.value[0], rtol=1e-14, atol=1e-15)
            assert batched.stats["accepted_per_sample"][i] == single.stats["accepted_per_sample"][0]
