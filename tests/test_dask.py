"""deqcore.dask: chunked batched solves equal the in-process batched solve sample for sample, on dask's local
schedulers and on a LocalCluster of two worker processes that loses one worker mid-solve."""

import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import deqcore as dq  # noqa: E402
import deqcore.dask as dqd  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _deq_map(n=8, radius=0.9, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n))
    W *= radius / np.max(np.abs(np.linalg.eigvals(W)))
    return (lambda z, x: np.tanh(z @ W.T + x)), W


@pytest.fixture(scope="module")
def problem():
    f, W = _deq_map()
    x = np.random.default_rng(1).standard_normal((203, 8)) * np.linspace(0.1, 3.0, 203)[:, None]
    return f, W, x


@pytest.mark.parametrize("chunks", [203, 50, 17])
def test_fixed_point_equals_in_process_batched_solve_sample_for_sample(problem, chunks):
    f, _, x = problem
    ref = dq.fixed_point(f, np.zeros_like(x), args=(x,), atol=1e-10, rtol=0.0, batched=True, throw=False,
                         max_steps=60)
    lazy = dqd.fixed_point(f, da.zeros(x.shape, chunks=chunks), args=(da.from_array(x, chunks=31),),
                           atol=1e-10, rtol=0.0, max_steps=60)
    assert lazy.value.chunks[0] == da.zeros(x.shape, chunks=chunks).chunks[0]   # x rechunked to y0's chunks
    sol = lazy.compute(scheduler="threads")
    # BLAS may round z @ W.T differently for a different number of rows (its blocking), so the iterates can
    # differ in the last bits; codes are equal and values agree to far below the tolerance
    np.testing.assert_array_equal(sol.result, ref.result)
    np.testing.assert_allclose(sol.value, ref.value, rtol=0, atol=1e-12)
    assert sol.batched and sol.success.all() and sol.residual.max() <= 1e-10
    # stats are the chunks' stats summed: each chunk solved in-process gives the same counts
    sizes = lazy.value.chunks[0]
    starts = np.cumsum((0,) + sizes)
    per_chunk = [dq.fixed_point(f, np.zeros_like(x[a:b]), args=(x[a:b],), atol=1e-10, rtol=0.0, max_steps=60,
                                batched=True, throw=False).stats for a, b in zip(starts[:-1], starts[1:])]
    assert sol.stats["nfev"] == sum(s["nfev"] for s in per_chunk)
    assert sol.stats["num_chunks"] == len(sizes)


@pytest.mark.parametrize("chunks", [240, 64, 7])
def test_row_wise_map_gives_bitwise_the_in_process_result(chunks):
    x = np.linspace(-3.0, 3.0, 240 * 3).reshape(240, 3)
    fn = lambda z, x, a: a * np.cos(z) + x  # noqa: E731
    ref = dq.fixed_point(fn, np.zeros_like(x), args=(x, 0.7), atol=1e-12, rtol=0.0, batched=True, throw=False)
    sol = dqd.fixed_point(fn, x * 0, args=(da.from_array(x, chunks=chunks), 0.7), atol=1e-12, rtol=0.0,
                          chunk_size=chunks).compute()
    for got, want in ((sol.value, ref.value), (sol.result, ref.result), (sol.residual, ref.residual)):
        np.testing.assert_array_equal(got, want)


def test_failed_samples_keep_their_code_and_best_iterate(problem):
    f, _, x = problem
    ref = dq.fixed_point(f, np.zeros_like(x), args=(x,), atol=1e-14, rtol=0.0, max_steps=5, batched=True,
                         throw=False)
    sol = dqd.fixed_point(f, np.zeros_like(x), args=(da.from_array(x, chunks=64),), atol=1e-14, rtol=0.0,
                          max_steps=5, chunk_size=64).compute(scheduler="sync")
    assert (sol.result == int(dq.ReturnCode.MAX_STEPS)).all()
    np.testing.assert_array_equal(sol.value, ref.value)


def test_root_find_steady_state_and_integrate_match_in_process(problem):
    f, W, x = problem
    root = lambda z, x: z - np.tanh(z @ W.T + x)  # noqa: E731
    ref = dq.root_find(root, np.zeros_like(x), dq.Broyden(), args=(x,), batched=True, throw=False)
    sol = dqd.root_find(root, da.zeros(x.shape, chunks=64), dq.Broyden(),
                        args=(da.from_array(x, chunks=64),)).compute(scheduler="sync")
    np.testing.assert_array_equal(sol.value, ref.value)

    rhs = lambda t, u, x: np.tanh(u @ W.T + x) - u  # noqa: E731
    ref = dq.steady_state(rhs, np.zeros_like(x), args=(x,), batched=True, throw=False)
    sol = dqd.steady_state(rhs, da.zeros(x.shape, chunks=64),
                           args=(da.from_array(x, chunks=64),)).compute(scheduler="sync")
    np.testing.assert_array_equal(sol.value, ref.value)
    np.testing.assert_array_equal(sol.result, ref.result)
    # the steady state is the fixed point of the map (a reference computed another way)
    assert np.abs(sol.value - f(sol.value, x)).max() < 1e-3

    # integrate: every row its own IVP; y' = -k y has y(1) = y0 exp(-k) per row
    k = np.linspace(0.5, 2.0, 9)
    y0 = np.linspace(1.0, 2.0, 9)[:, None]
    decay = lambda t, y, k: -k * y  # noqa: E731
    sol = dqd.integrate(decay, da.from_array(y0, chunks=4), (0.0, 1.0), args=(da.from_array(k, chunks=2),),
                        atol=1e-10, rtol=1e-10).compute(scheduler="sync")
    np.testing.assert_allclose(sol.value[:, 0], y0[:, 0] * np.exp(-k), rtol=1e-8)
    assert sol.success.all() and sol.residual is None
    single = dq.integrate(decay, y0[3], (0.0, 1.0), args=(k[3],), atol=1e-10, rtol=1e-10)
    np.testing.assert_array_equal(sol.value[3], single.ys[-1])


def test_nothing_runs_before_compute():
    calls = []

    def fn(z):
        calls.append(1)
        return 0.5 * np.cos(z)

    lazy = dqd.fixed_point(fn, np.zeros((10, 1)), chunk_size=5)
    assert not calls and lazy.num_chunks == 2
    lazy.compute(scheduler="sync")
    assert calls


def test_unpicklable_fn_and_bad_arguments_are_refused(problem):
    f, _, x = problem
    lock = threading.Lock()

    def holds_a_lock(z):
        with lock:
            return 0.5 * z

    with pytest.raises(TypeError, match="fn cannot be sent to dask workers"):
        dqd.fixed_point(holds_a_lock, np.zeros((4, 2)))
    with pytest.raises(TypeError, match="args"):
        dqd.fixed_point(f, np.zeros((4, 2)), args=(lock,))
    with pytest.raises(ValueError, match=r"args\[0\].*batch size 4"):
        dqd.fixed_point(f, np.zeros((4, 8)), args=(da.zeros((5, 8), chunks=5),))
    with pytest.raises(TypeError, match="y0 has dtype int64"):
        dqd.fixed_point(f, np.zeros((4, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="chunk_size"):
        dqd.fixed_point(f, np.zeros((4, 8)), chunk_size=0)
    with pytest.raises(ValueError, match="leading batch axis"):
        dqd.fixed_point(f, np.zeros(()))
    with pytest.raises(TypeError, match="scheduler"):
        dqd.fixed_point(f, np.zeros((4, 8)), args=(np.zeros(8),)).compute(scheduler=3)


def _peak_bytes_of_a_reduced_solve(batch, chunk):
    y0 = da.zeros((batch, 1), chunks=(chunk, 1))
    lazy = dqd.fixed_point(lambda z: 0.5 * np.cos(z) + 0.25, y0, dq.FixedPointIteration(), atol=1e-8, rtol=0.0)
    tracemalloc.start()
    try:
        counts, worst, mean = da.compute(da.bincount(lazy.result, minlength=len(dq.ReturnCode)),
                                         lazy.residual.max(), lazy.value.mean(), scheduler="sync")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts[0] == batch and worst <= 1e-8
    ref = dq.fixed_point(lambda z: 0.5 * np.cos(z) + 0.25, np.zeros((1, 1)), dq.FixedPointIteration(),
                         atol=1e-8, rtol=0.0, batched=True)
    assert abs(mean - ref.value[0, 0]) < 1e-12
    return peak


def test_a_batch_larger_than_memory_is_solved_chunk_by_chunk():
    """Reduced without gathering, an 8 MiB batch peaks no higher than a 1 MiB one (512 KiB chunks): memory
    depends on the chunk, not on the batch."""
    _peak_bytes_of_a_reduced_solve(2 ** 16, 2 ** 16)       # first use (imports, kernel compilation) not counted
    small = _peak_bytes_of_a_reduced_solve(2 ** 17, 2 ** 16)
    large = _peak_bytes_of_a_reduced_solve(2 ** 20, 2 ** 16)
    # 8× the batch (7 MiB more data) costs less than 1 MiB more at the peak; the peak's absolute size depends on
    # the interpreter's other allocations, so only the difference is asserted
    assert large < small + 2 ** 20, f"peak {large / 2**20:.1f} MiB vs {small / 2**20:.1f} MiB"


def _slow_map(delay):
    def fn(z, x):
        time.sleep(delay)
        return 0.5 * np.cos(z) + x
    return fn


def test_local_cluster_loses_a_worker_mid_solve_and_loses_no_sample():
    distributed = pytest.importorskip("distributed")
    x = np.linspace(0.0, 2.0, 240)[:, None]
    fn = _slow_map(0.004)
    ref = dq.fixed_point(fn, np.zeros_like(x), args=(x,), atol=1e-12, rtol=0.0, batched=True)
    lazy = dqd.fixed_point(fn, da.zeros(x.shape, chunks=12), args=(da.from_array(x, chunks=12),), atol=1e-12,
                           rtol=0.0)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_class=distributed.Nanny) as cluster, distributed.Client(cluster) as client:
        futures = client.compute([lazy.value, lazy.result, lazy.residual, lazy.stats])
        deadline = time.time() + 60
        while not client.processing() or not any(client.processing().values()):
            assert time.time() < deadline, "the cluster never started the solve"
            time.sleep(0.05)
        pids = client.run(os.getpid)
        os.kill(pids[sorted(pids)[0]], signal.SIGKILL)      # a worker dies with chunks in flight
        value, result, residual, _ = client.gather(futures)
        np.testing.assert_array_equal(value, ref.value)
        np.testing.assert_array_equal(result, ref.result)
        # the same solve through the scheduler's address
        again = dqd.fixed_point(fn, da.zeros(x.shape, chunks=60), args=(da.from_array(x, chunks=60),),
                                atol=1e-12, rtol=0.0).compute(scheduler=cluster.scheduler_address)
        np.testing.assert_array_equal(again.value, ref.value)
        # the command line on the same cluster
        from deqcore.demos import solve_cli

        assert solve_cli.main(["--batch", "300", "--width", "8", "--chunk-size", "100", "--atol", "1e-8",
                               "--scheduler", cluster.scheduler_address]) == 0


def test_cli_batch_on_local_threads_prints_codes_and_throughput(capsys):
    from deqcore.demos import solve_cli

    assert solve_cli.main(["--batch", "500", "--width", "8", "--chunk-size", "128", "--atol", "1e-9"]) == 0
    out = capsys.readouterr().out
    assert "500 samples of width 8 in 4 chunks of 128" in out and "codes: SUCCESS 500" in out
    assert "samples/s" in out
    # one failing budget: the codes say so and the exit status is 1
    assert solve_cli.main(["--batch", "64", "--width", "8", "--max-steps", "2", "--atol", "1e-12"]) == 1
    assert "MAX_STEPS 64" in capsys.readouterr().out
    for bad in (["--workers", "2"], ["--batch", "0"], ["--batch", "10", "--chunk-size", "0"]):
        with pytest.raises(SystemExit):
            solve_cli.main(bad)


def test_engine_imports_without_dask_and_the_extra_says_how_to_install():
    code = ("import sys; sys.modules['dask'] = None\n"
            "import deqcore, numpy as np\n"
            "print(deqcore.fixed_point(lambda z: 0.5 * z, np.ones(2)).success)\n"
            "try:\n    import deqcore.dask\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[:2] == ["True", "deqcore.dask needs dask: pip install deqcore[dask]"], out.stderr
