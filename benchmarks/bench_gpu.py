"""DEQ forward + backward on one device: deqcore's solvers side by side, and each fused kernel's bandwidth.

On a GPU (``--xp cupy``, the default when CuPy sees a device): the DEQ z = tanh(W z + U x + b) at batch 1024,
width 1024, float32, solved by Anderson, Broyden and plain iteration, with the implicit backward (GMRES);
times are medians of repeats, with the time of the f-evaluations alone measured in the same run so the
solver's overhead is reported as a fraction of the forward time. Then every registered kernel with a CUDA
implementation runs on inputs sized for bandwidth (``--traffic-mib`` of memory traffic per launch, so a launch
takes far longer than its host-side cost): its device time per launch is measured with CUDA events around
each launch (fresh inputs copied in before each one, outside the events) and compared with a device-to-device
copy of the same bytes; the host time of one launch call is reported separately, with Numba's synchronisation
on CuPy's stream at each array argument (its default) and without.

Every table is written to the output file as soon as it is measured, and every step (and every row) runs in its
own ``try``: one failure is reported in the table and the rest still run. A one-line summary per step goes to
standard output.

On the CPU (``--xp numpy``) the same script runs at small sizes as a smoke test; ``--tiny`` (with
``NUMBA_ENABLE_CUDASIM=1``) also runs the kernel step on the CUDA simulator at the kernels' small examples, to
check the script end to end without a device.

    python benchmarks/bench_gpu.py [--xp cupy|numpy] [--quick] [--tiny] [--steps deq,kernels] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import os
import pathlib
import statistics
import sys
import time
import traceback

import numpy as np

import deqcore as dq
from deqcore.adjoint.steady_state import FixedPointVJP, SteadyStateAdjoint
from deqcore.backend import cupy_available, synchronize
from deqcore.root import driver

STEPS = ("deq", "kernels")


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


class Report:
    """A Markdown file rewritten (atomically) after every change, so nothing measured is ever lost."""

    def __init__(self, path, header):
        self.path = pathlib.Path(path)
        self.header = list(header)
        self.sections = {}

    def set(self, key, lines):
        self.sections[key] = list(lines)
        self.write()

    def write(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(self.header + [line for lines in self.sections.values() for line in [""] + lines]) + "\n"
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)


def _cells(row):
    return "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"


def _error_text(err):
    return f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300].replace("|", "/")


# -- the DEQ ------------------------------------------------------------------------------------------------------
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


SOLVERS = (("Anderson", dq.Anderson, None), ("Anderson, host check every step", dq.Anderson, 1),
           ("Broyden", dq.Broyden, None), ("LimitedMemoryBroyden", dq.LimitedMemoryBroyden, None),
           ("FixedPointIteration", dq.FixedPointIteration, None))
DEQ_COLUMNS = ("map", "solver", "converged", "of", "NFE", "forward ms", "backward ms", "backward VJPs",
               "NFE × f ms", "solver overhead (share of forward)")


def deq_row(xp, f, vjp, z0, f_time, label, name, solver, check_every, tol, repeats):
    """One solver's row: forward (with the driver's host check every ``check_every`` steps, or its default)
    and the implicit backward."""
    def forward():
        return dq.fixed_point(f, z0, solver, atol=tol, rtol=0.0, max_steps=200, batched=True, throw=False)

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
    return (label, name, converged, z0.shape[0], nfev, fwd_time * 1e3, bwd_time * 1e3, info.nvjp,
            nfev * f_time * 1e3, overhead)


def bench_deq(xp, report, batch, width, inputs, dtype, tol, repeats):
    """The DEQ table, written to ``report`` after every row; returns the number of failed rows."""
    label = "easy ‖W‖₂=0.9"
    f, vjp, z0 = make_problem(xp, batch, width, inputs, 0.9, dtype)
    f_time, _ = _timed(xp, lambda: f(z0), max(repeats, 5))
    head = ["## DEQ forward + backward", "",
            f"z = tanh(W z + U x + b), batch {batch}, width {width}, {np.dtype(dtype).name}, atol {tol:g}; one "
            f"f-evaluation {f_time * 1e3:.3f} ms (median); backward: implicit adjoint, GMRES(rtol 1e-4, ≤ 40 "
            "VJPs).", "", "| " + " | ".join(DEQ_COLUMNS) + " |", "|" + "---|" * len(DEQ_COLUMNS)]
    rows, failed = [], 0
    for name, make_solver, check_every in SOLVERS:
        try:
            row = deq_row(xp, f, vjp, z0, f_time, label, name, make_solver(), check_every, tol, repeats)
        except Exception as err:       # report, do not hide; the other solvers still run
            row, failed = (label, name, _error_text(err)) + ("",) * (len(DEQ_COLUMNS) - 3), failed + 1
            traceback.print_exc()
        rows.append(_cells(row))
        report.set("deq", head + rows)
    return failed


# -- the kernels --------------------------------------------------------------------------------------------------
def kernel_arguments(spec, xp, size="large"):
    """The kernel's example arguments at benchmark size, on the device: ``example(..., size="large")`` where the
    example takes ``size``, else the small example with every array's leading (batch) axis repeated."""
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


def scale_batch(args, factor):
    """``args`` (host arrays) with the batch ``factor`` times larger: the batch is the leading length of the
    first array; every array is repeated along its first axis of that length (arrays without one, such as
    coefficient tables, are left alone)."""
    if factor <= 1:
        return list(args)
    batch = next(a.shape[0] for a in args if isinstance(a, np.ndarray) and a.ndim >= 1)
    out = []
    for a in args:
        if isinstance(a, np.ndarray) and batch in a.shape:
            a = np.repeat(a, factor, axis=a.shape.index(batch))
        out.append(a)
    return out


def bandwidth_arguments(spec, traffic_bytes, size="large"):
    """Host arguments whose traffic (by the kernel's model) reaches ``traffic_bytes``, and that traffic."""
    from deqcore.backend import kernels as registry

    args = kernel_arguments(spec, np, size=size)
    if not spec.traffic:
        raise ValueError("no traffic model")
    traffic = registry.resolve(spec.traffic)
    base = int(traffic(*args))
    args = scale_batch(args, math.ceil(traffic_bytes / base) if traffic_bytes else 1)
    return args, int(traffic(*args))


class _Clock:
    """CUDA events on CuPy's current stream (device time), or the host clock on NumPy."""

    def __init__(self, xp):
        self.xp = xp
        self.cupy = xp is not np

    def mark(self):
        if self.cupy:
            event = self.xp.cuda.Event()
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end):
        if self.cupy:
            end.synchronize()
            return self.xp.cuda.get_elapsed_time(start, end) / 1e3
        return end - start


@contextlib.contextmanager
def _numba_launch():
    """Kernels launched by Numba's dispatcher (``DEQCORE_CUDA_LAUNCH=numba``) inside the block."""
    old = os.environ.get("DEQCORE_CUDA_LAUNCH")
    os.environ["DEQCORE_CUDA_LAUNCH"] = "numba"
    try:
        yield
    finally:
        if old is None:
            del os.environ["DEQCORE_CUDA_LAUNCH"]
        else:
            os.environ["DEQCORE_CUDA_LAUNCH"] = old


def time_kernel(xp, kernel, args, repeats):
    """(median device seconds per launch, median host seconds per launch call with deqcore's launch, the same
    with Numba's). Each launch gets fresh inputs (in-place kernels start from the same state), copied in on the
    device before the launch and outside its events; the copy queued ahead of the launch also hides the launch's
    host cost from the device timing."""
    clock = _Clock(xp)
    work = [a.copy() if hasattr(a, "copy") else a for a in args]

    def refresh():
        for w, a in zip(work, args):
            if hasattr(w, "shape"):
                w[...] = a

    kernel(*work)                                             # compile outside the timing
    device, host_fast, host_numba = [], [], []
    for _ in range(repeats):
        refresh()
        start = clock.mark()
        t0 = time.perf_counter()
        kernel(*work)
        host_fast.append(time.perf_counter() - t0)
        device.append((start, clock.mark()))
    device = [clock.seconds(s, e) for s, e in device]
    with _numba_launch():
        for _ in range(min(repeats, 5)):
            refresh()
            synchronize(xp)
            t0 = time.perf_counter()
            kernel(*work)
            host_numba.append(time.perf_counter() - t0)
            synchronize(xp)
    return statistics.median(device), statistics.median(host_fast), statistics.median(host_numba)


def time_copy(xp, nbytes, repeats):
    """Median device seconds of a device-to-device copy of ``nbytes`` (read ``nbytes/2``, write ``nbytes/2``)."""
    clock = _Clock(xp)
    src = xp.ones(max(1, nbytes // 8), dtype=np.float32)
    dst = xp.empty_like(src)
    dst[...] = src
    marks = []
    for _ in range(repeats):
        start = clock.mark()
        dst[...] = src
        marks.append((start, clock.mark()))
    return statistics.median(clock.seconds(s, e) for s, e in marks), 2 * src.nbytes


KERNEL_COLUMNS = ("kernel", "MiB moved", "device µs/launch", "GB/s", "copy GB/s", "ratio",
                  "host µs/launch", "host µs/launch (Numba's launch)")


def bench_kernels(xp, report, traffic_bytes, repeats, size="large"):
    """The kernel table, written to ``report`` after every kernel; returns the number of failed kernels."""
    from deqcore.backend import kernels as registry

    sizing = (f"Inputs sized for about {traffic_bytes / 2**20:.0f} MiB of memory traffic per launch" if traffic_bytes
              else f"Inputs at the kernels' {size} examples (a dry run, not a measurement)")
    head = ["## Fused kernels against a device-to-device copy", "",
            f"{sizing} (the kernel's traffic model: bytes it must read and write); device time per launch by CUDA events, median of "
            f"{repeats} launches, each on fresh inputs; copy: the same number of bytes read + written. Host time: "
            "the launch call alone, deqcore's launch (CuPy's driver binding on the kernel Numba compiled) and Numba's "
            "dispatcher (DEQCORE_CUDA_LAUNCH=numba).", "",
            "| " + " | ".join(KERNEL_COLUMNS) + " |", "|" + "---|" * len(KERNEL_COLUMNS)]
    rows, failed = [], 0
    for name, spec in sorted(registry.registered_kernels().items()):
        if not (spec.example and spec.numba_cuda):
            continue
        try:
            host_args, nbytes = bandwidth_arguments(spec, traffic_bytes, size)
            args = [xp.asarray(a) if isinstance(a, np.ndarray) else a for a in host_args]
            del host_args
            k_time, host_fast, host_numba = time_kernel(xp, spec.load("numba_cuda"), args, repeats)
            c_time, c_bytes = time_copy(xp, nbytes, repeats)
            rate, c_rate = nbytes / k_time, c_bytes / c_time
            row = (name, f"{nbytes / 2**20:.3g}", f"{k_time * 1e6:.1f}", f"{rate / 1e9:.1f}", f"{c_rate / 1e9:.1f}",
                   f"{rate / c_rate:.2f}", f"{host_fast * 1e6:.1f}", f"{host_numba * 1e6:.1f}")
        except Exception as err:  # a kernel that cannot run at scale is a finding: report it, go on
            row, failed = (name, _error_text(err)) + ("",) * (len(KERNEL_COLUMNS) - 2), failed + 1
            traceback.print_exc()
        finally:
            args = None
            if xp is not np:
                xp.get_default_memory_pool().free_all_blocks()
        rows.append(_cells(row))
        report.set("kernels", head + rows)
    return failed


# -- main ---------------------------------------------------------------------------------------------------------
def _versions(xp):
    import platform

    import numba

    parts = [f"Python {platform.python_version()}", f"NumPy {np.__version__}", f"Numba {numba.__version__}"]
    try:
        import importlib.metadata as md

        parts.append(f"numba-cuda {md.version('numba-cuda')}")
    except Exception:
        pass
    if xp is not np:
        parts.append(f"CuPy {xp.__version__}")
        rt = xp.cuda.runtime
        parts.append(f"CUDA runtime {rt.runtimeGetVersion()}, driver {rt.driverGetVersion()}")
    return ", ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--xp", choices=("cupy", "numpy"), default="cupy" if cupy_available() else "numpy")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and less traffic per launch")
    parser.add_argument("--tiny", action="store_true",
                        help="smallest sizes, kernels at their small examples (a dry run, e.g. on the simulator)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--traffic-mib", type=float, default=None,
                        help="memory traffic per kernel launch (default 512 MiB, 128 with --quick)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for gpu.md (gpu_smoke_cpu.md on NumPy)")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {STEPS}")
    if args.xp == "cupy":
        import cupy as xp

        device = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)["name"].decode()
    else:
        xp, device = np, "CPU (NumPy)"
        if "kernels" in steps and not args.tiny:
            print("bench_gpu: kernels: skipped (NumPy; use --tiny with NUMBA_ENABLE_CUDASIM=1 for a dry run)")
            steps.remove("kernels")
    big = args.xp == "cupy" and not (args.quick or args.tiny)
    batch, width, inputs = (1024, 1024, 512) if big else (16, 32, 16) if args.tiny else (64, 128, 64)
    repeats = 2 if args.tiny else 5 if big else 3
    traffic = 0 if args.tiny else 2**20 * (args.traffic_mib or (128 if args.quick else 512))
    name = "gpu.md" if args.xp == "cupy" else ("gpu_dry_run.md" if args.tiny else "gpu_smoke_cpu.md")
    report = Report(pathlib.Path(args.out) / name,
                    [f"# deqcore on {device}", "", f"{_versions(xp)}; deqcore {dq.__version__}."])
    report.write()
    failures = 0
    for step in steps:
        start = time.perf_counter()
        try:
            if step == "deq":
                failed = bench_deq(xp, report, batch, width, inputs, np.float32, 1e-4, repeats)
            else:
                failed = bench_kernels(xp, report, traffic, 20 if not args.tiny else repeats,
                                       size="small" if args.tiny else "large")
            status = "ok" if not failed else f"{failed} row(s) failed"
        except Exception as err:  # the step as a whole: keep what the others measured
            failed = 1
            status = _error_text(err)
            traceback.print_exc()
            report.set(step, [f"## {step}: failed", "", "    " + status])
        failures += bool(failed)
        print(f"bench_gpu: {step}: {status} ({time.perf_counter() - start:.1f} s) -> {report.path}", flush=True)
    print(report.path.read_text())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
