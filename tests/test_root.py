"""Root finders and fixed-point solvers: properties on random problems, a classic problem bank against SciPy,
per-sample behaviour in batches, return codes and bad input."""

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, strategies as st

import deqcore as dq
from deqcore.demos.problems import PROBLEMS
from tests.helpers import FIXED_POINT_IDS as IDS
from tests.helpers import FIXED_POINT_SOLVERS, contractive_map, tolerance


@pytest.mark.parametrize("solver", FIXED_POINT_SOLVERS, ids=IDS)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 5), n=st.integers(1, 12),
       dtype=st.sampled_from([np.float32, np.float64]), contraction=st.floats(0.1, 0.8))
def test_contractive_maps_converge_and_the_residual_is_verified(solver, seed, batch, n, dtype, contraction):
    rng = np.random.default_rng(seed)
    f = contractive_map(rng, batch, n, dtype, contraction)
    atol = tolerance(dtype, 1e-4, 1e-10)
    sol = dq.fixed_point(f, np.zeros((batch, n), dtype), solver, atol=atol, rtol=0.0, max_steps=300, batched=True)
    assert sol.value.dtype == dtype and sol.success.all()
    # Verify independently of the solver's own claim, in float64.
    z = sol.value.astype(np.float64)
    assert np.abs(f(sol.value).astype(np.float64) - z).max() <= 2 * atol


@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(2, 5), n=st.integers(1, 8))
def test_batched_equals_per_sample_unbatched(seed, batch, n):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((batch, n, n))
    W *= 0.6 / np.linalg.norm(W, 2, axis=(1, 2))[:, None, None]        # one contraction per sample
    x = rng.standard_normal((batch, n))

    def f(z):
        return np.tanh(np.einsum("bij,bj->bi", W, z) + x)

    for solver in (dq.Anderson(), dq.Broyden(), dq.NewtonRaphson()):
        batched = dq.fixed_point(f, np.zeros((batch, n)), solver, atol=1e-12, rtol=0.0, batched=True)
        for b in range(batch):
            single = dq.fixed_point(lambda z: np.tanh(W[b] @ z + x[b]), np.zeros(n), solver, atol=1e-12, rtol=0.0)
            np.testing.assert_allclose(batched.value[b], single.value, atol=1e-10)


@pytest.mark.parametrize("solver", [dq.Broyden(memory=3), dq.LimitedMemoryBroyden(threshold=3),
                                    dq.Anderson(history_size=2)], ids=["broyden_ring", "lbroyden_reset", "anderson_2"])
def test_small_memories_wrap_and_still_converge(solver, rng):
    # Exercises the ring overwrite (Broyden), the restarts (LimitedMemoryBroyden) and the full Anderson ring.
    f = contractive_map(rng, 3, 12, np.float64, 0.7)
    sol = dq.fixed_point(f, np.zeros((3, 12)), solver, atol=1e-11, rtol=0.0, max_steps=300, batched=True)
    assert sol.stats["num_steps"] > 3
    assert np.abs(f(sol.value) - sol.value).max() <= 1e-11


def test_anderson_beats_plain_iteration_and_exposes_its_history(rng):
    Q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    W = (Q * np.linspace(-0.95, 0.95, 20)) @ Q.T            # symmetric, spectral radius 0.95
    x = rng.standard_normal((4, 20))
    f = lambda z: z @ W.T + x  # noqa: E731  (linear: plain iteration contracts by 0.95 per step)
    plain = dq.fixed_point(f, np.zeros((4, 20)), dq.FixedPointIteration(), atol=1e-10, rtol=0.0, max_steps=1000,
                           batched=True)
    anderson = dq.fixed_point(f, np.zeros((4, 20)), dq.Anderson(), atol=1e-10, rtol=0.0, batched=True)
    assert anderson.stats["nfev"] < plain.stats["nfev"] / 2
    G, F, count = anderson.learned["anderson_history"]
    assert G.shape == F.shape == (4, count, 20) and count == min(anderson.stats["num_steps"], 10)


@pytest.mark.parametrize("solver", [dq.Anderson(), dq.FixedPointIteration(damping=0.8)], ids=["anderson", "fpi"])
def test_fixed_point_solvers_work_in_root_find(solver, rng):
    # root_find iterates y <- y + fn(y): with fn(y) = G(y) - y for a contraction G that converges to fn's root.
    G = contractive_map(rng, 1, 6, np.float64, 0.5)
    sol = dq.root_find(lambda y: G(y[None])[0] - y, np.zeros(6), solver, atol=1e-11, rtol=0.0, max_steps=300)
    assert np.abs(G(sol.value[None])[0] - sol.value).max() <= 1e-11


@pytest.mark.parametrize("solver", [dq.Anderson(), dq.Broyden(), dq.LimitedMemoryBroyden()], ids=IDS[1:4])
def test_array_namespaces_agree_with_numpy(solver, xp, rng):
    W = rng.standard_normal((16, 16))
    W *= 0.9 / np.linalg.norm(W, 2)
    x = rng.standard_normal((4, 16))
    Wt, x_xp = xp.asarray(W.T), xp.asarray(x)
    sol = dq.fixed_point(lambda z: xp.tanh(z @ Wt + x_xp), xp.zeros((4, 16)), solver, atol=1e-10, rtol=0.0,
                         batched=True)
    ref = dq.fixed_point(lambda z: np.tanh(z @ W.T + x), np.zeros((4, 16)), solver, atol=1e-10, rtol=0.0,
                         batched=True)
    assert dq.backend.get_namespace(sol.value) is xp
    np.testing.assert_allclose(dq.backend.to_host(sol.value), ref.value, atol=1e-9)


def test_converged_samples_are_frozen():
    # Sample 0 converges at once (f = 0 is its fixed point), sample 1 needs many steps.
    scale = np.array([[0.0], [0.95]])

    def f(z):
        return scale * z + np.array([[0.0], [1.0]])

    sol = dq.fixed_point(f, np.zeros((2, 1)), dq.FixedPointIteration(), atol=1e-8, rtol=0.0, max_steps=1000,
                         batched=True)
    assert sol.success.all() and sol.value[0, 0] == 0.0
    assert abs(sol.value[1, 0] - 20.0) < 1e-6


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_default_solves_every_problem_scipy_solves(name):
    fn, y0 = PROBLEMS[name]()
    scipy_solved = False
    for method in ("hybr", "lm"):
        ref = scipy.optimize.root(fn, y0, method=method)
        if ref.success and np.abs(fn(ref.x)).max() < 1e-6:
            scipy_solved = True
    sol = dq.root_find(fn, y0, atol=1e-9, rtol=0.0, max_steps=200, throw=False)
    if scipy_solved:
        assert sol.success, (name, sol.codes, sol.residual)
    if sol.success:
        assert np.abs(fn(sol.value)).max() <= 1e-9           # checked independently of the solver


@pytest.mark.parametrize("solver", [dq.NewtonRaphson(), dq.TrustRegion(), dq.NewtonRaphson(linear_solver=dq.GMRES())],
                         ids=["newton", "trust_region", "newton_krylov"])
def test_newton_family_on_rosenbrock(solver):
    fn, y0 = PROBLEMS["generalised_rosenbrock_10"]()
    sol = dq.root_find(fn, y0, solver, atol=1e-10, rtol=0.0, max_steps=200)
    np.testing.assert_allclose(sol.value, 1.0, atol=1e-8)


def test_user_jacobian_is_used():
    calls = []

    def jac(y):
        calls.append(1)
        return np.diag(2 * y)

    sol = dq.root_find(lambda y: y ** 2 - 4.0, np.full(3, 3.0), dq.NewtonRaphson(), jac=jac, atol=1e-12)
    np.testing.assert_allclose(sol.value, 2.0)
    assert calls and sol.stats["njev"] == len(calls)       # the shape check's call at y0 is the first Jacobian


def test_newton_reports_learned_lu_factors():
    A = np.array([[3.0, 1.0], [1.0, 2.0]])
    sol = dq.root_find(lambda y: A @ y - 1.0, np.zeros(2), dq.NewtonRaphson(linear_solver=dq.LU()))
    lu = sol.learned["lu"]
    np.testing.assert_allclose(lu.solve(np.ones((1, 2)), transpose=True)[0], np.linalg.solve(A.T, np.ones(2)),
                               rtol=1e-6)


# -- return codes ----------------------------------------------------------------------------------------------
def test_blow_up_is_diverged_without_nan():
    sol = dq.fixed_point(lambda z: 3.0 * z + 1.0, np.zeros(4), dq.FixedPointIteration(), max_steps=500, throw=False)
    assert sol.result == dq.ReturnCode.DIVERGED
    assert np.isfinite(sol.value).all()
    with pytest.raises(dq.SolveError, match="DIVERGED"):
        dq.fixed_point(lambda z: 3.0 * z + 1.0, np.zeros(4), dq.FixedPointIteration(), max_steps=500)


def test_nan_producing_map_is_diverged_with_best_finite_iterate():
    def f(z):
        return np.where(z > 0.5, np.nan, z + 0.2)

    sol = dq.fixed_point(f, np.zeros(1), dq.FixedPointIteration(), throw=False)
    assert sol.result == dq.ReturnCode.DIVERGED and np.isfinite(sol.value).all()


def test_max_steps_and_stalled():
    sol = dq.fixed_point(lambda z: 0.999 * z + 1.0, np.zeros(1), dq.FixedPointIteration(), max_steps=5, throw=False)
    assert sol.result == dq.ReturnCode.MAX_STEPS and sol.stats["num_steps"] == 5
    # No root: y² + 1 = 0 has none on the reals.
    sol = dq.root_find(lambda y: y ** 2 + 1.0, np.array([0.5]), dq.NewtonRaphson(), max_steps=400, throw=False)
    assert not sol.success and sol.result in (dq.ReturnCode.STALLED, dq.ReturnCode.MAX_STEPS)
    assert np.isfinite(sol.value).all()


def test_singular_jacobian_gives_a_code_or_a_fallback_not_a_crash():
    # F(y) = (y0 + y1, y0 + y1 - 1) has a singular Jacobian everywhere and no root.
    fn = lambda y: np.array([y[0] + y[1], y[0] + y[1] - 1.0])  # noqa: E731
    sol = dq.root_find(fn, np.zeros(2), dq.NewtonRaphson(), max_steps=50, throw=False)
    assert not sol.success and np.isfinite(sol.value).all()


def test_per_sample_codes_in_a_mixed_batch():
    shift = np.array([[1.0], [-1.0]])          # sample 0: root at y = 1; sample 1: y² + 1 = 0 has none

    def fn(y):
        return y ** 2 - shift

    sol = dq.root_find(fn, np.full((2, 1), 0.5), dq.NewtonRaphson(), max_steps=100, batched=True, throw=False)
    assert sol.success.tolist() == [True, False]
    assert abs(sol.value[0, 0] - 1.0) < 1e-6
    with pytest.raises(dq.SolveError, match="1 of 2 samples"):
        sol.raise_if_failed()


# -- bad input ---------------------------------------------------------------------------------------------------
def test_bad_input_is_named():
    f = lambda z: 0.5 * z  # noqa: E731
    with pytest.raises(ValueError, match="y0 contains NaN"):
        dq.fixed_point(f, np.array([np.nan]))
    with pytest.raises(TypeError, match="y0 must have a floating dtype"):
        dq.fixed_point(f, np.arange(3))
    with pytest.raises(ValueError, match="fn must return arrays of y0's shape"):
        dq.fixed_point(lambda z: z[:1], np.zeros(3))
    with pytest.raises(TypeError, match="fn must return arrays of y0's dtype"):
        dq.fixed_point(lambda z: z.astype(np.float64), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="atol"):
        dq.fixed_point(f, np.zeros(3), atol=-1.0)
    with pytest.raises(ValueError, match="max_steps"):
        dq.fixed_point(f, np.zeros(3), max_steps=0)
    with pytest.raises(TypeError, match="solver must be"):
        dq.fixed_point(f, np.zeros(3), "anderson")
    with pytest.raises(TypeError, match="fn must be callable"):
        dq.fixed_point(None, np.zeros(3))
    with pytest.raises(ValueError, match="batched=True needs y0"):
        dq.fixed_point(f, np.zeros(3), batched=True)
    with pytest.raises(ValueError, match="jac must return arrays of the Jacobian's shape"):
        dq.root_find(f, np.zeros(3), jac=lambda y: np.eye(2))
    with pytest.raises(TypeError, match="unexpected keyword"):
        dq.fixed_point(f, np.zeros(3), tol=1e-3)


def test_bad_solver_settings_are_named():
    with pytest.raises(ValueError, match="history_size"):
        dq.Anderson(history_size=0)
    with pytest.raises(ValueError, match="damping"):
        dq.FixedPointIteration(damping=0.0)
    with pytest.raises(ValueError, match="linesearch"):
        dq.NewtonRaphson(linesearch="wolfe")
    with pytest.raises(TypeError, match="linear_solver"):
        dq.NewtonRaphson(linear_solver="gmres")
    with pytest.raises(TypeError, match="now called linear_solver"):
        dq.NewtonRaphson(linsolve=dq.GMRES())
    with pytest.raises(ValueError, match="threshold"):
        dq.LimitedMemoryBroyden(threshold=0)
    with pytest.raises(ValueError, match="eta"):
        dq.TrustRegion(eta=0.5)


# -- active-set compaction -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", [dq.Anderson(), dq.Broyden(), dq.LimitedMemoryBroyden(), dq.FixedPointIteration(),
                                    dq.NewtonRaphson()], ids=["anderson", "broyden", "lbroyden", "fpi", "newton"])
def test_compaction_evaluates_fewer_rows_and_changes_no_result(solver, rng):
    # Samples of very different difficulty (contractions 0.05 ... 0.9) and one without a fixed point: with
    # compact=True fn sees only the running rows, and each sample's value, code and residual equal the
    # uncompacted solve and its own unbatched solve to round-off.
    B, n = 8, 5
    W = rng.standard_normal((B, n, n))
    W *= np.linspace(0.05, 0.9, B)[:, None, None] / np.linalg.norm(W, 2, axis=(1, 2))[:, None, None]
    x = rng.standard_normal((B, n))
    shift = np.zeros((B, 1))
    shift[3] = 5.0                                      # sample 3: z -> z + 5 - arctan(z) has no fixed point

    def fn(z, W, x, shift):
        g = np.tanh(np.einsum("bij,bj->bi", W, z) + x)
        return np.where(shift > 0, z + shift - np.arctan(z), g)

    seen = []

    def counted(z, *args):
        seen.append(z.shape[0])
        return fn(z, *args)

    args = (W, x, shift)
    options = dict(atol=1e-10, rtol=0.0, max_steps=120, batched=True, throw=False)
    with np.errstate(all="ignore"):
        plain = dq.fixed_point(fn, np.zeros((B, n)), solver, args=args, **options)
        compact = dq.fixed_point(counted, np.zeros((B, n)), solver, args=args, compact=True, **options)
    np.testing.assert_array_equal(compact.result, plain.result)
    np.testing.assert_allclose(compact.value, plain.value, rtol=1e-12, atol=1e-14)
    assert compact.stats["nfev"] == plain.stats["nfev"]
    assert compact.stats["row_evaluations"] == sum(seen)
    assert plain.stats["row_evaluations"] == B * plain.stats["nfev"]
    if solver.compactable:
        assert compact.stats["row_evaluations"] < plain.stats["row_evaluations"]
        assert min(seen) < B
    assert not compact.success[3] and compact.success[np.arange(B) != 3].all()
    for b in range(B):
        solo = dq.fixed_point(lambda z: fn(z[None], W[b:b + 1], x[b:b + 1], shift[b:b + 1])[0], np.zeros(n), solver,
                              **{**options, "batched": False})
        np.testing.assert_allclose(compact.value[b], solo.value, rtol=1e-12, atol=1e-14)


def test_compaction_arguments_are_checked():
    f = lambda z, x: 0.5 * z + x  # noqa: E731
    with pytest.raises(ValueError, match="compact=True needs batched=True"):
        dq.fixed_point(f, np.zeros(3), args=(np.ones(3),), compact=True)
    with pytest.raises(ValueError, match=r"args\[0\]"):
        dq.fixed_point(f, np.zeros((2, 3)), args=(np.ones(3),), batched=True, compact=True)
    with pytest.raises(TypeError, match="compact"):
        dq.fixed_point(f, np.zeros((2, 3)), args=(np.ones((2, 3)),), batched=True, compact="yes")
