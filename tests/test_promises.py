"""README promises checked on cases the other test files leave out: float32 kept through every ODE path and ODE
adjoint, steady_state's stopping test with rtol=0, per-component atol in every ODE adjoint, inputs the entry
points must refuse by name (ODE adjoints, Dask, the command line), the JAX adapter's eager SolveError, and the
torch adapter on non-contiguous tensors, 0-d states in the stiff solvers, Newton–Krylov in float32, the global
errors the README quotes. References: analytic solutions, dense float64 solves.
"""

from __future__ import annotations

import numpy as np
import pytest

import deqcore as dq

# ---------------------------------------------------------------------------------------------- ODE problems

RNG = np.random.default_rng(7)
A64 = -2.0 * np.eye(3) + 0.3 * RNG.standard_normal((3, 3))      # stable: eigenvalues near -2
B64 = RNG.standard_normal(3)
STEADY64 = np.linalg.solve(A64, -B64)


def _linear_rhs(dtype, scale=None):
    """du/dt = A u + b (rows: u @ Aᵀ + b) in ``dtype``; refuses any other dtype, so a solver that promotes the
    state to float64 fails here rather than passing silently."""
    A, b = A64.astype(dtype), B64.astype(dtype)
    if scale is not None:
        b = b * np.asarray(scale, dtype=dtype)

    def rhs(t, u):
        if u.dtype != dtype:
            raise AssertionError(f"rhs called with {u.dtype}, the problem is {np.dtype(dtype).name}")
        return u @ A.T + b

    return rhs


ROSENBROCK = [dq.Rodas5P(), dq.Rodas4(linear_solver=dq.GMRES()), dq.Rodas3()]


@pytest.mark.parametrize("solver", ROSENBROCK, ids=["rodas5p", "rodas4-gmres", "rodas3"])
def test_batched_rosenbrock_steady_state_keeps_float32(solver):
    scale = np.array([[1.0], [2.0]])
    with pytest.warns(UserWarning, match="below what float32 resolves"):       # rtol=0 for the step control
        sol = dq.steady_state(_linear_rhs(np.float32, scale), np.zeros((2, 3), np.float32), solver,
                              atol=1e-4, rtol=0.0, batched=True)
    assert sol.value.dtype == np.float32 and sol.residual.dtype == np.float32
    assert sol.success.all()
    want = np.stack([STEADY64, 2.0 * STEADY64])
    residual = np.abs(sol.value.astype(np.float64) @ A64.T + B64 * scale).max(axis=1)
    assert (residual <= 1e-4 + 1e-5).all()          # the test it passed, up to float32 rounding of A and b
    np.testing.assert_allclose(sol.value, want, atol=2e-4)


def test_rosenbrock_gmres_integrate_keeps_float32_and_meets_the_analytic_solution():
    rhs = _linear_rhs(np.float32)
    sol = dq.integrate(rhs, np.zeros(3, np.float32), (0.0, 1.0), dq.Rodas5P(linear_solver=dq.GMRES()),
                       atol=1e-6, rtol=1e-4)
    from scipy.linalg import expm

    exact = expm(A64) @ np.zeros(3) + np.linalg.solve(A64, (expm(A64) - np.eye(3)) @ B64)
    assert sol.value.dtype == np.float32
    np.testing.assert_allclose(sol.value, exact, atol=5e-4)


@pytest.mark.parametrize("solver", [dq.VCABM3(), dq.VCAB3(), dq.Rodas5P(), dq.Tsit5()],
                         ids=["vcabm3", "vcab3", "rodas5p", "tsit5"])
def test_dense_output_of_a_float32_solve_is_float32(solver):
    sol = dq.integrate(lambda t, y: -y, np.ones(2, np.float32), (0.0, 1.0), solver, atol=1e-6, rtol=1e-4)
    mid = sol(np.array([0.25, 0.5]))
    assert mid.dtype == np.float32 and sol(0.3).dtype == np.float32
    np.testing.assert_allclose(mid[:, 0], np.exp(-np.array([0.25, 0.5])), atol=1e-3)


@pytest.mark.parametrize("solver", [dq.VCABM3(), dq.Tsit5(), dq.Rodas5P()], ids=["vcabm3", "tsit5", "rodas5p"])
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_steady_state_rtol_zero_is_the_absolute_test_in_float32(solver, batched):
    # README: the solve stops at max|f(u)| <= atol + rtol·max|f(u0)|; with rtol=0 that is max|f(u)| <= atol,
    # even though the step control raises rtol to 100 eps of float32 (1.2e-5, a relative stop 2x looser here)
    rhs = _linear_rhs(np.float32)
    y0 = np.zeros((1, 3) if batched else 3, np.float32)
    with pytest.warns(UserWarning, match="below what float32 resolves"):
        sol = dq.steady_state(rhs, y0, solver, atol=1e-5, rtol=0.0, batched=batched)
    assert np.all(sol.success)
    assert np.all(np.asarray(sol.residual) <= 1e-5)
    assert np.abs(rhs(0.0, sol.value)).max() <= 1e-5          # the returned value passes the test


def test_dense_output_refuses_non_numeric_times_and_takes_an_empty_array():
    sol = dq.integrate(lambda t, y: -y, np.ones(2), (1.0, 0.0), atol=1e-10, rtol=1e-10)   # backwards
    ts = np.array([0.2, 0.8, 0.5])                                                     # unsorted
    np.testing.assert_allclose(sol(ts)[:, 0], np.exp(1.0 - ts), rtol=1e-8)           # y(1) = 1
    assert sol(np.array([])).shape == (0, 2) and sol(np.array([])).dtype == np.float64
    for bad in ("0.5", True, np.array([0.5, 0.2]).astype(complex)):
        with pytest.raises(TypeError, match="t must be a real time"):
            sol(bad)
    for bad in (["0.5"], [False, True]):
        with pytest.raises(TypeError, match="saveat must hold real times"):
            dq.integrate(lambda t, y: -y, np.ones(2), (0.0, 1.0), saveat=bad)


# ------------------------------------------------------------------------------------------------ ODE adjoints

K = np.array([0.5, 1.5])


def _decay_vjp(t, y, args):
    k = args[0]
    return -k * y, lambda a: (-k * a, (-(a * y),))


ADJOINTS = [dq.GaussAdjoint(), dq.BacksolveAdjoint(), dq.DiscreteAdjoint()]
ADJOINT_IDS = ["gauss", "backsolve", "discrete"]


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=ADJOINT_IDS)
def test_ode_gradients_of_a_float32_solve_are_float32_and_accurate(adjoint):
    k = K.astype(np.float32)
    y0 = np.array([1.0, 2.0], np.float32)
    with pytest.warns(UserWarning, match="float32"):
        sol = dq.integrate(lambda t, y, k: -k * y, y0, (0.0, 1.0), args=(k,), atol=1e-7, rtol=1e-5)
    dy0, (dk,) = dq.ode_gradients(_decay_vjp, sol, np.ones(2, np.float32), adjoint)
    assert dy0.dtype == np.float32 and dk.dtype == np.float32
    np.testing.assert_allclose(dy0, np.exp(-K), rtol=1e-4)                  # L = Σ y0 exp(-k t) at t = 1
    np.testing.assert_allclose(dk, -np.array([1.0, 2.0]) * np.exp(-K), rtol=1e-4)


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=ADJOINT_IDS)
def test_ode_gradients_after_a_per_component_atol(adjoint):
    y0 = np.array([1.0, 2.0])
    sol = dq.integrate(lambda t, y, k: -k * y, y0, (0.0, 2.0), args=(K,), atol=np.array([1e-10, 1e-12]),
                       rtol=1e-10)
    dy0, (dk,) = dq.ode_gradients(_decay_vjp, sol, np.ones(2), adjoint)
    np.testing.assert_allclose(dy0, np.exp(-2.0 * K), rtol=1e-7)
    np.testing.assert_allclose(dk, -2.0 * y0 * np.exp(-2.0 * K), rtol=1e-7)


def test_discrete_adjoint_refuses_a_rosenbrock_forward_solve_by_name():
    sol = dq.integrate(lambda t, y, k: -k * y, np.ones(2), (0.0, 1.0), dq.Rodas5P(), args=(K,))
    with pytest.raises(TypeError, match="DiscreteAdjoint needs an explicit Runge"):
        dq.ode_gradients(_decay_vjp, sol, np.ones(2), dq.DiscreteAdjoint())


def test_ode_gradients_refuse_a_cotangent_of_another_dtype():
    sol = dq.integrate(lambda t, y, k: -k * y, np.ones(2), (0.0, 1.0), args=(K,))
    with pytest.raises(TypeError, match="dL_dyT must have the dtype of y0"):
        dq.ode_gradients(_decay_vjp, sol, np.ones(2, np.float32))


# ------------------------------------------------------------------------------------- ODE failures are codes

def test_integrate_stops_at_a_nonfinite_rhs_with_the_last_finite_state():
    # no silent NaN: rhs turns NaN from t = 0.5 on; the solve ends DIVERGED holding y(≈0.5) = exp(-0.5)
    rhs = lambda t, y: -y if t < 0.5 else y * np.nan       # noqa: E731
    sol = dq.integrate(rhs, np.ones(2), (0.0, 1.0), atol=1e-10, rtol=1e-10, throw=False)
    assert sol.result == dq.ReturnCode.DIVERGED
    assert np.isfinite(sol.value).all() and np.isfinite(sol.ys).all()
    np.testing.assert_allclose(sol.value, np.exp(-sol.ts[-1]), rtol=1e-8)
    with pytest.raises(dq.SolveError, match="DIVERGED"):
        dq.integrate(rhs, np.ones(2), (0.0, 1.0))


def test_a_blow_up_is_a_failure_code_and_saveat_keeps_the_times_reached():
    # y' = y², y(0) = 1: y = 1/(1 − t) blows up at t = 1
    sol = dq.integrate(lambda t, y: y * y, np.ones(1), (0.0, 2.0), atol=1e-10, rtol=1e-10,
                       saveat=[0.5, 0.9, 1.5], throw=False)
    assert sol.result in (dq.ReturnCode.DT_TOO_SMALL, dq.ReturnCode.DIVERGED, dq.ReturnCode.MAX_STEPS)
    np.testing.assert_array_equal(sol.ts, [0.5, 0.9])
    np.testing.assert_allclose(sol.ys[:, 0], 1.0 / (1.0 - np.array([0.5, 0.9])), rtol=1e-6)


# --------------------------------------------------------------------------------------------------- adapters

def test_torch_adapter_on_non_contiguous_tensors_gives_the_exact_implicit_gradient():
    torch = pytest.importorskip("torch")
    from deqcore.interop import torch as dqt

    torch.manual_seed(3)
    n, m, B = 5, 4, 3
    cell = dqt.example_cell(n, m, norm=0.8)
    x = torch.zeros(m, B, dtype=torch.float64)
    x.copy_(torch.randn(B, m, dtype=torch.float64).T)
    x = x.T.requires_grad_(True)                         # (B, m), column-major
    z0 = torch.zeros(n, B, dtype=torch.float64).T        # (B, n), column-major
    g = torch.zeros(n, B, dtype=torch.float64)
    g.copy_(torch.randn(B, n, dtype=torch.float64).T)
    g = g.T                                              # a non-contiguous cotangent
    assert not (x.is_contiguous() or z0.is_contiguous() or g.is_contiguous())
    layer = dqt.DEQ(cell, atol=1e-12, rtol=0.0, max_steps=200)
    z = layer(x, z0)
    z.backward(g)
    # reference: per sample, λ = (I − ∂f/∂z)⁻ᵀ g by a dense solve, then ∂L/∂x = λᵀ ∂f/∂x
    for i in range(B):
        zi = z[i].detach()
        J = torch.autograd.functional.jacobian(lambda zz: cell(zz[None], x[i:i + 1].detach())[0], zi)
        lam = torch.linalg.solve((torch.eye(n, dtype=torch.float64) - J).T, g[i])
        Jx = torch.autograd.functional.jacobian(lambda xx: cell(zi[None], xx[None])[0], x[i].detach())
        torch.testing.assert_close(x.grad[i], Jx.T @ lam, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(zi, cell(zi[None], x[i:i + 1].detach())[0], rtol=0, atol=1e-11)


def test_torch_adapter_names_an_empty_batch_and_a_non_finite_start():
    torch = pytest.importorskip("torch")
    from deqcore.interop import torch as dqt

    layer = dqt.DEQ(dqt.example_cell(3, 2))
    with pytest.raises(ValueError, match="x must have at least one sample"):
        layer(torch.zeros(0, 2, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.float64))
    for bad in (float("nan"), float("inf")):
        z0 = torch.zeros(2, 3, dtype=torch.float64)
        z0[1, 0] = bad
        with pytest.raises(ValueError, match="z0 must be a non-empty tensor of finite numbers"):
            layer(torch.ones(2, 2, dtype=torch.float64), z0)


def test_jax_adapter_names_an_empty_start():
    pytest.importorskip("jax")
    import jax.numpy as jnp
    from deqcore.interop import jax as dqj

    with pytest.raises(ValueError, match="z0 must have at least one element"):
        dqj.fixed_point(lambda z, a: 0.5 * z + a, jnp.zeros(0), jnp.ones(0))


@pytest.mark.parametrize("engine", ["xla", "host"])
def test_jax_eager_failure_raises_solve_error(engine):
    # README: "A failed solve raises dq.SolveError (under jit, a JaxRuntimeError carrying its message)"
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from deqcore.interop import jax as dqj

    f = lambda z, a: z + a                                # noqa: E731  (no fixed point)
    with pytest.raises(dq.SolveError, match="MAX_STEPS") as info:
        dqj.fixed_point(f, jnp.zeros(2), jnp.ones(2), dq.FixedPointIteration(), max_steps=3, engine=engine)
    assert not isinstance(info.value, jax.errors.JaxRuntimeError)


# ------------------------------------------------------------------------------------------------------ Dask

@pytest.mark.parametrize("call, match, error", [
    (lambda dqd: dqd.fixed_point(np.cos, np.zeros((4, 2)), atol=-1.0), "atol", ValueError),
    (lambda dqd: dqd.fixed_point(np.cos, np.zeros((4, 2)), rtol=float("nan")), "rtol", ValueError),
    (lambda dqd: dqd.steady_state(np.cos, np.zeros((4, 2)), atol=np.ones(2)), "atol", TypeError),
    (lambda dqd: dqd.root_find(np.cos, np.zeros((4, 2)), max_steps=0), "max_steps", ValueError),
    (lambda dqd: dqd.fixed_point(np.cos, np.zeros((4, 2)), solver=dq.Tsit5()), "solver", TypeError),
    (lambda dqd: dqd.steady_state(np.cos, np.zeros((4, 2)), solver=dq.Anderson()), "solver", TypeError),
    (lambda dqd: dqd.fixed_point(np.cos, np.zeros((0, 2))), "y0", ValueError),
    (lambda dqd: dqd.fixed_point(np.cos, np.zeros(4)), "y0", ValueError),
    (lambda dqd: dqd.integrate(lambda t, y: -y, np.ones((4, 2)), (0.0, np.inf)), "t_span", ValueError),
    (lambda dqd: dqd.integrate(lambda t, y: -y, np.ones((4, 2)), ("a", "b")), "t_span", ValueError),
], ids=["atol", "rtol", "atol-array-for-steady-state", "max_steps", "ode-solver-for-fixed-point", "root-solver-for-ode", "empty", "1-d",
        "inf-span", "str-span"])
def test_dask_refuses_bad_arguments_when_the_lazy_solve_is_built(call, match, error):
    dqd = pytest.importorskip("deqcore.dask")
    with pytest.raises(error, match=match):
        call(dqd)                               # raised here, before anything is computed


def test_dask_integrate_takes_a_numpy_span_and_a_backwards_one():
    dqd = pytest.importorskip("deqcore.dask")
    k = np.arange(4.0)
    import dask.array as da

    args = (da.from_array(k, chunks=2),)
    y0 = np.ones((4, 2))
    forward = dqd.integrate(lambda t, y, k: -k * y, y0, np.array([0.0, 1.0]), args=args, atol=1e-10,
                            rtol=1e-10).compute(scheduler="sync")
    backward = dqd.integrate(lambda t, y, k: -k * y, y0, (1.0, 0.0), args=args, atol=1e-10,
                             rtol=1e-10).compute(scheduler="sync")
    np.testing.assert_allclose(forward.value[:, 0], np.exp(-k), rtol=1e-8)
    np.testing.assert_allclose(backward.value[:, 0], np.exp(k), rtol=1e-8)


# ------------------------------------------------------------------------------------------ the command line

@pytest.mark.parametrize("argv", [
    ["solve", "--atol", "nan"], ["solve", "--rtol", "inf"], ["demo", "--lr", "inf"], ["demo", "--lr", "nan"],
    ["demo", "--seed", "-1"], ["demo", "--solvers", "--atol", "nan"],
])
def test_cli_rejects_non_finite_numbers_with_a_usage_error(argv, capsys):
    from deqcore.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in err and argv[-2] in err


# ---------------------------------------------------------------------------- broken promises fixed elsewhere

@pytest.mark.parametrize("mode", ["root_find", "fixed_point"])
def test_newton_krylov_solves_a_float32_problem_in_float32(mode):
    c = np.float32(0.5)

    def fn(y):
        if y.dtype != np.float32:
            raise AssertionError(f"fn called with {y.dtype}")
        return c * np.cos(y) - (y if mode == "root_find" else 0)

    solve = dq.root_find if mode == "root_find" else dq.fixed_point
    sol = solve(fn, np.zeros(3, np.float32), dq.NewtonRaphson(linear_solver=dq.GMRES()), atol=1e-6, rtol=0.0)
    assert sol.value.dtype == np.float32
    np.testing.assert_allclose(sol.value, 0.4501836, atol=1e-5)          # y = cos(y)/2


@pytest.mark.parametrize("solver", [dq.Radau(), dq.BDF()], ids=["radau", "bdf"])
def test_stiff_solvers_take_a_scalar_state(solver):
    # dq.Tsit5, dq.VCABM3 and dq.Rodas5P take y0 of shape () and return a 0-d array; y' = 1 − y, y(0) = 0
    sol = dq.integrate(lambda t, y: 1.0 - y, np.array(0.0), (0.0, 1.0), solver, atol=1e-10, rtol=1e-10)
    assert isinstance(sol.value, np.ndarray) and sol.value.shape == ()
    np.testing.assert_allclose(sol.value, 1.0 - np.exp(-1.0), rtol=1e-8)
    mid = sol(0.5)                                                   # dense output keeps the 0-d shape
    assert isinstance(mid, np.ndarray) and mid.shape == ()
    np.testing.assert_allclose(mid, 1.0 - np.exp(-0.5), rtol=1e-6)


# ---------------------------------------------------------------- steady_state: SUCCESS means the test passed

from hypothesis import example, given, settings, strategies as st  # noqa: E402


@settings(max_examples=15)
@given(seed=st.integers(0, 2 ** 16), dtype=st.sampled_from([np.float32, np.float64]),
       rtol=st.sampled_from([0.0, 1e-6, 1e-3]), solver=st.sampled_from(["vcabm3", "tsit5", "rodas5p"]))
@example(seed=1455, dtype=np.float32, rtol=0.0, solver="vcabm3")     # -s·I + 0.2·G drawn with an eigenvalue > 0
def test_steady_state_success_means_the_returned_state_passes_the_stopping_test(seed, dtype, rtol, solver):
    # du/dt = A u + b per sample (A stable), the caller's test max|f(u)| <= atol + rtol·max|f(u0)| recomputed
    # from the returned state in float64, against the dense solve's steady state
    rng = np.random.default_rng(seed)
    B, n = 3, 4
    A = -np.eye(n) * rng.uniform(0.5, 3.0) + 0.2 * rng.standard_normal((n, n))
    A -= max(0.0, np.linalg.eigvals(A).real.max() + 0.25) * np.eye(n)   # shifted stable where the draw is not
    b = rng.standard_normal((B, n))
    A32, b32 = A.astype(dtype), b.astype(dtype)
    atol = 1e-4 if dtype == np.float32 else 1e-9
    method = {"vcabm3": dq.VCABM3(), "tsit5": dq.Tsit5(), "rodas5p": dq.Rodas5P()}[solver]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)        # rtol below 100 eps is raised for the step control
        sol = dq.steady_state(lambda t, u: u @ A32.T + b32, np.zeros((B, n), dtype), method, atol=atol,
                              rtol=rtol, batched=True, max_steps=5000, throw=False)
    assert sol.value.dtype == dtype
    f_u = np.abs(sol.value @ A32.T + b32).max(axis=1)         # rhs in the problem's dtype, as the solver saw it
    threshold = atol + rtol * np.abs(b32).max(axis=1)         # u0 = 0: f(u0) = b
    ok = np.asarray(sol.success)
    assert ok.all()                                           # a stable linear system has its steady state
    assert (f_u[ok] <= threshold[ok] * (1 + 1e-6)).all()
    np.testing.assert_array_equal(np.asarray(sol.residual), f_u)
    exact = np.linalg.solve(A, -b.T).T
    # |u − u*| <= ‖A⁻¹‖ max|f(u)| (+ the rounding of A and b in float32)
    bound = np.linalg.norm(np.linalg.inv(A), np.inf) * threshold + (1e-5 if dtype == np.float32 else 1e-12)
    assert (np.abs(sol.value - exact).max(axis=1) <= bound * 1.01).all()


# ------------------------------------------------------------- integrate: the README's global-error figures

@pytest.mark.parametrize("solver, bound", [(dq.Tsit5(), 2.0), (dq.Rodas5P(), 0.3), (dq.Radau(), 0.35),
                                           (dq.Rodas3(), 8.0), (dq.VCABM3(), 1000.0), (dq.BDF(), 1000.0)],
                         ids=["tsit5", "rodas5p", "radau", "rodas3", "vcabm3", "bdf"])
def test_integrate_global_error_on_the_oscillator_is_what_the_readme_says(solver, bound):
    # y'' = −y over t ∈ [0, 20] (about three periods), exact solution (cos t, −sin t); the README quotes the
    # global error over the tolerance per method at tolerances 1e-4 … 1e-8
    exact = np.array([np.cos(20.0), -np.sin(20.0)])
    for tol in (1e-4, 1e-6, 1e-8):
        sol = dq.integrate(lambda t, y: np.array([y[1], -y[0]]), np.array([1.0, 0.0]), (0.0, 20.0), solver,
                           atol=tol, rtol=tol)
        assert sol.success
        assert np.max(np.abs(sol.value - exact)) <= bound * tol, tol
