"""Broyden's fused kernels: the solvers' iterates with the fused kernels against the reference kernels, the kernels
against their reference on random ring states (both memory policies, non-finite samples), and the algebra of one
update (the secant condition, the next step −H f, restarts, the ring's oldest pair leaving)."""

import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st

import deqcore as dq
from deqcore.backend import kernels as registry
from deqcore.backend import to_host
from deqcore.root import RootProblem
from deqcore.root import broyden_kernels as bk
from tests.helpers import contractive_map

SPECS = registry.registered_kernels()


# -- the solvers: fused kernels against the reference kernels ------------------------------------------------------
def _tanh_map(seed, batch, n, radius, xp=np):
    """F(y) = tanh(W y + x) − y with W scaled to spectral radius ``radius``: at 1.5 (seed 0) plain iteration
    needs 170 steps or more and does not converge every sample in 300; Broyden needs about 25."""
    G = contractive_map(np.random.default_rng(seed), batch, n, np.float64, radius, xp, spectral=True)
    return lambda y: G(y) - y


def _trajectory(monkeypatch, impl, solver, F, batch, n, steps, xp=np):
    """(y, F(y), count) after each step (on the host), with ``DEQCORE_KERNELS=impl`` (None: the fused kernels
    the namespace ``xp`` chooses)."""
    if impl is None:
        monkeypatch.delenv("DEQCORE_KERNELS", raising=False)
    else:
        monkeypatch.setenv("DEQCORE_KERNELS", impl)
    problem = RootProblem(F, xp, np.float64, batch, n)
    y0 = xp.zeros((batch, n))
    state = solver.init(problem, y0, problem.F(y0))
    out = []
    for _ in range(steps):
        state, _ = solver.step(problem, state)
        out.append((to_host(state.y).copy(), to_host(state.f).copy(), to_host(state.count).copy()))
    return out, state


def _assert_same_iterates(ref, fused, tol, atol=1e-9):
    """Per sample, every iterate up to the one that reaches ``atol`` (after that Broyden keeps updating on
    roundoff, which it amplifies)."""
    res = np.array([np.abs(f).max(axis=1) for _, f, _ in ref])
    for b in range(res.shape[1]):
        reached = np.flatnonzero(res[:, b] <= atol)
        last = reached[0] if reached.size else len(ref) - 1
        for t in range(last + 1):
            np.testing.assert_allclose(fused[t][0][b], ref[t][0][b], rtol=0, atol=tol, err_msg=f"sample {b} step {t}")
            assert fused[t][2][b] == ref[t][2][b]
    return res


@pytest.mark.parametrize("radius", [0.5, 1.5], ids=["contractive", "hard"])
@pytest.mark.parametrize("solver", [dq.Broyden(), dq.LimitedMemoryBroyden()], ids=["Broyden", "LimitedMemory"])
def test_solvers_give_the_reference_iterates(monkeypatch, solver, radius):
    F = _tanh_map(0, 4, 16, radius)
    ref, _ = _trajectory(monkeypatch, "reference", solver, F, 4, 16, 30)
    fused, _ = _trajectory(monkeypatch, None, solver, F, 4, 16, 30)
    res = _assert_same_iterates(ref, fused, tol=1e-13)
    assert (res[-1] <= 1e-9).all()                     # both maps are solved within the 30 steps


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # the simulator runs the kernels on NumPy scalars
@pytest.mark.parametrize("solver", [dq.Broyden(memory=2), dq.LimitedMemoryBroyden(threshold=2)],
                         ids=["Broyden", "LimitedMemory"])
def test_cuda_kernels_in_the_solvers_give_the_reference_iterates(monkeypatch, solver, xp):
    """The CUDA kernels as the solvers call them (on CuPy arrays on a GPU: the production path), a few steps
    at simulator size, past a full ring."""
    ref, _ = _trajectory(monkeypatch, "reference", solver, _tanh_map(0, 2, 5, 0.9), 2, 5, 4)
    fused, _ = _trajectory(monkeypatch, "numba_cuda" if xp is np else None, solver, _tanh_map(0, 2, 5, 0.9, xp),
                           2, 5, 4, xp)
    _assert_same_iterates(ref, fused, tol=1e-12)


def test_ring_wrap_and_restarts_give_the_reference_iterates(monkeypatch):
    F = _tanh_map(2, 4, 16, 1.2)
    cases = [(dq.Broyden(memory=3), "wrap"), (dq.LimitedMemoryBroyden(threshold=3), "threshold"),
             (dq.LimitedMemoryBroyden(threshold=30, reset_factor=1.0), "growth")]
    for solver, event in cases:
        ref, state = _trajectory(monkeypatch, "reference", solver, F, 4, 16, 40)
        fused, _ = _trajectory(monkeypatch, None, solver, F, 4, 16, 40)
        _assert_same_iterates(ref, fused, tol=1e-11)
        counts = np.array([c for _, _, c in fused])
        dropped = counts[1:] < counts[:-1]
        if event == "wrap":
            assert state.k > 2 * solver.memory and (counts[-1] == solver.memory).all()
        elif event == "threshold":
            assert (dropped & (counts[:-1] == solver.threshold)).any()
        else:
            assert (dropped & (counts[:-1] < solver.threshold)).any()


def test_root_find_same_solution_and_statistics(monkeypatch):
    F = _tanh_map(1, 5, 12, 1.5)
    sols = {}
    for impl in ("reference", None):
        if impl is None:
            monkeypatch.delenv("DEQCORE_KERNELS", raising=False)
        else:
            monkeypatch.setenv("DEQCORE_KERNELS", impl)
        sols[impl] = dq.root_find(F, np.zeros((5, 12)), dq.LimitedMemoryBroyden(), atol=1e-10, rtol=0.0,
                                  batched=True)
    ref, fused = sols["reference"], sols[None]
    assert fused.success.all() and fused.stats == ref.stats
    np.testing.assert_allclose(fused.value, ref.value, rtol=0, atol=1e-12)
    U, V = fused.learned["inverse_jacobian"]
    assert U.shape == V.shape == (5, 30, 12)


# -- the kernels on random ring states ---------------------------------------------------------------------------
def _state(seed, batch, m, n, limited, k, dtype=np.float64, nonfinite=False):
    """A ring as the solvers keep it (slots beyond ``count`` zero) and the vectors of one step."""
    rng = np.random.default_rng(seed)
    if limited:
        count = rng.integers(0, m + 1, size=batch).astype(np.int64)
    else:
        count = np.full(batch, min(k, m), dtype=np.int64)
    U = rng.standard_normal((batch, m, n))
    V = rng.standard_normal((batch, m, n)) / n
    empty = np.arange(m)[None, :] >= count[:, None]
    U[empty] = 0
    V[empty] = 0
    y, f, f_old, s = rng.standard_normal((4, batch, n))
    f *= 10.0 ** rng.integers(-1, 5, size=(batch, 1))          # some residuals grow past reset_factor
    if nonfinite and batch > 1:
        f[1, 0] = np.nan
        f_old[0, -1] = np.inf
    args = [a.astype(dtype) for a in (U, V, y, f, f_old, s)]
    return (*args, count, k, limited, 1e3)


def _copies(args, xp=np):
    """Copies of the arrays in ``args``, on ``xp`` (NumPy, or CuPy: what the solvers pass on a GPU)."""
    return [xp.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in args]


def _compare(out, ref, tol):
    for o, r in zip(out, ref):
        np.testing.assert_allclose(to_host(o), to_host(r), rtol=tol, atol=tol)


@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 5), m=st.integers(1, 6), n=st.integers(1, 40),
       limited=st.booleans(), k=st.integers(0, 15), nonfinite=st.booleans())
def test_step_kernel_matches_reference(seed, batch, m, n, limited, k, nonfinite):
    args = _state(seed, batch, m, n, limited, k, nonfinite=nonfinite)
    ref = bk.broyden_step_reference(*_copies(args))
    _compare(SPECS["broyden_step"].load("numba_cpu")(*_copies(args)), ref, 1e-10)
    # The two kernels one after the other do the same.
    U, V, y, f, f_old, s, count = _copies(args[:7])
    a, c = SPECS["broyden_dots"].load("numba_cpu")(U, V, f, s, count)
    _compare(SPECS["broyden_update"].load("numba_cpu")(U, V, y, f, f_old, s, a, c, count, *args[7:]), ref, 1e-10)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # the simulator runs the kernels on NumPy scalars
@pytest.mark.parametrize("limited", [False, True], ids=["ring", "limited"])
def test_cuda_kernels_match_reference_with_non_finite_samples(limited, xp):
    args = _state(3, 3, 3, 33, limited, 5, nonfinite=True)
    ref = bk.broyden_step_reference(*_copies(args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = SPECS["broyden_step"].load("numba_cuda")(*_copies(args, xp))
        if xp is not np:                                    # the reference on the device agrees too
            _compare(bk.broyden_step_reference(*_copies(args, xp)), ref, 1e-10)
    _compare(out, ref, 1e-10)


def test_dots_kernel_puts_the_batch_on_the_grid_x_axis(monkeypatch):
    """gridDim.y and gridDim.z stop at 65,535 blocks, x at 2³¹ − 1: the batch goes on x so that any batch
    launches (the slots, at most the ring's length, go on y)."""
    from deqcore.root import broyden_kernels_numba as bkn

    grids = []
    real_launch = bkn._DOTS.launch
    monkeypatch.setattr(bkn._DOTS, "launch", lambda grid, block, *args: (grids.append(grid),
                                                                         real_launch(grid, block, *args)))
    U, V, y, f, f_old, s, count, *_ = _state(4, 5, 2, 3, False, 2)
    a, c = bkn.broyden_dots_numba_cuda(U, V, f, s, count)
    assert grids == [(5, 2)]
    _compare((a, c), bk.broyden_dots_reference(U, V, f, s, count), 1e-12)


def _apply_scale(U, V, x):
    """The size of the terms of H x = −x + Σ uᵢ (vᵢ·x) per element: what roundoff in H x is relative to."""
    return np.abs(x) + np.abs(U).T @ np.abs(V @ x)


@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 4), m=st.integers(1, 5), n=st.integers(2, 30),
       limited=st.booleans(), k=st.integers(0, 12), dtype=st.sampled_from([np.float32, np.float64]))
def test_one_update_satisfies_the_secant_condition(seed, batch, m, n, limited, k, dtype):
    """With s = −H f_old (as the solvers keep it): a restarted sample has an empty ring and s_next = f;
    otherwise, where a pair was stored, the updated H maps d = f − f_old onto s (before a full ring drops its
    oldest pair), and always s_next = −H_new f and y_next = y + s_next."""
    U, V, y, f, f_old, _, count, k, limited, reset_factor = _state(seed, batch, m, n, limited, k, dtype)
    U64, V64 = U.astype(np.float64), V.astype(np.float64)
    s = np.stack([f_old[b] - U64[b].T @ (V64[b] @ f_old[b]) for b in range(batch)]).astype(dtype)
    before, slot = count.copy(), k % m
    dropped = (U64[:, slot].copy(), V64[:, slot].copy()) if not limited else (np.zeros((batch, n)),) * 2
    y_next, s_next, U, V, count = bk.broyden_step(U, V, y, f, f_old, s, count, k, limited, reset_factor)
    U64, V64 = U.astype(np.float64), V.astype(np.float64)
    tol = 1e4 * n * np.finfo(dtype).eps                        # relative to the sizes of the terms summed
    for b in range(batch):
        f64, fo64 = f[b].astype(np.float64), f_old[b].astype(np.float64)
        growth = np.sqrt((f64 @ f64) / (fo64 @ fo64))
        if limited and (before[b] >= m or growth > reset_factor):
            assert count[b] == 0 and not U[b].any() and not V[b].any()
            np.testing.assert_array_equal(s_next[b], f[b])
            continue
        stored = count[b] == before[b] + 1 if limited else V[b, k % m].any()
        if stored:
            d = f64 - fo64
            Hd = -d + U64[b].T @ (V64[b] @ d)
            if not limited and before[b] == m:              # the pair that left the ring was part of the update
                Hd += dropped[0][b] * (dropped[1][b] @ d)
            bound = tol * (np.abs(s[b]) + _apply_scale(U64[b], V64[b], d))
            np.testing.assert_array_less(np.abs(Hd - s[b]), bound)
        Hf = -f64 + U64[b].T @ (V64[b] @ f64)
        np.testing.assert_array_less(np.abs(s_next[b] + Hf), tol * (1e-30 + _apply_scale(U64[b], V64[b], f64)))
        np.testing.assert_array_equal(y_next[b], y[b] + s_next[b])


def test_restart_clears_the_ring_and_takes_a_plain_step():
    U, V, y, f, f_old, s, count, k, _, _ = _state(5, 3, 4, 10, True, 0)
    count[:] = (4, 2, 1)                  # at the threshold; room; room, but its residual grows 1e6-fold
    f[:] = f_old
    f[2] *= 1e6
    empty = np.arange(4)[None, :] >= count[:, None]
    U[empty] = 0
    V[empty] = 0
    y_next, s_next, U, V, count = bk.broyden_step(U, V, y, f, f_old, s, count, k, True, 1e3)
    for b in (0, 2):
        assert count[b] == 0 and not U[b].any() and not V[b].any()
        np.testing.assert_array_equal(s_next[b], f[b])
    assert count[1] in (2, 3) and not U[1, 3:].any()


def test_ring_overwrites_the_oldest_pair_and_h_f_forgets_it():
    U, V, y, f, f_old, s, count, k, limited, rf = _state(6, 2, 3, 8, False, 7)
    slot = k % 3
    old_U = U.copy()
    y_next, s_next, U, V, count = bk.broyden_step(U, V, y, f, f_old, s, count, k, False, rf)
    others = [i for i in range(3) if i != slot]
    np.testing.assert_array_equal(U[:, others], old_U[:, others])
    assert not np.allclose(U[:, slot], old_U[:, slot]) and (count == 3).all()
    H = -np.eye(8) + np.swapaxes(U, 1, 2) @ V
    np.testing.assert_allclose(s_next, -(H @ f[:, :, None])[:, :, 0], atol=1e-10)


def test_no_usable_pair_stores_nothing():
    """A zero step or an unchanged residual gives no pair: the ring keeps zeros (and Broyden still advances)."""
    for limited in (False, True):
        U, V, y, f, f_old, s, count, *_ = _state(8, 3, 4, 6, limited, 2)
        count[:] = 2
        U[:, 2:] = V[:, 2:] = 0
        s[0] = 0
        f_old[1] = f[1]
        f[2, 0] = np.inf
        with np.errstate(invalid="ignore"):
            y_next, s_next, U, V, count = bk.broyden_step(U, V, y, f, f_old, s, count, 2, limited, np.inf)
        assert not U[:, 2].any() and not V[:, 2].any()
        np.testing.assert_array_equal(count, 2 if limited else 3)


def test_batch_of_one_and_empty_ring(xp):
    U, V = np.zeros((1, 2, 3)), np.zeros((1, 2, 3))
    f, f_old = np.array([[0.5, 0.0, 1.0]]), np.array([[1.0, 2.0, 0.0]])
    args = (U, V, np.zeros((1, 3)), f, f_old, f_old, np.zeros(1, np.int64), 0, False, 1e3)
    ref = bk.broyden_step_reference(*_copies(args))
    for impl in ("numba_cpu", "numba_cuda") if xp is np else ("numba_cuda",):
        _compare(SPECS["broyden_step"].load(impl)(*_copies(args, xp)), ref, 1e-12)


def test_traffic_model_counts_filled_slots_on_any_namespace(xp):
    """The benchmark's traffic model reads ``count`` on the host whichever device holds it."""
    U, V, y, f, f_old, s, count, *_ = _state(7, 3, 4, 5, True, 0)
    count[:] = (0, 2, 9)                                     # 9 > m: counted as a full ring
    expected = 2 * (0 + 2 + 4) * 5 * 8 + f.nbytes + s.nbytes + 2 * 3 * 4 * 8
    assert bk.dots_traffic(*_copies((U, V, f, s, count), xp)) == expected


def test_reference_makes_no_host_round_trip():
    """The reference kernels never turn a device value into a Python bool, int or float (a host sync on a GPU):
    run them on arrays that refuse to."""

    class DeviceLike(np.ndarray):
        def __bool__(self):
            raise AssertionError("host round trip")

        __float__ = __int__ = __index__ = __bool__

        def item(self, *args):
            raise AssertionError("host round trip")

    for limited in (False, True):
        args = _state(9, 3, 3, 5, limited, 4)
        expected = bk.broyden_step_reference(*_copies(args))
        out = bk.broyden_step_reference(*[a.view(DeviceLike) if isinstance(a, np.ndarray) else a for a in args])
        _compare([np.asarray(o) for o in out], expected, 0)
