"""README promises of the root finders, fixed points, linear solves, the implicit adjoint, the layer API and the
command line, checked on cases the other test files leave out: right-hand sides far from size 1 in GMRES (a SUCCESS
must meet the test), empty batches in LU, linear-solve failures with linear-solve advice, Anderson on maps of tiny
scale (scale-free in rtol), a fn that overwrites one output buffer, tree paths that would collide in a file,
optimiser gradients and schedules that would silently change or NaN the parameters, clipping an exploding float32
gradient, a misshaped or float32 cotangent in the adjoint, bad --file problems on the command line. References:
dense NumPy solves, the same solve with fresh arrays or at unit scale, analytic values.
"""

from __future__ import annotations

import numpy as np
import pytest

import deqcore as dq
from deqcore import nn

# ------------------------------------------------------------------------------------------ linear solves


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e20), (np.float32, 1e-23), (np.float64, 1e160),
                                          (np.float64, 1e-170)])
def test_gmres_success_on_a_right_hand_side_far_from_size_one_is_the_solution(dtype, scale):
    # ||b||² overflows (or underflows) in the dtype: the test ||r|| <= rtol·||b|| must not pass at x = 0
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 4, 4)) + 4 * np.eye(4)
    b = rng.standard_normal((3, 4))
    exact = np.linalg.solve(A, b[..., None])[..., 0]
    sol = dq.linear_solve(A.astype(dtype), (scale * b).astype(dtype), dq.GMRES(rtol=1e-5), throw=False)
    assert sol.success.all() and sol.value.dtype == dtype
    np.testing.assert_allclose(sol.value.astype(np.float64) / scale, exact, rtol=1e-4, atol=1e-4)
    bnorm = np.linalg.norm(b, axis=1)
    assert np.all(np.isfinite(sol.residual)) and np.all(sol.residual / scale <= 1e-5 * bnorm * 1.01)


@pytest.mark.parametrize("solver", [dq.LU(), dq.GMRES()], ids=["lu", "gmres"])
def test_an_empty_batch_of_matrices_gives_an_empty_solution(solver):
    sol = dq.linear_solve(np.zeros((0, 3, 3)), np.zeros((0, 3)), solver)
    assert sol.value.shape == (0, 3) and len(sol.result) == 0


# ------------------------------------------------------------------------------------------ root solvers


@pytest.mark.parametrize("dtype, small", [(np.float32, 1e-10), (np.float64, 1e-120)])
def test_anderson_accelerates_a_small_scale_map_as_it_does_the_unit_scale_one(dtype, small):
    # rtol alone is scale-free: the map s·tanh(W z/s + x) needs as many steps at s = 1e-10 as at s = 1 (the floor
    # of Anderson's ridge once swamped a Gram matrix of 1e-20 and averaged the history instead)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((8, 8))
    W *= 0.95 / np.linalg.norm(W, 2)
    x = rng.standard_normal((4, 8))
    nfev = {}
    for scale in (1.0, small):
        Wd, xd = W.astype(dtype), (scale * x).astype(dtype)
        sol = dq.fixed_point(lambda z: (scale * np.tanh(z @ Wd.T / scale + xd / scale)).astype(dtype),
                             np.zeros((4, 8), dtype), dq.Anderson(), atol=0.0, rtol=1e-4, batched=True,
                             max_steps=300)
        nfev[scale] = sol.stats["nfev"]
    assert nfev[small] <= nfev[1.0] + 2, nfev


# ------------------------------------------------------------------------------------------ the layer API


def test_save_refuses_two_keys_that_would_share_one_path(tmp_path):
    # {1: a, "1": b} would be one member of the file: both leaves would load as b
    params = {1: np.ones(2), "1": np.zeros(2)}
    with pytest.raises(ValueError, match="same path component"):
        nn.save(tmp_path / "p.npz", params)
    with pytest.raises(ValueError, match="same path component"):
        nn.load(tmp_path / "p.npz", params)


@pytest.mark.parametrize("opt", [nn.SGD(lr=0.1), nn.SGD(lr=0.1, momentum=0.9), nn.Adam(lr=0.1)],
                         ids=["sgd", "momentum", "adam"])
def test_optimisers_refuse_a_gradient_that_would_change_the_parameters_dtype(opt):
    params = {"w": np.ones(3, np.float32)}
    with pytest.raises(TypeError, match=r"grads\['w'\] has dtype float64"):
        opt.update({"w": np.ones(3)}, opt.init(params), params)
    new, _ = opt.update({"w": np.ones(3, np.float32)}, opt.init(params), params)
    assert new["w"].dtype == np.float32


def test_clipping_an_exploding_float32_gradient_keeps_its_direction():
    # the float32 sum of squares of entries of 1e30 overflows: the gradient must be scaled to max_norm, not zeroed
    grads = {"a": np.array([3e30, 4e30], np.float32), "b": np.zeros(1, np.float32)}
    clipped, norm = nn.clip_by_global_norm(grads, 1.0)
    np.testing.assert_allclose(float(norm), 5e30, rtol=1e-6)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.8], rtol=1e-6)
    assert clipped["a"].dtype == np.float32


# ------------------------------------------------------------------------------------------ the command line


@pytest.mark.parametrize("body, named", [
    ("y0 = np.array([np.nan, 1.0])\ndef fn(y): return y - 1\n", "y0 contains NaN"),
    ("y0 = np.ones(3)\ndef fn(y): return y[:2] - 1\n", "fn must return arrays of y0's shape"),
    ("y0 = 'abc'\ndef fn(y): return y\n", "y0 must be an array of numbers"),
], ids=["nan-start", "fn-shape", "string-start"])
def test_cli_solve_names_a_bad_file_in_one_line_with_exit_code_2(tmp_path, capsys, body, named):
    from deqcore.cli import main

    path = tmp_path / "problem.py"
    path.write_text("import numpy as np\n" + body)
    with pytest.raises(SystemExit) as info:
        main(["solve", "--file", str(path)])
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert named in last and "problem.py" in last


def test_cli_solve_keeps_a_float32_file_in_float32_and_refuses_a_fixed_point_flag_it_would_ignore(tmp_path, capsys):
    from deqcore.cli import main

    path = tmp_path / "problem.py"
    path.write_text("import numpy as np\ny0 = np.ones(3, np.float32)\ndef fn(y): return (y - 2).astype(np.float32)\n")
    assert main(["solve", "--file", str(path), "--atol", "1e-5"]) == 0
    assert "converged: 1/1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["solve", "--problem", "rosenbrock", "--fixed-point"])
    assert info.value.code == 2 and "--fixed-point" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("call, code", [
    (lambda: dq.linear_solve(np.zeros((2, 2)), np.ones(2)), "LINEAR_SOLVE_FAILED"),
    (lambda: dq.linear_solve(np.eye(2), np.array([[1.0, np.nan], [1.0, 2.0]])), "DIVERGED"),
    (lambda: dq.linear_solve(np.diag([1.0, 1e-3, 1e-6, 1e-9]), np.ones(4), dq.GMRES(rtol=1e-12, restart=1,
                                                                                  max_steps=3)), "MAX_STEPS"),
], ids=["singular", "nan-rhs", "budget"])
def test_a_failed_linear_solve_gives_linear_solve_advice_not_root_solver_advice(call, code):
    with pytest.raises(dq.SolveError, match=code) as info:
        call()
    message = str(info.value)
    assert "linear solve failed" in message
    assert not any(word in message for word in ("TrustRegion", "damping", "Anderson", "Broyden", "root"))


@pytest.mark.parametrize("bad", [float("nan"), -0.1, float("inf")])
def test_a_learning_rate_schedule_returning_a_bad_value_is_refused_not_a_nan_parameter(bad):
    params = {"w": np.ones(2)}
    for opt in (nn.SGD(lr=lambda step: bad), nn.Adam(lr=lambda step: bad)):
        with pytest.raises(ValueError, match="lr schedule returned"):
            opt.update({"w": np.ones(2)}, opt.init(params), params)


# ------------------------------------------------------------------------------------------ implicit adjoint


@pytest.mark.parametrize("solver", [None, dq.GMRES(rtol=1e-12), dq.Anderson()], ids=["default", "gmres", "anderson"])
def test_the_adjoint_names_a_misshaped_cotangent_and_solves_a_float32_one_in_the_fixed_points_dtype(solver):
    from deqcore.adjoint.steady_state import FixedPointVJP

    A = np.array([[0.5, 0.2], [0.0, 0.4]])
    theta = np.ones((3, 2))
    z = np.linalg.solve(np.eye(2) - A, theta.T).T
    problem = FixedPointVJP(z, lambda zz: (zz @ A.T + theta, lambda v: (v @ A, v)), batched=True)
    adjoint = dq.SteadyStateAdjoint(solver, atol=1e-13, rtol=1e-13)
    with pytest.raises(ValueError, match=r"g \(the cotangent of z\*\) must have z\*'s shape \(3, 2\)"):
        adjoint.gradient(problem, np.ones((3, 3)))
    grad, info = adjoint.gradient(problem, np.ones((3, 2), np.float32))
    assert info.success.all() and grad.dtype == np.float64
    np.testing.assert_allclose(grad, np.tile(np.linalg.solve((np.eye(2) - A).T, np.ones(2)), (3, 1)), rtol=1e-10)


@pytest.mark.parametrize("solver", [dq.TrustRegion(), dq.Broyden(), dq.NewtonRaphson(), None],
                         ids=["trust", "broyden", "newton", "default"])
@pytest.mark.parametrize("batched", [False, True])
def test_a_fn_that_overwrites_one_output_buffer_gets_the_solve_of_a_fn_returning_fresh_arrays(solver, batched):
    # fn(y) = y³ + y − c written into one buffer it returns on every call (a common way to save allocations):
    # the trust region held F at its iterate in that buffer, which the trial evaluation overwrote (STALLED)
    c = np.array([[2.0, 10.0, 3.0], [1.0, 5.0, 0.5]])
    buf = np.empty_like(c)

    def reusing(y):
        out = np.multiply(y, y, out=buf)
        out *= y
        out += y
        out -= c
        return out

    fresh = dq.root_find(lambda y: y * y * y + y - c, np.ones_like(c), solver, atol=1e-10, rtol=0.0,
                         batched=batched, throw=False)
    sol = dq.root_find(reusing, np.ones_like(c), solver, atol=1e-10, rtol=0.0, batched=batched, throw=False)
    np.testing.assert_array_equal(np.asarray(sol.result), np.asarray(fresh.result))
    np.testing.assert_array_equal(sol.value, fresh.value)
    assert np.all(np.asarray(fresh.result) == 0) or solver == dq.Broyden()


@pytest.mark.parametrize("step, error", [(-1, ValueError), (-5, ValueError), (1.5, TypeError),
                                         (float("nan"), TypeError), (True, TypeError)])
def test_a_cosine_schedule_refuses_a_step_off_its_curve_by_name(step, error):
    # step -5 used to extrapolate the warm-up line to a negative learning rate, NaN gave a silent 0
    sched = nn.cosine_schedule(1.0, total_steps=10, warmup_steps=2)
    with pytest.raises(error, match="step must be an integer"):
        sched(step)
    assert sched(np.int64(1)) == 1.0 and sched(10) == 0.0
    with pytest.raises(TypeError, match="warmup_steps must be an integer"):
        nn.cosine_schedule(1.0, total_steps=10, warmup_steps=1.5)


def test_a_misshaped_preconditioner_is_named_in_gmres_and_in_the_default_adjoint():
    # its shape error said "matvec" (GMRES) or came from NumPy's matmul (the default adjoint's iterations)
    def halves(v):
        return v[..., : v.shape[-1] // 2]

    message = r"preconditioner returned shape \(2, 2\) for input shape \(2, 4\)"
    with pytest.raises(ValueError, match=message):
        dq.GMRES().solve(4 * np.eye(4), np.ones((2, 4)), preconditioner=halves)
    with pytest.raises(ValueError, match=r"preconditioner must be an operator of shape \(4, 4\) like A"):
        dq.GMRES().solve(4 * np.eye(4), np.ones((2, 4)),
                         preconditioner=dq.LinearOperator.from_matrix(np.eye(3)))
    from deqcore.adjoint.steady_state import DENSE_ADJOINT_LIMIT, FixedPointVJP

    n = DENSE_ADJOINT_LIMIT + 10             # above it the default adjoint is GMRES after plain iterations
    rng = np.random.default_rng(0)
    A = 0.999 * np.linalg.qr(rng.standard_normal((n, n)))[0]     # slow iterations: GMRES takes over at once
    theta = np.ones((2, n))
    z = np.linalg.solve(np.eye(n) - A, theta.T).T
    problem = FixedPointVJP(z, lambda zz: (zz @ A.T + theta, lambda v: (v @ A, v)), batched=True)
    with pytest.raises(ValueError, match=rf"preconditioner returned shape \(2, {n // 2}\)"):
        dq.SteadyStateAdjoint().gradient(problem, np.ones((2, n)), preconditioner=halves)
    inverse = np.linalg.inv(np.eye(n) - A)   # rows v ↦ v (I − A)⁻¹: (I − Aᵀ)⁻¹ per row, exact
    grad, info = dq.SteadyStateAdjoint().gradient(problem, np.ones((2, n)),
                                                  preconditioner=lambda v: v @ inverse)
    assert info.success.all() and info.stats["num_steps"] < 10
    exact = np.linalg.solve((np.eye(n) - A).T, np.ones(n))
    np.testing.assert_allclose(grad, np.tile(exact, (2, 1)), rtol=1e-4)


def test_save_and_load_round_trip_the_python_scalars_of_a_batchnorm_state_and_an_adam_state(tmp_path):
    # BatchNorm's training flag and Adam's step count (Python bool/int) were refused: "... not an array"
    model = nn.Chain(nn.Dense(3, 3), nn.BatchNorm(3))
    opt = nn.Adam(lr=0.05)
    x = np.random.default_rng(1).standard_normal((8, 3))

    def train(params, state, opt_state, steps):
        for _ in range(steps):
            y, pullback, state = nn.vjp(model, x, params, state)
            params, opt_state = opt.update(pullback(2 * y)[1], opt_state, params)
        return params, state, opt_state

    params, state = nn.setup(0, model)
    trees = train(params, state, opt.init(params), 2)
    fresh_params, fresh_state = nn.setup(5, model)
    templates = (fresh_params, nn.testmode(fresh_state), opt.init(fresh_params))
    loaded = []
    for name, tree, template in zip(("params", "state", "opt"), trees, templates):
        nn.save(tmp_path / name, tree)
        loaded.append(nn.load(tmp_path / name, template))
    assert loaded[1]["layer_2"]["training"] is True
    assert type(loaded[2]["step"]) is int and loaded[2]["step"] == 2
    for tree, back in zip(trees, loaded):
        assert [p for p, _ in nn.tree_paths(back)] == [p for p, _ in nn.tree_paths(tree)]
        for (_, a), (_, b) in zip(nn.tree_paths(tree), nn.tree_paths(back)):
            np.testing.assert_array_equal(b, a)
    for a, b in zip(nn.tree_leaves(train(*trees, 3)), nn.tree_leaves(train(*loaded, 3))):
        np.testing.assert_array_equal(b, a)
    with pytest.raises(TypeError, match="'name' is a str, not an array or a Python bool, int or float"):
        nn.save(tmp_path / "bad", {"name": "adam"})
