"""The contract of root_find, fixed_point and linear_solve, fuzzed.

Bad arguments raise ValueError/TypeError naming the argument; odd memory layouts solve like contiguous arrays;
inside an otherwise good batch, failing samples (NaN, no root, runaway iterates) are not SUCCESS and every other
sample equals its solo (unbatched) solve to round-off; and every SUCCESS sample's returned value passes the
documented test when fn is evaluated there again:

- root_find:   max|fn(y)| ≤ atol + rtol·min(max|y|, max|fn(y0)|)
- fixed_point: max|fn(y) − y| ≤ atol + rtol·min(max|y|, s0), s0 = max(max|y0|, max|fn(y0)|)
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import deqcore as dq
from tests.helpers import FIXED_POINT_IDS, FIXED_POINT_SOLVERS

ROOT_SOLVERS = [None] + FIXED_POINT_SOLVERS
ROOT_IDS = ["default"] + FIXED_POINT_IDS
SUCCESS = int(dq.ReturnCode.SUCCESS)


def _max_abs(a):
    return np.abs(np.asarray(a, dtype=np.float64)).reshape(len(a), -1).max(axis=1)


def assert_success_rows_pass(mode, fn, y0, sol, atol, rtol, batched):
    """Evaluate fn again at the returned value and check the documented test on every SUCCESS sample."""
    value = sol.value
    B = y0.shape[0] if batched else 1
    f_y0, f_val = np.asarray(fn(y0)).reshape(B, -1), np.asarray(fn(value)).reshape(B, -1)
    y0_2d, val_2d = y0.reshape(B, -1), value.reshape(B, -1)
    finite = lambda a: np.where(np.isfinite(a), a, 0.0)  # noqa: E731
    if mode == "root":
        residual = _max_abs(f_val)
        threshold = atol + rtol * np.minimum(_max_abs(val_2d), finite(_max_abs(f_y0)))
    else:
        residual = _max_abs(f_val - val_2d)
        s0 = finite(np.maximum(_max_abs(y0_2d), _max_abs(f_y0)))
        threshold = atol + rtol * np.minimum(_max_abs(val_2d), s0)
    threshold *= 1 + 4 * np.finfo(y0.dtype).eps                 # the test runs in y0's dtype
    ok = np.atleast_1d(sol.success)
    assert np.isfinite(val_2d[ok]).all()
    assert (residual[ok] <= threshold[ok]).all(), (residual, threshold, sol.result)
    np.testing.assert_allclose(np.atleast_1d(sol.residual)[ok], residual[ok], rtol=1e-6)


# -- bad arguments -------------------------------------------------------------------------------------------
def _good_fn(y):
    return 0.5 * y - 0.25


BAD_Y0 = st.sampled_from([
    ("int", np.arange(3), TypeError, "y0"), ("bool", np.ones(3, bool), TypeError, "y0"),
    ("float16", np.zeros(3, np.float16), TypeError, "y0"), ("longdouble", np.zeros(3, np.longdouble), TypeError, "y0"),
    ("complex", np.zeros(3, complex), TypeError, "y0"), ("list", [0.0, 1.0], TypeError, "y0"),
    ("scalar", np.float64(1.0), TypeError, "y0"), ("none", None, TypeError, "y0"),
    ("nan", np.array([0.0, np.nan]), ValueError, "y0"), ("inf", np.array([np.inf, 0.0]), ValueError, "y0"),
    ("empty", np.zeros(0), ValueError, "y0"),
])
BAD_OPTION = st.sampled_from([
    ("atol", -1.0, ValueError), ("atol", np.nan, ValueError), ("atol", np.inf, ValueError), ("atol", "1e-6", TypeError),
    ("rtol", True, TypeError), ("rtol", -1e-9, ValueError), ("max_steps", 0, ValueError),
    ("max_steps", 2.5, TypeError), ("max_steps", "10", TypeError), ("max_steps", True, TypeError),
    ("throw", "False", TypeError), ("throw", 0, TypeError), ("throw", None, TypeError),
    ("batched", "yes", TypeError), ("batched", 1, TypeError), ("args", [1.0], TypeError),
    ("solver", "anderson", TypeError),
])


@pytest.mark.parametrize("entry", [dq.root_find, dq.fixed_point], ids=["root_find", "fixed_point"])
@settings(max_examples=12)
@given(case=BAD_Y0)
def test_bad_y0_is_named(entry, case):
    _, y0, error, name = case
    with pytest.raises(error, match=name):
        entry(_good_fn, y0)


@pytest.mark.parametrize("entry", [dq.root_find, dq.fixed_point], ids=["root_find", "fixed_point"])
@settings(max_examples=18)
@given(case=BAD_OPTION)
def test_bad_options_are_named(entry, case):
    name, value, error = case
    kwargs = {name: value}
    solver = kwargs.pop("solver", None)
    with pytest.raises(error, match=name):
        entry(_good_fn, np.zeros(3), solver, **kwargs)


BAD_OUTPUT = st.sampled_from([
    ("float32", lambda y: (0.5 * y).astype(np.float32), TypeError), ("int", lambda y: np.zeros(y.shape, int), TypeError),
    ("shape", lambda y: (0.5 * y)[:1], ValueError), ("list", lambda y: list(0.5 * y), TypeError),
    ("scalar", lambda y: float(y.sum()), TypeError), ("none", lambda y: None, TypeError),
])


@pytest.mark.parametrize("entry", [dq.root_find, dq.fixed_point], ids=["root_find", "fixed_point"])
@settings(max_examples=20)
@given(case=BAD_OUTPUT, first_bad_call=st.integers(0, 3),
       solver=st.sampled_from([dq.Anderson(), dq.Broyden(), dq.NewtonRaphson(), dq.FixedPointIteration()]))
def test_fn_output_is_checked_on_every_call(entry, case, first_bad_call, solver):
    # fn behaves for a few calls, then switches what it returns: the solve stops with an error naming fn, never
    # a false SUCCESS or an internal error.
    _, bad, error = case
    calls = []

    def fn(y):
        calls.append(1)
        return bad(y) if len(calls) > first_bad_call else 0.9 * np.tanh(y) + 0.1
    with pytest.raises(error, match="fn must return"):
        entry(fn, np.zeros(3), solver, atol=1e-12, rtol=0.0, throw=False)


@settings(max_examples=12)
@given(case=BAD_OUTPUT, first_bad_call=st.integers(0, 2))
def test_jac_output_is_checked_on_every_call(case, first_bad_call):
    _, bad, error = case
    calls = []

    def jac(y):
        calls.append(1)
        return bad(np.diag(2 * y)) if len(calls) > first_bad_call else np.diag(2 * y)
    with pytest.raises(error, match="jac must return"):
        dq.root_find(lambda y: y ** 2 - 4.0, np.full(2, 3.0), dq.NewtonRaphson(), jac=jac, atol=1e-14, rtol=0.0)


def test_huge_max_steps_is_accepted():
    sol = dq.root_find(lambda y: y - 1.0, np.zeros(2), dq.Anderson(), max_steps=10 ** 20)
    assert sol.success and np.allclose(sol.value, 1.0)
    sol = dq.root_find(lambda y: np.ones_like(y), np.ones(1), dq.Anderson(), max_steps=10 ** 20, throw=False)
    assert sol.result == dq.ReturnCode.STALLED               # no overflow, no endless run


def _layouts(a):
    """The same values in other memory layouts: Fortran order, a strided view, negative strides, read-only."""
    fortran = np.asfortranarray(a)
    strided = np.repeat(a, 2, axis=-1)[..., ::2]
    flipped = np.flip(np.flip(a, axis=-1).copy(), axis=-1)
    readonly = a.copy()
    readonly.setflags(write=False)
    return {"fortran": fortran, "strided": strided, "flipped": flipped, "readonly": readonly}


@pytest.mark.parametrize("entry", [dq.root_find, dq.fixed_point], ids=["root_find", "fixed_point"])
def test_odd_layouts_solve_like_contiguous_arrays(entry, rng):
    W = 0.4 * rng.standard_normal((3, 4, 4)) / 2
    x = rng.standard_normal((3, 4))
    fn = (lambda z: np.tanh(np.einsum("bij,bj->bi", W, z) + x) - z) if entry is dq.root_find else \
        (lambda z: np.tanh(np.einsum("bij,bj->bi", W, z) + x))
    y0 = 0.1 * rng.standard_normal((3, 4))
    ref = entry(fn, y0, dq.Broyden(), atol=1e-12, rtol=0.0, batched=True)
    for name, odd in _layouts(y0).items():
        sol = entry(fn, odd, dq.Broyden(), atol=1e-12, rtol=0.0, batched=True)
        np.testing.assert_allclose(sol.value, ref.value, rtol=0, atol=1e-14, err_msg=name)
        assert (odd == y0).all()                             # the caller's array is not written


# -- failing samples inside good batches ----------------------------------------------------------------------
KINDS = ("good", "nan", "nan_later", "no_root", "runaway")


def _batch_problem(rng, kinds, n, mode):
    """Per-sample systems: good ones are contractive maps G(z) = tanh(W z + x); failing ones return NaN
    (from the start, or once the iterate moves), have no solution (|residual| ≥ 1), or have their iterates run
    off to infinity (residual arctan(z) − 2 > 0.4 everywhere)."""
    B = len(kinds)
    W = rng.standard_normal((B, n, n))
    W *= 0.6 / np.linalg.norm(W, 2, axis=(1, 2))[:, None, None]
    x = rng.standard_normal((B, n))
    code = np.array([KINDS.index(k) for k in kinds])

    def residual(z, rows):            # F(z) of the rows ``rows`` (z: (len(rows), n))
        k = code[rows][:, None]
        good = np.tanh(np.einsum("bij,bj->bi", W[rows], z) + x[rows]) - z
        with np.errstate(all="ignore"):
            out = np.where(k == 1, np.nan, good)
            out = np.where((k == 2) & (np.abs(z).max(axis=1, keepdims=True) > 1e-3), np.nan, out)
            out = np.where(k == 3, np.cosh(z) + 0.0 * z, out)
            out = np.where(k == 4, np.arctan(z) - 2.0, out)
        return out

    def make(rows, batched):
        rows = np.asarray(rows)

        def fn(z):
            z2 = z if batched else z[None]
            F = residual(z2, rows)
            out = F if mode == "root" else F + z2
            return out if batched else out[0]
        return fn

    return make


@pytest.mark.parametrize("mode", ["root", "fixed_point"])
@pytest.mark.parametrize("solver", ROOT_SOLVERS, ids=ROOT_IDS)
@settings(max_examples=4)
@given(seed=st.integers(0, 2 ** 31), kinds=st.lists(st.sampled_from(KINDS), min_size=2, max_size=5),
       n=st.integers(1, 5), rtol=st.sampled_from([0.0, 1e-6, 1e-2]))
def test_failing_samples_do_not_move_their_neighbours(mode, solver, seed, kinds, n, rtol):
    if mode == "fixed_point" and solver is None:
        solver = dq.Anderson()
    rng = np.random.default_rng(seed)
    make = _batch_problem(rng, kinds, n, mode)
    B, atol = len(kinds), 1e-9
    entry = dq.root_find if mode == "root" else dq.fixed_point
    y0 = np.zeros((B, n))
    sol = entry(make(range(B), True), y0, solver, atol=atol, rtol=rtol, max_steps=60, batched=True, throw=False)
    assert_success_rows_pass(mode, make(range(B), True), y0, sol, atol, rtol, batched=True)
    for b, kind in enumerate(kinds):
        solo = entry(make([b], False), y0[b], solver, atol=atol, rtol=rtol, max_steps=60, throw=False)
        assert int(sol.result[b]) == int(solo.result), (b, kind)
        np.testing.assert_allclose(sol.value[b], solo.value, rtol=1e-12, atol=1e-14)
        if kind != "good":
            assert not sol.success[b], (b, kind, sol.codes[b])


def test_trust_region_rejected_row_keeps_its_difference_increments():
    # A row whose trial step is rejected takes no new Jacobian when it runs alone; in a batch it must not let a
    # neighbour's accepted step adapt its finite-difference increments either (found by fuzzing: float32,
    # atol = rtol = 0, the third row ended 370 away from its solo solve after 50 steps)
    rng = np.random.default_rng(5)
    A = (0.125 * rng.standard_normal((3, 7, 7))).astype(np.float32)
    c = (0.0625 + rng.standard_normal((3, 7))).astype(np.float32)
    y0 = (0.125 * rng.standard_normal((3, 7))).astype(np.float32)

    def make(rows):
        return lambda z: (np.tanh(np.einsum("bij,bj->bi", A[rows], z)) * 0.5 - c[rows] * 0.5).astype(np.float32)

    kw = dict(atol=0.0, rtol=0.0, max_steps=50, throw=False)
    sol = dq.root_find(make(slice(None)), y0, dq.TrustRegion(), batched=True, **kw)
    for b in range(3):
        solo = dq.root_find(make([b]), y0[b:b + 1], dq.TrustRegion(), batched=True, **kw)
        assert int(sol.result[b]) == int(solo.result[0])
        np.testing.assert_array_equal(sol.value[b], solo.value[0])


def test_default_solvers_start_each_method_with_fresh_difference_increments():
    # solver=None runs its methods in turn on the whole batch; the finite-difference increments one method adapted
    # depend on how long its batch ran, so the next method starts afresh (found by fuzzing: float32, atol = rtol
    # = 0, the third row was SUCCESS alone and STALLED, 1e3 away, in the batch)
    rng = np.random.default_rng(0)
    A = (1e-3 * rng.standard_normal((3, 2, 2))).astype(np.float32)
    c = (1.0 + rng.standard_normal((3, 2))).astype(np.float32)
    y0 = (1e-3 * rng.standard_normal((3, 2))).astype(np.float32)
    y0[1] = 0

    def make(rows):
        return lambda z: (np.tanh(np.einsum("bij,bj->bi", A[rows], z)) * 0.5 - c[rows] * 0.5).astype(np.float32)

    kw = dict(atol=0.0, rtol=0.0, max_steps=50, throw=False)
    sol = dq.root_find(make(slice(None)), y0, None, batched=True, **kw)
    for b in range(3):
        solo = dq.root_find(make([b]), y0[b:b + 1], None, batched=True, **kw)
        assert int(sol.result[b]) == int(solo.result[0])
        np.testing.assert_array_equal(sol.value[b], solo.value[0])


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
@pytest.mark.parametrize("solver", ROOT_SOLVERS, ids=ROOT_IDS)
def test_no_root_never_succeeds(solver, batched):
    # Neither has a root; their iterates run off to infinity, where the residual stays ≥ 0.43 (arctan) or 1 (exp).
    for fn in (lambda y: np.arctan(y) - 2.0, lambda y: np.exp(np.minimum(y, 700.0)) + 1.0):
        y0 = np.zeros((3, 1)) if batched else np.zeros(1)
        with np.errstate(all="ignore"):
            sol = dq.root_find(fn, y0, solver, throw=False, batched=batched)
        assert not np.any(sol.success), (sol.codes, sol.value)
        assert np.isfinite(sol.value).all()
    fixed = dq.fixed_point(lambda z: z + 2.0 - np.arctan(z), np.zeros((3, 1)) if batched else np.zeros(1),
                           solver or dq.Anderson(), throw=False, batched=batched)
    assert not np.any(fixed.success), fixed.codes


@pytest.mark.parametrize("mode", ["root", "fixed_point"])
@pytest.mark.parametrize("solver", ROOT_SOLVERS, ids=ROOT_IDS)
@settings(max_examples=5)
@given(seed=st.integers(0, 2 ** 31), n=st.integers(1, 6), dtype=st.sampled_from([np.float32, np.float64]),
       atol=st.sampled_from([0.0, 1e-7, 1e-3]), rtol=st.sampled_from([0.0, 1e-6, 1e-2]),
       offset=st.floats(-3.0, 3.0))
def test_success_means_the_returned_value_passes(mode, solver, seed, n, dtype, atol, rtol, offset):
    # Mildly nonlinear systems, some without a root (offset pushes tanh out of range): whatever the solver claims
    # SUCCESS for must pass the documented test at the value it returns.
    if mode == "fixed_point" and solver is None:
        solver = dq.Anderson()
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((3, n, n)).astype(dtype)
    c = (offset + rng.standard_normal((3, n))).astype(dtype)

    def fn(z):
        F = np.tanh(np.einsum("bij,bj->bi", A, z)) * 0.5 - c * 0.5 + 0.1 * z
        return (F if mode == "root" else F + z).astype(dtype)

    entry = dq.root_find if mode == "root" else dq.fixed_point
    y0 = rng.standard_normal((3, n)).astype(dtype)
    with np.errstate(all="ignore"):
        sol = entry(fn, y0, solver, atol=atol, rtol=rtol, max_steps=50, batched=True, throw=False)
    assert sol.value.dtype == dtype
    assert_success_rows_pass(mode, fn, y0, sol, atol, rtol, batched=True)


# -- linear_solve ---------------------------------------------------------------------------------------------
BAD_LINEAR = st.sampled_from([
    ("b list", lambda A, b: (A, list(b)), TypeError, "b"), ("b int", lambda A, b: (A, b.astype(int)), TypeError, "b"),
    ("b shape", lambda A, b: (A, np.append(b, 1.0)), ValueError, "b"),
    ("b longdouble", lambda A, b: (A, b.astype(np.longdouble)), TypeError, "b"),
    ("A int", lambda A, b: (np.round(A).astype(int), b), TypeError, "A"),
    ("A list", lambda A, b: (A.tolist(), b), TypeError, "A"),
    ("A longdouble", lambda A, b: (A.astype(np.longdouble), b), TypeError, "A"),
    ("A not square", lambda A, b: (A[:, :-1], b), ValueError, "A"),
])


@settings(max_examples=15)
@given(case=BAD_LINEAR, n=st.integers(2, 4))
def test_linear_solve_bad_arguments_are_named(case, n):
    _, corrupt, error, name = case
    A, b = np.eye(n) * 2.0 + 0.1, np.linspace(-1.0, 1.0, n) + 0.05
    A, b = corrupt(A, b)
    with pytest.raises(error, match=name):
        dq.linear_solve(A, b)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_linear_solve_non_finite_sample_is_its_own_failure(rng, bad_value):
    # a non-finite right-hand side is a failing sample (DIVERGED), not an error for the batch
    A = rng.standard_normal((3, 4, 4)) + 4.0 * np.eye(4)
    b = rng.standard_normal((3, 4))
    b[1, 2] = bad_value
    for solver in (dq.LU(), dq.GMRES(rtol=1e-12)):
        sol = dq.linear_solve(A, b, solver, throw=False)
        assert sol.codes[1] == dq.ReturnCode.DIVERGED
        for i in (0, 2):
            assert sol.success[i]
            np.testing.assert_allclose(sol.value[i], np.linalg.solve(A[i], b[i]), rtol=1e-9)
        with pytest.raises(dq.SolveError, match="DIVERGED"):
            dq.linear_solve(A, b, solver)


def test_linear_solve_throw_must_be_a_bool():
    with pytest.raises(TypeError, match="throw"):
        dq.linear_solve(np.eye(2), np.ones(2), throw="False")


@settings(max_examples=8)
@given(seed=st.integers(0, 2 ** 31), B=st.integers(2, 5), n=st.integers(1, 5), data=st.data())
def test_linear_solve_singular_samples_do_not_move_their_neighbours(seed, B, n, data):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((B, n, n)) + 3.0 * np.eye(n)
    b = rng.standard_normal((B, n))
    bad = data.draw(st.lists(st.integers(0, B - 1), max_size=B - 1, unique=True))
    A[bad] = 0.0                                             # singular samples
    sol = dq.linear_solve(A, b, throw=False)
    for i in range(B):
        if i in bad:
            assert not sol.success[i]
            continue
        solo = dq.linear_solve(A[i], b[i])
        assert sol.success[i]
        np.testing.assert_allclose(sol.value[i], solo.value, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(sol.value[i], np.linalg.solve(A[i], b[i]), rtol=1e-9, atol=1e-12)


def test_linear_solve_odd_layouts(rng):
    A = rng.standard_normal((4, 4)) + 4.0 * np.eye(4)
    b = rng.standard_normal((3, 4))
    expected = np.linalg.solve(A, b.T).T
    for name, odd in _layouts(A).items():
        np.testing.assert_allclose(dq.linear_solve(odd, b).value, expected, rtol=1e-10, err_msg=name)
    for name, odd in _layouts(b).items():
        np.testing.assert_allclose(dq.linear_solve(A, odd).value, expected, rtol=1e-10, err_msg=name)


def test_zero_dimensional_state_whose_arithmetic_returns_numpy_scalars():
    # NumPy turns arithmetic on a 0-d array into a scalar: fn's natural spelling must still be accepted
    root = dq.root_find(lambda y: y ** 2 - 2.0, np.array(1.0))
    assert root.success and abs(float(root.value) - np.sqrt(2.0)) < 1e-8
    fixed = dq.fixed_point(lambda z: np.cos(z), np.array(1.0))
    assert fixed.success and abs(float(fixed.value) - 0.7390851332151607) < 1e-5
