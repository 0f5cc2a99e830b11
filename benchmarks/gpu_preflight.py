"""GPU preflight, about ten seconds: the CUDA toolchain's versions and one kernel launch on a CuPy array.

Prints one line per item (Python, NumPy, Numba, numba-cuda, CuPy, CUDA runtime and driver, NVVM, nvJitLink,
where Numba found its CUDA libraries, the device), then compiles and launches a small kernel on a CuPy array on
CuPy's current stream, runs one of deqcore's fused kernels on CuPy arrays against its reference, and times the
host side of a launch with Numba's array synchronisation on and off. A toolchain mismatch shows here in seconds.

When Numba cannot find NVVM or libdevice and ``CUDA_HOME`` is not set, the check is retried in a fresh
interpreter with ``CUDA_HOME`` set to each CUDA installation found (``/usr/local/cuda``, ``/usr/local/cuda-*``,
``$CONDA_PREFIX``); the first that works is written to ``--env-out`` as ``export CUDA_HOME=...`` for the steps
that follow.

``--dry-run`` runs the same code on Numba's CUDA simulator with NumPy arrays (no device needed).

    python benchmarks/gpu_preflight.py [--dry-run] [--env-out FILE]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

if "--dry-run" in sys.argv[1:]:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"          # before numba is imported

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from numba import cuda  # noqa: E402  (after the simulator switch)

failures = []
TOOLCHAIN = ("NVVM", "nvJitLink", "Numba's CUDA libraries")


def say(name, value):
    print(f"preflight: {name}: {value}", flush=True)


def check(name, fn):
    """Run one item; a failure is printed and counted, never raised."""
    start = time.perf_counter()
    try:
        value = fn()
    except Exception as err:  # report and go on: every item is worth seeing
        failures.append(name)
        say(name, f"FAILED {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                  f" ({time.perf_counter() - start:.1f} s)")
        return None
    say(name, value)
    return value


def _version(dist):
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _versions():
    import platform

    import numpy as np

    return (f"Python {platform.python_version()}, NumPy {np.__version__}, numba {_version('numba')}, "
            f"numba-cuda {_version('numba-cuda')}, cupy {_version('cupy-cuda13x')}, "
            f"torch {_version('torch')}, jax {_version('jax')}; pytest {_version('pytest')}, "
            f"pytest-timeout {_version('pytest-timeout')}, hypothesis {_version('hypothesis')}, "
            f"scipy {_version('scipy')}")


def _cupy_runtime():
    import cupy

    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(cupy.cuda.Device().id)
    free, total = rt.memGetInfo()
    return (f"{props['name'].decode()}, compute capability {props['major']}.{props['minor']}, "
            f"{total / 2**30:.0f} GiB ({free / 2**30:.0f} free); CUDA runtime {rt.runtimeGetVersion()}, "
            f"driver {rt.driverGetVersion()}")


def _numba_driver():
    from numba.cuda.cudadrv.driver import driver

    return ".".join(map(str, driver.get_version()))


def _nvvm():
    from numba.cuda.cudadrv.nvvm import NVVM

    return ".".join(map(str, NVVM().get_version()))


def _nvjitlink():
    from cuda.bindings import nvjitlink

    return ".".join(map(str, nvjitlink.version()))


def _library_paths():
    from numba.cuda.cudadrv import libs

    paths = libs.get_cuda_paths()
    return "; ".join(f"{k} from {getattr(v, 'by', '?')}: {getattr(v, 'info', v)}" for k, v in paths.items()
                     if k in ("nvvm", "libdevice", "nvrtc"))


def _namespace(dry_run):
    if dry_run:
        import numpy as np

        return np
    import cupy

    return cupy


def _twice_plus_one_kernel(x, out):
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if i < x.shape[0]:
        out[i] = 2.0 * x[i] + 1.0


def _twice_plus_one():
    return cuda.jit(_twice_plus_one_kernel)


def _launch(kernel, xp, n, *args):
    from deqcore.backend.numba_tools import cupy_stream, launch_config

    blocks, threads = launch_config(n, 128)
    if xp.__name__ == "numpy":
        kernel[blocks, threads](*args)
    else:
        kernel[blocks, threads, cupy_stream()](*args)


def _one_kernel(xp):
    from deqcore.backend import synchronize, to_host

    start = time.perf_counter()
    kernel = _twice_plus_one()
    x = xp.arange(1000, dtype=xp.float32)
    out = xp.zeros_like(x)
    _launch(kernel, xp, 1000, x, out)
    synchronize(xp)
    got = to_host(out)
    if not (got == 2 * to_host(x) + 1).all():
        raise RuntimeError(f"wrong result: {got[:4]} ...")
    return f"compiled and ran on {type(x).__module__}.{type(x).__name__} in {time.perf_counter() - start:.2f} s"


def _deqcore_kernel(xp):
    import numpy as np

    from deqcore.backend import synchronize, to_host
    from deqcore.root import broyden_kernels as bk
    from deqcore.root.broyden_kernels_numba import broyden_dots_numba_cuda

    start = time.perf_counter()
    args = bk.dots_example(np.random.default_rng(0), np.float64)
    ref = bk.broyden_dots_reference(*args)
    out = broyden_dots_numba_cuda(*[xp.asarray(a) for a in args])
    synchronize(xp)
    err = max(float(np.abs(to_host(o) - r).max()) for o, r in zip(out, ref))
    if not err <= 1e-12:
        raise RuntimeError(f"broyden_dots differs from its reference by {err:.1e}")
    return f"broyden_dots matches its reference (max error {err:.1e}) in {time.perf_counter() - start:.2f} s"


def _launch_host_time(xp):
    import statistics

    from deqcore.backend import synchronize

    try:
        from numba.cuda.core import config
    except ImportError:
        from numba.core import config
    kernel = _twice_plus_one()
    simulator = xp.__name__ == "numpy"
    x = xp.ones(64 if simulator else 1 << 16, dtype=xp.float32)
    out = xp.empty_like(x)
    default = config.CUDA_ARRAY_INTERFACE_SYNC
    times = {}
    try:
        for sync in (1, 0):
            config.CUDA_ARRAY_INTERFACE_SYNC = sync
            t = []
            for _ in range(7 if simulator else 30):
                start = time.perf_counter()
                _launch(kernel, xp, x.shape[0], x, out)
                t.append(time.perf_counter() - start)
            synchronize(xp)
            times[sync] = statistics.median(t[5:]) * 1e6
    finally:
        config.CUDA_ARRAY_INTERFACE_SYNC = default
    deqcore_launch = "n/a on the simulator"
    if not simulator:                                  # deqcore's launcher: Numba compiles, CuPy launches
        from deqcore.backend.launch import cuda_kernel
        from deqcore.backend.numba_tools import launch_config

        ours, t = cuda_kernel(_twice_plus_one_kernel), []
        config_ = launch_config(x.shape[0], ours.threads)
        for _ in range(30):
            start = time.perf_counter()
            ours[config_](x, out)
            t.append(time.perf_counter() - start)
        synchronize(xp)
        deqcore_launch = f"{statistics.median(t[5:]) * 1e6:.1f} ({type(next(iter(ours._fast.values()))).__name__})"
    return (f"host µs per launch with 2 array arguments: {times[1]:.1f} with Numba's array sync on, "
            f"{times[0]:.1f} off (NUMBA_CUDA_ARRAY_INTERFACE_SYNC={default}); deqcore's launch {deqcore_launch}")


def _toolchain_without_simulator():
    """The toolchain items from an interpreter without the simulator (it replaces numba.cuda in this one)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--toolchain-only"], env=env,
                          capture_output=True, text=True, timeout=120)
    for line in proc.stdout.splitlines():
        name, _, value = line.partition(": ")[2].partition(": ")
        if name in TOOLCHAIN:
            if value.startswith("FAILED"):
                failures.append(name)
            say(name, value)


def toolchain():
    check("NVVM", _nvvm)
    check("nvJitLink", _nvjitlink)
    check("Numba's CUDA libraries", _library_paths)


def _cuda_target():
    """deqcore's own check that numba-cuda compiles with this NumPy (it falls back to array code otherwise)."""
    from deqcore.backend.kernels import numba_cuda_problem

    problem = numba_cuda_problem()
    if problem is not None:
        raise RuntimeError(problem)
    return "compiles with this NumPy"


def probe(dry_run):
    """Every item, in order; returns the number of failures."""
    say("mode", "CUDA simulator (dry run)" if dry_run else "real CUDA")
    check("versions", _versions)
    check("CUDA_HOME", lambda: os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "not set")
    if dry_run:
        _toolchain_without_simulator()
    else:
        check("device", _cupy_runtime)
        check("Numba's driver", _numba_driver)
        toolchain()
        check("Numba's CUDA target", _cuda_target)
    xp = None
    if check("array namespace", lambda: _namespace(dry_run).__name__):
        xp = _namespace(dry_run)
    if xp is not None:
        check("one kernel", lambda: _one_kernel(xp))
        check("deqcore kernel", lambda: _deqcore_kernel(xp))
        check("launch cost", lambda: _launch_host_time(xp))
    return len(failures)


def cuda_home_candidates():
    found = ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    if os.environ.get("CONDA_PREFIX"):
        found.append(os.environ["CONDA_PREFIX"])
    return [p for p in found if os.path.isdir(p)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="on Numba's CUDA simulator, NumPy arrays")
    parser.add_argument("--env-out", default=None, help="file for 'export CUDA_HOME=...' when a fallback worked")
    parser.add_argument("--no-fallback", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--toolchain-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.toolchain_only:
        toolchain()
        return 0
    start = time.perf_counter()
    failed = probe(args.dry_run)
    broken = {"NVVM", "Numba's CUDA libraries", "one kernel"} & set(failures)
    if broken and not args.dry_run and not args.no_fallback and not os.environ.get("CUDA_HOME"):
        for home in cuda_home_candidates():
            say("retry", f"CUDA_HOME={home}")
            env = dict(os.environ, CUDA_HOME=home)
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--no-fallback"]
                                  + (["--dry-run"] if args.dry_run else []), env=env, timeout=120)
            if proc.returncode == 0:
                say("fallback", f"works with CUDA_HOME={home}")
                if args.env_out:
                    with open(args.env_out, "w") as fh:
                        fh.write(f"export CUDA_HOME={home}\n")
                failed = 0
                break
    summary = "OK" if not failed else f"FAILED ({', '.join(failures)})"
    say("summary", f"{summary} in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
