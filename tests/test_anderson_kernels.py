"""The fused Anderson step: every implementation against the reference at every state of the ring (filling
and wrapped), unused slots never read nor written, per-sample fallbacks, and Anderson's iterates unchanged
by the choice of implementation."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import deqcore as dq
from deqcore.backend import get_kernel, to_host
from deqcore.root.anderson_kernels import HISTORY_CAP, anderson_step_reference
from tests.helpers import contractive_map, tolerance

IMPLS = ["numba_cpu", "numba_cuda"]


def _ring(rng, batch, m, n, k, dtype):
    """The ring before step k (0-based): slots below min(k, m) filled, the rest NaN; H the filled slots' Gram
    matrix (NaN elsewhere). Returns the step's arguments."""
    filled = min(k, m)
    G = np.full((batch, m, n), np.nan, dtype=dtype)
    F = np.full((batch, m, n), np.nan, dtype=dtype)
    H = np.full((batch, m, m), np.nan, dtype=dtype)
    G[:, :filled] = rng.standard_normal((batch, filled, n))
    F[:, :filled] = rng.standard_normal((batch, filled, n))
    gram = F[:, :filled] @ F[:, :filled].transpose(0, 2, 1)
    H[:, :filled, :filled] = 0.5 * (gram + gram.transpose(0, 2, 1))          # exactly symmetric
    y = rng.standard_normal((batch, n)).astype(dtype)
    f = (0.5 * rng.standard_normal((batch, n))).astype(dtype)
    floor = float(np.sqrt(np.finfo(dtype).tiny))
    return G, F, H, y, f, k % m, min(k + 1, m), 0.7, 1e-8, floor


def _run(impl, args, xp=np):
    """The step by ``impl`` on copies of ``args`` moved to ``xp`` (NumPy, or CuPy: the arrays the solvers pass
    on a GPU); the outputs on the host."""
    fn = anderson_step_reference if impl == "reference" else get_kernel("anderson_step", xp, impl=impl)
    out = fn(*[xp.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in args])
    return tuple(to_host(o) for o in out)


def _assert_same(out, ref, dtype):
    tol = tolerance(dtype, 1e-4, 1e-11)
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r, rtol=tol, atol=tol)      # NaN exactly where the reference has NaN


@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 19), m=st.integers(1, 7),
       extra=st.integers(0, 60), k=st.integers(0, 20), dtype=st.sampled_from([np.float32, np.float64]))
def test_cpu_step_matches_reference_at_every_ring_state(seed, batch, m, extra, k, dtype):
    # n ≥ 2m + 4 keeps the random Gram matrices well conditioned, so float32 roundoff stays within tolerance
    args = _ring(np.random.default_rng(seed), batch, m, 2 * m + 4 + extra, k, dtype)
    ref = _run("reference", args)
    _assert_same(_run("numba_cpu", args), ref, dtype)
    count = args[6]
    y_new, G, F, H = ref
    assert np.isnan(G[:, count:]).all() and np.isnan(F[:, count:]).all()      # unused slots: not written
    assert np.isnan(H[:, count:, :]).all() and np.isnan(H[:, :, count:]).all()
    assert np.isfinite(y_new).all()                                            # ... and not read


@pytest.mark.parametrize("batch,m,n,k", [(2, 4, 40, 1), (2, 4, 40, 6), (1, 3, 5, 2), (3, 1, 33, 4)],
                         ids=["filling", "wrapped", "batch1_narrow", "history1"])
def test_cuda_step_matches_reference(batch, m, n, k, xp):
    for dtype in (np.float32, np.float64):
        args = _ring(np.random.default_rng(k), batch, m, n, k, dtype)
        ref = _run("reference", args)
        _assert_same(_run("numba_cuda", args, xp), ref, dtype)
        if xp is not np:                                   # the reference on the device agrees too
            _assert_same(_run("reference", args, xp), ref, dtype)


@pytest.mark.parametrize("impl,failed", [("reference", (0, 1)), ("reference", (9, 5)), ("numba_cpu", (0, 1)),
                                         ("numba_cpu", (9, 5)), ("numba_cuda", (0, 1))])
def test_failed_samples_take_a_plain_step_and_leave_the_others_alone(impl, failed, xp):
    if impl == "numba_cpu" and xp is not np:
        pytest.skip("the CPU kernel takes NumPy arrays")
    # One sample has a NaN residual, one a zero residual with no ridge (a singular system: NumPy's batched
    # solve raises for the whole batch, so the reference solves sample by sample); the others are regular.
    # 11 samples: a partial block of the CPU version's side-by-side solves.
    nan, zero = failed
    rng = np.random.default_rng(3)
    G, F, H, y, f, slot, count, beta, _, _ = _ring(rng, 11, 3, 6, 5, np.float64)
    f[nan, 2] = np.nan
    F[zero], H[zero], f[zero] = 0.0, 0.0, 0.0
    args = (G, F, H, y, f, slot, count, beta, 0.0, 0.0)
    y_new, G_out, _, H_out = _run(impl, args, xp)
    for b in failed:                                                            # α = e_slot: y + beta·f
        np.testing.assert_array_equal(y_new[b], G_out[b, slot])
    regular = [b for b in range(11) if b not in failed]
    assert np.isnan(y_new[nan, 2]) and np.isfinite(y_new[regular]).all()
    for b in regular:
        alpha = np.linalg.solve(H_out[b], np.ones(count))
        np.testing.assert_allclose(y_new[b], (alpha / alpha.sum()) @ G_out[b], rtol=1e-10)


def _deq_map(rng, batch, n, radius, xp=np):
    return contractive_map(rng, batch, n, np.float64, radius, xp, spectral=True)


def _iterates(fn, y0, solver, impl, monkeypatch, **options):
    seen = []

    def recorded(z):
        seen.append(to_host(z).copy())
        return fn(z)

    monkeypatch.setenv("DEQCORE_KERNELS", impl)
    sol = dq.fixed_point(recorded, y0, solver, rtol=0.0, batched=True, throw=False, **options)
    return sol, seen


@pytest.mark.parametrize("radius,atol,tol", [(0.7, 1e-12, 1e-13), (1.5, 1e-10, 1e-11)],
                         ids=["contractive", "hard"])
def test_anderson_iterates_do_not_depend_on_the_implementation(radius, atol, tol, monkeypatch):
    fn = _deq_map(np.random.default_rng(1), 8, 48, radius)
    y0 = np.zeros((8, 48))
    options = {"atol": atol, "max_steps": 300}
    ref, ref_iterates = _iterates(fn, y0, dq.Anderson(), "reference", monkeypatch, **options)     # unfused loop
    fused, fused_iterates = _iterates(fn, y0, dq.Anderson(), "numba_cpu", monkeypatch, **options)  # fused step
    assert ref.success.all() and fused.success.all()
    assert fused.stats == ref.stats and len(fused_iterates) == len(ref_iterates)
    assert ref.stats["num_steps"] > 10                      # the ring wrapped
    np.testing.assert_allclose(fused.value, ref.value, rtol=0, atol=tol)
    np.testing.assert_array_equal(fused.result, ref.result)
    # The unfused loop keeps stepping a finished row (its result frozen); the fused one stops stepping it, so fn
    # sees that row's last iterate again. Up to then each row's iterates agree.
    finished_at = []
    for row in range(y0.shape[0]):
        t = 1
        while t < len(fused_iterates) and not np.array_equal(fused_iterates[t][row], fused_iterates[t - 1][row]):
            t += 1
        finished_at.append(t)
        for a, b in zip(fused_iterates[:t], ref_iterates[:t]):
            np.testing.assert_allclose(a[row], b[row], rtol=0, atol=tol)
        for a in fused_iterates[t:]:
            np.testing.assert_array_equal(a[row], fused_iterates[t - 1][row])
    assert max(finished_at) == len(fused_iterates)          # the slowest row ran to the end


def test_cuda_iterates_match_the_reference(monkeypatch, xp):
    # Simulator: tiny sizes, a few steps, enough to wrap a ring of 2. On CuPy arrays (a GPU) the solver's own
    # choice of kernel is the CUDA one: the production path.
    options = {"atol": 1e-300, "max_steps": 4}
    fn = _deq_map(np.random.default_rng(2), 2, 6, 0.8)
    _, ref_iterates = _iterates(fn, np.zeros((2, 6)), dq.Anderson(history_size=2), "reference", monkeypatch,
                                **options)
    fn = _deq_map(np.random.default_rng(2), 2, 6, 0.8, xp)
    _, cuda_iterates = _iterates(fn, xp.zeros((2, 6)), dq.Anderson(history_size=2),
                                 "numba_cuda" if xp is np else "auto", monkeypatch, **options)
    assert len(cuda_iterates) == len(ref_iterates) == 5
    for a, b in zip(cuda_iterates, ref_iterates):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)


def test_history_is_capped_with_a_clear_error():
    assert dq.Anderson(history_size=HISTORY_CAP).history_size == HISTORY_CAP
    with pytest.raises(ValueError, match=f"history_size must be <= {HISTORY_CAP}"):
        dq.Anderson(history_size=HISTORY_CAP + 1)
    m = HISTORY_CAP + 1                     # the CUDA version refuses a longer ring before launching
    ring = (np.zeros((1, m, 2)), np.zeros((1, m, 2)), np.zeros((1, m, m)), np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="count"):
        get_kernel("anderson_step", np, impl="numba_cuda")(*ring, 0, m, 1.0, 1e-8, 0.0)


def test_learned_history_has_only_the_used_slots_written(rng):
    fn = _deq_map(rng, 3, 10, 0.3)
    sol = dq.fixed_point(fn, np.zeros((3, 10)), dq.Anderson(history_size=20), atol=1e-6, rtol=0.0,
                         batched=True)
    G, F, count = sol.learned["anderson_history"]
    assert G.shape == F.shape == (3, count, 10) and 1 < count == sol.stats["num_steps"] < 20   # the filled slots
    for b in range(3):                      # a row that finished early holds the steps it ran, then zeros
        ran = int(np.any(F[b] != 0, axis=1).sum())
        assert ran >= 1 and (F[b, ran:] == 0).all() and (G[b, ran:] == 0).all()
        for i in range(ran):                # slot i holds G(y_i) = y_i + f_i and f_i (beta = 1)
            np.testing.assert_allclose(fn(G[:, i] - F[:, i])[b], G[b, i], atol=1e-12)
    assert max(int(np.any(F[b] != 0, axis=1).sum()) for b in range(3)) == count


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_step_matches_reference_across_blocks_of_samples(dtype):
    # The CPU version solves the small systems of up to BLOCK samples side by side: a batch of several blocks
    # (the last one partial) with a failing sample in a later block, each row against the reference.
    from deqcore.root.anderson_kernels_numba import BLOCK
    batch = 2 * BLOCK + 5
    args = list(_ring(np.random.default_rng(7), batch, 10, 64, 13, dtype))
    args[4][BLOCK + 3, 5] = np.nan                        # a NaN residual: α = e_slot, a plain step
    ref = _run("reference", args)
    out = _run("numba_cpu", args)
    regular = np.arange(batch) != BLOCK + 3
    _assert_same([o[regular] for o in out], [r[regular] for r in ref], dtype)
    np.testing.assert_array_equal(out[0][BLOCK + 3], out[1][BLOCK + 3, args[5]])


def test_solves_of_different_sizes_in_turn_match_the_reference(monkeypatch):
    # Each solve binds its own scratch (sized by its history and batch): solves alternating batch (more than one
    # block of side-by-side systems, then fewer), history size and dtype agree with the reference loop.
    cases = [(40, 12, 3, np.float64), (5, 7, 12, np.float32), (70, 9, 10, np.float64), (3, 20, 2, np.float32)]
    for batch, n, m, dtype in cases:
        fn = contractive_map(np.random.default_rng(batch), batch, n, dtype, 0.8, np, spectral=True)
        y0 = np.zeros((batch, n), dtype)
        options = {"atol": 1e-5 if dtype == np.float32 else 1e-11, "rtol": 0.0, "max_steps": 60, "batched": True,
                   "throw": False}
        monkeypatch.setenv("DEQCORE_KERNELS", "reference")
        ref = dq.fixed_point(fn, y0, dq.Anderson(history_size=m), **options)
        monkeypatch.setenv("DEQCORE_KERNELS", "numba_cpu")
        out = dq.fixed_point(fn, y0, dq.Anderson(history_size=m), **options)
        assert out.success.all() and out.stats == ref.stats
        np.testing.assert_allclose(out.value, ref.value, rtol=0, atol=tolerance(dtype, 1e-5, 1e-12))
