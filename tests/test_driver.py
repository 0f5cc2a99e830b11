"""The driver loop's fused bookkeeping: the Numba kernels give the reference's iterates, codes and counts; rows
finish independently (converged, diverged, stalled); checking for "all done" every k steps changes nothing but
the number of extra steps."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import deqcore as dq
from deqcore.root import RootProblem, run


def _mixed_batch(rng, batch, n, dtype):
    """Per-sample maps z ↦ tanh(A_b z + x_b) (contractive), z ↦ 1000 z + 1 (diverging) and z ↦ z + 1 (stalls:
    the residual never improves)."""
    A = rng.standard_normal((batch, n, n))
    A *= 0.6 / np.linalg.norm(A, 2, axis=(1, 2))[:, None, None]
    x = rng.standard_normal((batch, n))
    kind = rng.integers(0, 3, size=batch)
    A, x = A.astype(dtype), x.astype(dtype)

    def g(z):
        contractive = np.tanh(np.einsum("bij,bj->bi", A, z) + x)
        out = np.where(kind[:, None] == 0, contractive, np.where(kind[:, None] == 1, 1e3 * z + 1, z + 1))
        return out.astype(dtype)

    return g, kind


def _solve(g, batch, n, dtype, solver, **options):
    problem = RootProblem(lambda y: g(y) - y, np, dtype, batch, n, fixed_point_map=g, relative_to="iterate")
    with np.errstate(all="ignore"):            # the diverging samples overflow, as the entry points allow
        out = run(problem, solver, np.zeros((batch, n), dtype), atol=1e-6, rtol=1e-6, max_steps=60, patience=8,
                  **options)
    return out.value, out.codes, out.residual, out.num_steps, problem.nfev


@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 7), n=st.integers(1, 9),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_fused_bookkeeping_matches_the_reference(seed, batch, n, dtype):
    g, kind = _mixed_batch(np.random.default_rng(seed), batch, n, dtype)
    solver = dq.FixedPointIteration()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEQCORE_KERNELS", "reference")
        reference = _solve(g, batch, n, dtype, solver)
        patch.setenv("DEQCORE_KERNELS", "numba_cpu")
        fused = _solve(g, batch, n, dtype, solver)
    for ref, out in zip(reference, fused):
        np.testing.assert_array_equal(out, ref)
    codes = reference[1]
    assert (codes[kind == 0] == int(dq.ReturnCode.SUCCESS)).all()
    assert (codes[kind == 1] == int(dq.ReturnCode.DIVERGED)).all()
    assert (codes[kind == 2] == int(dq.ReturnCode.STALLED)).all()


@pytest.mark.parametrize("check_every", [2, 5])
def test_checking_every_k_steps_only_adds_steps(rng, check_every):
    g, kind = _mixed_batch(rng, 6, 5, np.float64)
    every_step = _solve(g, 6, 5, np.float64, dq.Anderson(), check_every=1)
    sparse = _solve(g, 6, 5, np.float64, dq.Anderson(), check_every=check_every)
    np.testing.assert_array_equal(sparse[0], every_step[0])            # best iterates
    np.testing.assert_array_equal(sparse[1], every_step[1])            # return codes
    assert every_step[3] <= sparse[3] < every_step[3] + check_every    # steps
    assert sparse[4] - every_step[4] == sparse[3] - every_step[3]      # one f per extra step


def test_max_steps_is_respected_with_sparse_checks():
    g = lambda z: z + 1.0                                              # never converges, never diverges
    problem = RootProblem(lambda y: g(y) - y, np, np.float64, 1, 1, fixed_point_map=g)
    out = run(problem, dq.FixedPointIteration(), np.zeros((1, 1)), atol=1e-6, rtol=0.0, max_steps=7, patience=100,
              check_every=4)
    assert out.num_steps == 7 and out.codes[0] == int(dq.ReturnCode.MAX_STEPS)


def test_device_driver_matches_numpy(xp):
    # On a GPU: the fused CUDA bookkeeping, with sparse "all done" checks, against the NumPy run.
    rng = np.random.default_rng(3)
    g, kind = _mixed_batch(rng, 6, 5, np.float64)
    expected = _solve(g, 6, 5, np.float64, dq.Anderson(), check_every=1)

    def g_device(z):
        return xp.asarray(g(xp.asnumpy(z) if hasattr(xp, "asnumpy") else z))

    problem = RootProblem(lambda y: g_device(y) - y, xp, np.float64, 6, 5, fixed_point_map=g_device,
                          relative_to="iterate")
    with np.errstate(all="ignore"):
        out = run(problem, dq.Anderson(), xp.zeros((6, 5)), atol=1e-6, rtol=1e-6, max_steps=60, patience=8)
    to_host = (lambda a: xp.asnumpy(a)) if hasattr(xp, "asnumpy") else np.asarray
    np.testing.assert_allclose(to_host(out.value), expected[0], atol=1e-12)
    np.testing.assert_array_equal(to_host(out.codes), expected[1])


def test_cuda_bookkeeping_matches_the_reference_on_a_whole_run(rng):
    # Under the CUDA simulator: a mixed batch (converging, diverging, stalling rows) plus a runaway row whose
    # fixed-point residual rounds to zero far out, with a relative tolerance: same iterates, codes and counts.
    g_mixed, kind = _mixed_batch(rng, 4, 3, np.float64)

    def g(z):
        out = g_mixed(z)
        out[3] = z[3] + 2.0 - np.arctan(z[3])                      # no fixed point; its iterates run away
        return out

    def solve():
        problem = RootProblem(lambda y: g(y) - y, np, np.float64, 4, 3, fixed_point_map=g, relative_to="iterate")
        with np.errstate(all="ignore"):
            out = run(problem, dq.FixedPointIteration(), np.zeros((4, 3)), atol=1e-8, rtol=1e-3, max_steps=12,
                      patience=4)
        return out.value, out.codes, out.residual, out.num_steps, problem.nfev

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEQCORE_KERNELS", "reference")
        reference = solve()
        patch.setenv("DEQCORE_KERNELS", "numba_cuda")
        simulated = solve()
    for ref, out in zip(reference, simulated):
        np.testing.assert_array_equal(out, ref)
    assert reference[1][3] != int(dq.ReturnCode.SUCCESS)


@pytest.mark.parametrize("relative_to_iterate", [True, False], ids=["iterate", "residual"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_start_tolerance_kernel_matches_the_reference(relative_to_iterate, dtype):
    # Rows with NaN, ±inf and all zeros (a non-finite scale counts as 0), the others regular, large and tiny.
    from deqcore.backend import get_kernel
    from deqcore.root.driver_kernels import start_tolerance_reference
    rng = np.random.default_rng(5)
    y0 = (rng.standard_normal((9, 17)) * np.logspace(-30, 30, 9)[:, None]).astype(dtype)
    f0 = rng.standard_normal((9, 17)).astype(dtype)
    y0[1, 3], f0[2, 16], y0[3, 0], f0[4, 5] = np.nan, np.inf, -np.inf, np.nan
    y0[5] = f0[5] = 0
    eps = float(np.finfo(dtype).eps)
    with np.errstate(all="ignore"):
        ref = start_tolerance_reference(y0, f0, 1e-6, relative_to_iterate, eps)
        out = get_kernel("start_tolerance", np, impl="numba_cpu")(y0, f0, 1e-6, relative_to_iterate, eps)
    for o, r in zip(out, ref):
        assert o.dtype == r.dtype == dtype
        np.testing.assert_array_equal(o, r)
    assert (out[1][1:6] == 0).all() or not relative_to_iterate


def _without_compiled_loop(monkeypatch):
    """The fused driver as one compiled call per step (the kernel's ``prepare_loop`` hidden)."""
    from deqcore.backend import get_kernel

    monkeypatch.delattr(get_kernel("anderson_driver_step", np), "prepare_loop")     # (raises if it is gone)


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_anderson_loop_matches_the_per_step_calls(monkeypatch, compact, dtype):
    """The compiled loop that calls f back gives the per-step loop's values, codes, residuals, counts and ring
    bit for bit, on rows that converge, diverge (from the start too) and stall (and with compaction, rows dropped
    part-way)."""
    rng = np.random.default_rng(7)
    batch, n = 24, 6
    g, _ = _mixed_batch(rng, batch, n, dtype)

    def solve():
        calls = []
        rows_g = lambda y, rows: g_rows(y, rows)           # noqa: E731
        full = np.zeros((batch, n), dtype)

        def g_rows(y, rows):
            calls.append(len(rows))
            full[rows] = y
            return g(full)[rows]

        problem = RootProblem(lambda y: g(y) - y, np, dtype, batch, n, fixed_point_map=g, relative_to="iterate",
                              row_residual=(lambda y, rows: rows_g(y, rows) - y) if compact else None,
                              row_map=rows_g if compact else None)
        y0 = np.zeros((batch, n), dtype)
        y0[1, 2], y0[2, 0] = np.nan, -np.inf                          # rows that start non-finite (DIVERGED)
        with np.errstate(all="ignore"):
            out = run(problem, dq.Anderson(history_size=4), y0, atol=1e-6, rtol=1e-6, max_steps=60, patience=8)
        G, F, count = dq.Anderson(history_size=4).learned(out.state)["anderson_history"]
        return (out.value, out.codes, out.residual, G, F), (out.num_steps, problem.nfev, problem.row_evaluations,
                                                            count, calls)

    arrays, counts = solve()
    with monkeypatch.context() as patch:
        _without_compiled_loop(patch)
        arrays_ref, counts_ref = solve()
    assert counts == counts_ref
    assert not compact or min(counts[4]) < batch                          # rows were dropped part-way
    assert len(set(np.asarray(arrays[1]).tolist()) - {int(dq.ReturnCode.SUCCESS)}) >= 1     # rows end differently
    assert int(dq.ReturnCode.SUCCESS) in np.asarray(arrays[1]).tolist()
    assert np.isnan(arrays[0][1, 2]) and arrays[0][2, 0] == -np.inf          # their start is their best iterate
    for got, want in zip(arrays, arrays_ref):
        assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("compact", [False, True])
def test_compiled_loop_counts_the_entry_points_evaluations(monkeypatch, compact):
    """Through ``fixed_point`` (whose evaluations the loop neither checks again nor counts one by one) the compiled
    loop reports the per-step loop's nfev, row evaluations, steps, values and codes."""
    rng = np.random.default_rng(11)
    g, _ = _mixed_batch(rng, 16, 5, np.float64)
    calls = []

    def fn(z, rows):                       # rows: the batch rows evaluated (all of them unless compacted)
        calls.append(z.shape[0])
        full = np.zeros((16, 5))
        full[rows] = z
        return g(full)[rows]

    def solve():
        calls.clear()
        with np.errstate(all="ignore"):
            sol = dq.fixed_point(fn, np.zeros((16, 5)), dq.Anderson(history_size=3), args=(np.arange(16),),
                                 atol=1e-8, max_steps=40, batched=True, throw=False, compact=compact)
        return sol, list(calls)

    sol, calls_loop = solve()
    with monkeypatch.context() as patch:
        _without_compiled_loop(patch)
        ref, calls_ref = solve()
    assert sol.stats == ref.stats and calls_loop == calls_ref
    assert sol.stats["nfev"] == len(calls_loop) and sol.stats["row_evaluations"] == sum(calls_loop)
    assert not compact or min(calls_loop) < 16                            # rows were dropped part-way
    np.testing.assert_array_equal(sol.result, ref.result)
    assert np.array_equal(sol.value.view(np.uint8), ref.value.view(np.uint8))


def test_compiled_anderson_loop_hands_fresh_iterates_and_reraises(rng):
    """Every evaluation sees a fresh array that later steps leave alone (as the per-step loop passes them); an
    exception raised by f mid-solve comes out unchanged; a solve nested inside f works."""
    seen = []
    W = 0.3 * rng.standard_normal((5, 5)) / np.sqrt(5)

    def f(z):
        inner = dq.fixed_point(lambda u: 0.5 * u + 1.0, np.zeros(2), dq.Anderson(), atol=1e-12, rtol=0.0)
        seen.append((z, z.copy()))
        return np.tanh(z @ W.T + 1.0) + 0.0 * inner.value.sum()

    sol = dq.fixed_point(f, np.zeros((4, 5)), dq.Anderson(), atol=1e-12, rtol=0.0, batched=True)
    assert sol.success.all() and len(seen) > 5
    assert len({id(z) for z, _ in seen}) == len(seen)
    assert all(np.array_equal(z, copy) for z, copy in seen)

    class Stop(Exception):
        pass

    def failing(z):
        if len(seen) > 8:
            raise Stop("from f")
        seen.append((z, z))
        return np.tanh(z @ W.T + 1.0)

    seen.clear()
    with pytest.raises(Stop, match="from f"):
        dq.fixed_point(failing, np.zeros((4, 5)), dq.Anderson(), atol=0.0, rtol=0.0, batched=True, max_steps=50)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_finiteness_check_matches_numpy(dtype):
    """The entry points' finiteness test of y0 (one compiled pass over the bit patterns) agrees with
    ``np.isfinite(...).all()`` on every kind of value: ±0, subnormals, the largest finite, ±inf and NaNs of either
    sign, in C order, Fortran order and strided views."""
    from deqcore.root.driver_kernels_numba import all_finite_numba_cpu

    info = np.finfo(dtype)
    finite = np.array([0.0, -0.0, info.tiny / 4, -info.tiny / 4, info.max, -info.max, 1.0, -3.5], dtype=dtype)
    specials = np.array([np.inf, -np.inf, np.nan, -np.nan], dtype=dtype)
    rng = np.random.default_rng(3)
    cases = [finite.reshape(2, 4), finite[::2], np.asfortranarray(finite.reshape(2, 4)), finite[:0]]
    for bad in specials:
        for where in (0, 5, 7):
            a = finite.copy()
            a[where] = bad
            cases += [a.reshape(2, 4), np.asfortranarray(a.reshape(2, 4)), a[where % 2::2]]
    cases.append(rng.standard_normal((64, 257)).astype(dtype))
    for a in cases:
        assert all_finite_numba_cpu(a) == bool(np.isfinite(a).all()), a
    y0 = finite.reshape(2, 4).copy()
    y0[1, 3] = -np.inf
    with pytest.raises(ValueError, match="y0 contains NaN or infinity"):
        dq.fixed_point(lambda y: 0.5 * y, y0, batched=True)


def test_compacted_rings_start_unzeroed_yet_learn_no_garbage(monkeypatch):
    """With compaction the fused CPU steps start from unzeroed rings (``Anderson.init_fused``): a row's slots it
    never wrote are zeroed as it finishes, so the learnt ring holds each row's written slots and zeros after
    them, never what the memory held before (here: rings filled with NaN at the start)."""
    init = dq.Anderson.init

    def poisoned(self, problem, y, f, *, zeroed=None):
        state = init(self, problem, y, f, zeroed=zeroed)
        if zeroed is False:
            state.G[...] = np.nan
            state.F[...] = np.nan
        return state

    monkeypatch.setattr(dq.Anderson, "init", poisoned)
    rng = np.random.default_rng(5)
    batch, n, m = 12, 7, 12
    x = rng.standard_normal((batch, n)) * np.linspace(0.0, 0.9, batch)[:, None]   # row 0 starts converged
    x[5] = 1e-14                                                                    # row 5 after one step
    sol = dq.fixed_point(lambda z, x_rows: np.tanh(0.4 * z) + x_rows, np.zeros((batch, n)),
                         dq.Anderson(history_size=m), args=(x,), atol=1e-12, rtol=0.0, max_steps=40,
                         batched=True, compact=True, throw=False)
    G, F, count = sol.learned["anderson_history"]
    assert sol.success.all() and sol.stats["row_evaluations"] < sol.stats["nfev"] * batch     # rows dropped
    assert not np.isnan(G).any() and not np.isnan(F).any()
    written = [(ring != 0).any(axis=2) for ring in (G, F)]        # (batch, m): slots holding data
    for rows in written:
        for row in rows:                                           # data first, zeros after
            assert not (np.diff(row.astype(int)) > 0).any(), row
    filled = written[1].sum(axis=1)
    assert filled[0] == 0 and filled[5] <= 2 and filled.max() > filled[5]   # rows finished at different steps
