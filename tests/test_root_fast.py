"""The root solvers' fixed costs: the start point's compiled pass, Anderson's learned ring and compiled loops run
in turn and nested, each checked against a computation made another way."""

import numpy as np
import pytest

import deqcore as dq
from deqcore.root.driver_kernels_numba import start_point_numba_cpu


def _deq_map(rng, n, dtype, scale=0.5):
    W = (rng.standard_normal((n, n)) * (scale / np.sqrt(n))).astype(dtype)

    def fn(z, x):
        return np.tanh(z @ W.T + x)
    return fn


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relative", [True, False])
def test_start_point_matches_a_numpy_computation_bit_for_bit(dtype, relative):
    # f0 = G(y0) − y0 and the scale max(max|y0|, max|y0 + f0|) (or max|f0|), rounded in the dtype; a row with a NaN
    # or an infinity anywhere in what is measured has scale 0; y_limit = scale/√eps rounded from float64.
    rng = np.random.default_rng(3)
    y0 = rng.standard_normal((9, 37)).astype(dtype)
    raw = (y0 + rng.standard_normal((9, 37)) * 10.0 ** rng.integers(-8, 3, size=(9, 1))).astype(dtype)
    y0[1, 5], raw[2, 0], y0[3, 36] = np.nan, np.inf, -np.inf
    y0[4], raw[4] = 0.0, -0.0                                      # an all-zero row: scale 0, y_limit inf
    raw[5, 7] = np.finfo(dtype).max                                # y0 + f0 rounds to the largest finite value
    y0[6, :] = -0.0
    eps = float(np.finfo(dtype).eps)
    with np.errstate(all="ignore"):
        f0, tol, cap, y_limit = start_point_numba_cpu(y0, raw, True, 1e-5, relative, eps)
        expected_f0 = raw - y0
        measured = np.maximum(np.abs(y0), np.abs(y0 + expected_f0)) if relative else np.abs(expected_f0)
    finite = np.isfinite(measured).all(axis=1)
    scale = np.where(finite, np.where(finite[:, None], measured, 0).max(axis=1), 0).astype(dtype)
    assert f0.tobytes() == expected_f0.tobytes()
    assert cap.tobytes() == scale.tobytes() and tol.tobytes() == np.full(9, 1e-5, dtype).tobytes()
    with np.errstate(divide="ignore", over="ignore"):
        limit = np.where(scale > 0, scale.astype(np.float64) / np.sqrt(eps), np.inf).astype(dtype)
    assert y_limit.tobytes() == (limit if relative else np.full(9, np.inf, dtype)).tobytes()
    assert cap[[1, 2, 3, 4]].tolist() == [0, 0, 0, 0] and cap[0] > 0


@pytest.mark.parametrize("compact", [False, True])
def test_learned_ring_of_a_solve_ending_within_its_history_is_its_filled_slots(compact, rng):
    # A solve ending after k < history_size steps hands over slots 0 … k−1: each slot i holds (G(y_i), f_i) with
    # f_i = G(y_i) − y_i, i.e. G(G_i − F_i) = G_i, and the last slot's iterate is what the solve stepped from.
    batch, n, m = 5, 12, 16
    fn = _deq_map(rng, n, np.float64, 0.1)
    x = rng.standard_normal((batch, n)) * np.array([1e-8, 1e-3, 0.1, 1.0, 1.0])[:, None]   # rows end at different steps
    sol = dq.fixed_point(fn, np.zeros((batch, n)), dq.Anderson(history_size=m), args=(x,), atol=1e-6, rtol=0.0,
                         batched=True, compact=compact)
    G, F, count = sol.learned["anderson_history"]
    assert 1 < count == sol.stats["num_steps"] < m and G.shape == F.shape == (batch, count, n)
    running = []
    for i in range(count):
        ran = np.any(F[:, i] != 0, axis=1)                 # rows that had finished before step i hold zeros
        running.append(int(ran.sum()))
        assert not ran[0] and (ran[3:].all() or i > 0)     # row 0 starts converged (|x| ~ 1e-8)
        np.testing.assert_allclose(fn(G[ran, i] - F[ran, i], x[ran]), G[ran, i], rtol=0, atol=1e-12)
    assert running == sorted(running, reverse=True) and running[-1] >= 1
    full = dq.fixed_point(fn, np.zeros((batch, n)), dq.Anderson(history_size=3), args=(x,), atol=1e-6, rtol=0.0,
                          batched=True, compact=compact)
    G3, F3, count3 = full.learned["anderson_history"]
    assert count3 == 3 and G3.shape == (batch, 3, n)


def _solve(fn, x, dtype, m):
    return dq.fixed_point(fn, np.zeros(x.shape, dtype), dq.Anderson(history_size=m), args=(x.astype(dtype),),
                          atol=1e-5, rtol=1e-5, batched=True, throw=False)


def test_solves_in_turn_and_nested_change_no_result(rng):
    # Solves of other dtypes, batches and history sizes in turn, and one nested inside another's evaluation (the
    # compiled loop's state is its own per call): each result bit for bit that of the same solve run first.
    n = 16
    fn = _deq_map(rng, n, np.float64, 0.8)
    cases = [(np.float32, 3, 4), (np.float32, 8, 4), (np.float32, 8, 10), (np.float64, 8, 10), (np.float32, 3, 10)]
    xs = {b: rng.standard_normal((b, n)) for b in (3, 8)}

    def outcome(sol):
        return sol.value.tobytes(), np.asarray(sol.result).tolist(), sol.stats["nfev"]

    fresh = []
    for dtype, b, m in cases:
        fresh.append(outcome(_solve(lambda z, x: fn(z, x).astype(z.dtype), xs[b], dtype, m)))
    kept = [outcome(_solve(lambda z, x: fn(z, x).astype(z.dtype), xs[b], dtype, m)) for dtype, b, m in cases]
    assert kept == fresh
    inner = []

    def nesting(z, x):                      # solves the same problem again inside each evaluation
        inner.append(outcome(_solve(lambda w, v: fn(w, v).astype(w.dtype), xs[8], np.float32, 10)))
        return fn(z, x).astype(z.dtype)

    assert outcome(_solve(nesting, xs[8], np.float32, 10)) == fresh[2]
    assert len(inner) > 2 and all(result == fresh[2] for result in inner)
