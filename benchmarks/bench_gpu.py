"""DEQ forward + backward on one device: deqcore's solvers side by side, and each fused kernel's bandwidth.

On a GPU (``--xp cupy``, the default when CuPy sees a device): the DEQ z = tanh(W z + U x + b) at batch 1024,
width 1024, float32, solved by Anderson, Broyden and plain iteration, with the implicit backward (GMRES);
times are medians of repeats, with the time of the f-evaluations alone measured in the same run so the
solver's overhead is reported as a fraction of the forward time. Then every registered kernel with a CUDA
implementation is timed against a device-to-device copy of the same bytes.

On the CPU (``--xp numpy``) the same script runs at small sizes as a smoke test.

    python benchmarks/bench_gpu.py [--xp cupy|numpy] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

import deqcore as dq
from deqcore.adjoint.steady_state import FixedPointVJP, SteadyStateAdjoint
from deqcore.backend import cupy_available, synchronize
from deqcore.root import driver


def _timed(xp, fn, repeats):
    """Median wall time of ``repeats`` calls after one untimed call (which compiles the kernels)."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        synchronize(xp)
        start = time.perf_counter()
        out = fn()
        synchronize(xp)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def make_problem(xp, batch, width, inputs, radius, dtype, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((width, width))
    W *= radius / np.linalg.norm(W, 2)
    U = rng.standard_normal((width, inputs)) / np.sqrt(inputs)
    b = 0.1 * rng.standard_normal(width)
    x = rng.standard_normal((batch, inputs))
    W, U, b, x = (xp.asarray(a, dtype=dtype) for a in (W, U, b, x))
    injection = x @ U.T + b

    def f(z):
        return xp.tanh(z @ W.T + injection)

    def vjp(z):
        fz = f(z)

        def pullback(v):
            s = v * (1 - fz * fz)
            return s @ W, None

        return fz, pullback

    return f, vjp, xp.zeros((batch, width), dtype=dtype)


def bench_deq(xp, batch, width, inputs, dtype, tol, repeats):
    rows = []
    for label, radius in (("easy ‖W‖₂=0.9", 0.9),):
        f, vjp, z0 = make_problem(xp, batch, width, inputs, radius, dtype)
        f_time, _ = _timed(xp, lambda: f(z0), max(repeats, 5))
        for name, solver, check_every in (
                ("Anderson", dq.Anderson(), None), ("Anderson, host check every step", dq.Anderson(), 1),
                ("Broyden", dq.Broyden(), None), ("LimitedMemoryBroyden", dq.LimitedMemoryBroyden(), None),
                ("FixedPointIteration", dq.FixedPointIteration(), None)):
            def forward():
                return dq.fixed_point(f, z0, solver, atol=tol, rtol=0.0, max_steps=200, batched=True, throw=False)

            # the driver's "all done?" host check: every CHECK_EVERY_DEVICE steps by default, every step to
            # measure what a sync per step costs
            default_every = driver.CHECK_EVERY_DEVICE
            driver.CHECK_EVERY_DEVICE = check_every or default_every
            try:
                fwd_time, sol = _timed(xp, forward, repeats)
            finally:
                driver.CHECK_EVERY_DEVICE = default_every
            g = xp.ones_like(sol.value)
            adjoint = SteadyStateAdjoint(linear_solver=dq.GMRES(rtol=1e-4, atol=0.0, restart=20, max_steps=40))
            bwd_time, (_, info) = _timed(xp, lambda: adjoint.gradient(FixedPointVJP(sol.value, vjp, batched=True), g),
                                         repeats)
            nfev = int(sol.stats.get("nfev", 0))
            converged = int(xp.asarray(sol.success).sum())
            overhead = (fwd_time - nfev * f_time) / fwd_time if fwd_time else float("nan")
            rows.append((label, name, converged, batch, nfev, fwd_time * 1e3, bwd_time * 1e3, info.nvjp,
                         nfev * f_time * 1e3, overhead))
    return rows, f_time


def kernel_arguments(spec, xp, size="large"):
    """The kernel's example arguments at benchmark size, on the device: ``example(..., size="large")`` where the
    example takes ``size``, else the small example with every array's leading (batch) axis repeated."""
    import inspect

    from deqcore.backend import kernels as registry

    example = registry.resolve(spec.example)
    rng = np.random.default_rng(0)
    if "size" in inspect.signature(example).parameters:
        args = example(rng, np.float32, size=size)
    else:
        args = example(rng, np.float32)
        per_row = max(a[0].size for a in args if isinstance(a, np.ndarray) and a.ndim >= 1)
        repeat = max(1, 2 ** 20 // per_row)
        args = [np.repeat(a, repeat, axis=0) if isinstance(a, np.ndarray) and a.ndim >= 1 else a for a in args]
    return [xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]


def _fresh(args):
    return [a.copy() if hasattr(a, "copy") else a for a in args]


def bench_kernels(xp, repeats):
    """Each CUDA kernel's effective bandwidth (its ``traffic``: bytes it must read and write, over its time)
    against a device-to-device copy of the same number of bytes (read + write)."""
    from deqcore.backend import kernels as registry

    rows = []
    for name, spec in sorted(registry.registered_kernels().items()):
        if not (spec.example and spec.numba_cuda):
            continue
        try:
            args = kernel_arguments(spec, xp)
            kernel = spec.load("numba_cuda")
            kernel(*_fresh(args))                                        # compile outside the timing
            times = []
            for _ in range(repeats):
                fresh = _fresh(args)        # in-place kernels (done flags, rings) start from the same state
                synchronize(xp)
                start = time.perf_counter()
                kernel(*fresh)
                synchronize(xp)
                times.append(time.perf_counter() - start)
            k_time = statistics.median(times)
        except Exception as err:  # report, do not hide: a kernel that cannot run at scale is a finding
            rows.append((name, f"error: {type(err).__name__}: {err}", "", "", ""))
            continue
        if spec.traffic:
            nbytes = int(registry.resolve(spec.traffic)(*args))
            basis = "traffic"
        else:
            nbytes = 2 * sum(a.nbytes for a in args if hasattr(a, "nbytes"))
            basis = "inputs read + written (no traffic model)"
        src = xp.empty(max(1, nbytes // 8), dtype=xp.float32)        # nbytes/2 read + nbytes/2 written
        dst = xp.empty_like(src)
        c_time, _ = _timed(xp, lambda: dst.__setitem__(slice(None), src), repeats)
        rows.append((name, f"{nbytes / k_time / 1e9:.1f}", f"{2 * src.nbytes / c_time / 1e9:.1f}",
                     f"{(nbytes / k_time) / (2 * src.nbytes / c_time):.2f}", basis))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--xp", choices=("cupy", "numpy"), default="cupy" if cupy_available() else "numpy")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--out", default="benchmarks/results", help="folder for gpu.md")
    args = parser.parse_args(argv)
    if args.xp == "cupy":
        import cupy as xp

        device = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)["name"].decode()
    else:
        xp, device = np, "CPU (NumPy)"
    big = args.xp == "cupy" and not args.quick
    batch, width, inputs = (1024, 1024, 512) if big else (64, 128, 64)
    repeats = 5 if big else 3
    rows, f_time = bench_deq(xp, batch, width, inputs, np.float32, 1e-4, repeats)
    lines = [f"# DEQ forward + backward on {device}", "",
             f"z = tanh(W z + U x + b), batch {batch}, width {width}, float32, atol 1e-4; one f-evaluation "
             f"{f_time * 1e3:.3f} ms (median); backward: implicit adjoint, GMRES(rtol 1e-4, ≤ 40 VJPs).", "",
             "| map | solver | converged | of | NFE | forward ms | backward ms | backward VJPs | NFE × f ms | "
             "solver overhead (share of forward) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |" for row in rows]
    if args.xp == "cupy":
        lines += ["", "## Fused kernels against a device-to-device copy", "",
                  "| kernel | GB/s | copy GB/s | ratio | bytes counted |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in bench_kernels(xp, repeats)]
    text = "\n".join(lines) + "\n"
    print(text)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("gpu.md" if args.xp == "cupy" else "gpu_smoke_cpu.md")).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
