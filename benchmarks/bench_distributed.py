"""Scale-out: a batched DEQ-map solve in one process vs on Dask (1 and 2 worker processes, chunk size swept),
Dask's per-chunk scheduling overhead, and a DDP training step with 1 and 2 processes.

The map is z = tanh(W z + U x + b), width 64, input 32, ‖W‖₂-scaled to spectral radius 0.9, Anderson to
atol 1e-6 (float64). Throughput counts solved samples per second of wall time, including Dask's scheduling and
the transfer of results back (value, codes and residuals are gathered). Medians of ``--repeats`` runs.

    python benchmarks/bench_distributed.py [--batch 65536] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # a shared machine: single-threaded BLAS, as dask workers

import pathlib  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dask  # noqa: E402
import dask.array as da  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import deqcore as dq  # noqa: E402
import deqcore.dask as dqd  # noqa: E402
from deqcore.demos.solve_cli import _deq_map_for_chunks  # noqa: E402

WIDTH, INPUTS, ATOL = 64, 32, 1e-6


def _median_time(run, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def in_process(fn, x, params, repeats):
    def run():
        return dq.fixed_point(fn, np.zeros((x.shape[0], WIDTH)), args=(x, *params), atol=ATOL, rtol=0.0,
                              batched=True, throw=False)
    return _median_time(run, repeats)


def on_dask(client, fn, x, params, chunk, repeats):
    xs = da.from_array(x, chunks=(chunk, INPUTS))
    xs = client.persist(xs) if client is not None else xs     # inputs already on the workers, as in a pipeline
    if client is not None:
        client.wait_for_workers(1)
        from distributed import wait
        wait(xs)

    def run():
        lazy = dqd.fixed_point(fn, da.zeros((x.shape[0], WIDTH), chunks=(chunk, WIDTH)), args=(xs, *params),
                               atol=ATOL, rtol=0.0)
        return lazy.compute(scheduler=client if client is not None else "sync")
    return _median_time(run, repeats)


def per_chunk_overhead(client, n_tasks=400):
    """Seconds per task of a map over tiny chunks (the scheduler's and the transfer's fixed cost per chunk)."""
    tiny = da.ones((n_tasks, 1), chunks=(1, 1))
    start = time.perf_counter()
    if client is not None:
        client.compute((tiny + 1).sum(), sync=True)
    else:
        dask.compute((tiny + 1).sum(), scheduler="threads")
    return (time.perf_counter() - start) / n_tasks


def ddp_step_ms(nproc, epochs=2):
    """Median ms per training step of examples/train_ddp.py (last epoch) with ``nproc`` processes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = str(ROOT / "examples" / "train_ddp.py")
    if nproc == 1:
        cmd = [sys.executable, script, "--epochs", str(epochs)]
    else:
        torchrun = pathlib.Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), f"--nproc_per_node={nproc}", script, "--epochs", str(epochs)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    found = re.findall(r"([\d.]+) ms/step", out.stdout)
    if not found:
        raise RuntimeError(out.stderr[-2000:])
    return float(found[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2 ** 16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small batch, one repeat (a smoke test)")
    parser.add_argument("--no-ddp", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 2 ** 12, 1
    fn, W, U, b = _deq_map_for_chunks(WIDTH, INPUTS)
    x = np.random.default_rng(0).standard_normal((args.batch, INPUTS))
    params = (W, U, b)
    rows = []
    for chunk in (2 ** 10, 2 ** 12, 2 ** 14):                # warm-up: kernels compiled or loaded once
        in_process(fn, x[:chunk], params, 1)
    t, ref = in_process(fn, x, params, args.repeats)
    rows.append(("in process (one batched solve)", "-", t, ref.stats["nfev"]))
    print(rows[-1], flush=True)
    chunks = [c for c in (2 ** 10, 2 ** 12, 2 ** 14) if c < args.batch]
    overhead = {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            for chunk in chunks:                       # warm-up: every worker compiles/loads its kernels
                on_dask(client, fn, x[:2 * workers * chunk], params, chunk, 1)
            per_chunk_overhead(client)
            overhead[workers] = per_chunk_overhead(client)
            for chunk in chunks:
                t, sol = on_dask(client, fn, x, params, chunk, args.repeats)
                assert np.array_equal(sol.result, ref.result)
                assert np.abs(sol.value - ref.value).max() < 10 * ATOL
                rows.append((f"Dask, {workers} worker process{'es' if workers > 1 else ''}", chunk, t,
                             sol.stats["nfev"]))
                print(rows[-1], flush=True)
    ddp = {} if args.no_ddp else {n: ddp_step_ms(n) for n in (1, 2)}
    write(args, rows, overhead, ddp)


def write(args, rows, overhead, ddp):
    import deqcore

    base = rows[0][2]
    lines = [f"# Scale-out: Dask and DDP (batch {args.batch}, width {WIDTH}, input {INPUTS})", "",
             f"{platform.machine()}, {platform.python_version()}, NumPy {np.__version__}, dask {dask.__version__}, "
             f"deqcore {deqcore.__version__}; {os.cpu_count()} CPU cores shared with other work (timings are "
             f"noisy and 2 workers compete with the scheduler and this process); OPENBLAS_NUM_THREADS=1; medians "
             f"of {args.repeats} runs; Anderson, atol {ATOL}, float64, spectral radius 0.9.", "",
             "| where | chunk | wall s | samples/s | vs in-process | f-evaluations (summed) |", "|---|---|---|---|---|---|"]
    for where, chunk, t, nfev in rows:
        lines.append(f"| {where} | {chunk} | {t:.2f} | {args.batch / t:,.0f} | {base / t:.2f}x | {nfev} |")
    lines += ["", "Per-chunk scheduling overhead (a map of 400 one-element chunks, seconds per chunk): "
              + ", ".join(f"{w} worker(s): {o * 1e3:.2f} ms" for w, o in overhead.items()) + "."]
    if ddp:
        lines += ["", "DDP training step (examples/train_ddp.py, digits, global batch 128, float32, gloo, "
                  "last of 2 epochs): " + ", ".join(f"{n} process(es): {ms:.1f} ms/step" for n, ms in ddp.items())
                  + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = pathlib.Path(args.out)
    previous = out.read_text() if out.exists() else ""
    marker = "\n## Scaling model"
    keep = previous[previous.index(marker):] if marker in previous else ""
    out.write_text(text + keep)


if __name__ == "__main__":
    main()
