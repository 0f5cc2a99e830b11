"""Every registered fused kernel against its reference implementation.

Numba CPU versions run natively; Numba CUDA versions run on the CUDA simulator (tiny inputs) and are
compiled to PTX for sm_90 in a separate interpreter (the simulator replaces numba.cuda in this one).
"""

import json
import os
import sys

import numpy as np
import pytest
from numba import cuda

import deqcore  # noqa: F401  (registers kernels)
from deqcore.backend import is_cupy_namespace, kernels as registry
from tests.background import BackgroundRun, EarlyRuns
from tests.helpers import assert_same, on


def _load_all_kernel_modules():
    # Kernels register themselves when their package is imported; import every subpackage.
    import importlib
    import pkgutil

    for mod in pkgutil.walk_packages(deqcore.__path__, "deqcore."):
        name = mod.name
        if any(part in name for part in (".interop", "cli", "__main__")):
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            pass


_load_all_kernel_modules()
SPECS = registry.registered_kernels()
CASES = [(name, impl) for name, spec in sorted(SPECS.items()) if spec.example
         for impl in ("numba_cpu", "numba_cuda") if getattr(spec, impl)]


def _compare(out, ref, dtype):
    assert_same(out, ref, dtype, float32=1e-4, float64=1e-10)


def test_registry_has_kernels():
    # The hot paths of the solvers are fused kernels; an empty registry means they were lost.
    assert len(SPECS) >= 1
    for spec in SPECS.values():
        assert callable(spec.reference)


@pytest.mark.parametrize("name,impl", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_matches_reference(name, impl, dtype, xp, monkeypatch):
    """On NumPy: the CPU kernels natively, the CUDA kernels on the simulator; on CuPy (a GPU): the CUDA
    kernels and the reference on device arrays, both against the reference on the host, and the CUDA kernels
    again through the fast launch (after Numba's first). The CUDA launches' argument types must match
    registered PTX signatures."""
    if impl == "numba_cpu" and is_cupy_namespace(xp):
        pytest.skip("the Numba CPU kernels take NumPy arrays")
    from deqcore.backend.launch import recording

    spec = SPECS[name]
    example = registry.resolve(spec.example)
    args = example(np.random.default_rng(7), dtype)
    ref = spec.reference(*on(np, args))
    with recording() as launches:
        out = spec.load(impl)(*on(xp, args))
    _compare(out, ref, dtype)
    if impl == "numba_cuda":
        _check_launch_signatures(name, launches)
    if is_cupy_namespace(xp):
        _compare(spec.reference(*on(xp, args)), ref, dtype)
    if is_cupy_namespace(xp) and impl == "numba_cuda":
        from deqcore.backend import fast_launch

        fast_calls = []
        real_call = fast_launch.FastLauncher.__call__
        monkeypatch.setattr(fast_launch.FastLauncher, "__call__",
                            lambda self, *a: fast_calls.append(1) or real_call(self, *a))
        for _ in range(2):      # the first launch per argument types goes through Numba, the next ones do not
            _compare(spec.load(impl)(*on(xp, args)), ref, dtype)
        assert fast_calls, f"{name}: no launch took the fast path"


def _check_launch_signatures(name, launches):
    """Every kernel launched has a registered PTX signature with the launch's argument types (array dtype and
    dimensions, scalar types), so the PTX test compiles what really runs."""
    from numba.core import types
    from numba.core.sigutils import normalize_signature

    registered = {}                # over every registered kernel: two of them may share one CUDA kernel
    for spec in SPECS.values():
        for target, signature in spec.cuda_ptx_targets:
            registered.setdefault(target, []).append(normalize_signature(signature)[0])
    assert launches, f"{name}: the CUDA version launched nothing"
    for target, launched in launches:
        assert target in registered, f"{name}: {target} has no registered PTX signature"
        assert any(_accepts(sig, launched, types) for sig in registered[target]), (
            f"{name}: no registered signature of {target} takes {launched}; "
            f"registered: {registered[target]}")


def _accepts(signature, launched, types):
    if len(signature) != len(launched):
        return False
    for want, got in zip(signature, launched):
        if isinstance(want, types.Array):
            if not (isinstance(got, types.Array) and want.dtype == got.dtype and want.ndim == got.ndim
                    and (want.layout == "A" or want.layout == got.layout)):
                return False
        elif want != got:
            return False
    return True


def test_signature_check_tells_dtype_rank_layout_and_scalars_apart():
    from numba.core import types
    from numba.core.sigutils import normalize_signature

    registered = normalize_signature("void(float64[:, :], float32[::1], int64)")[0]
    f64, f32 = types.Array(types.float64, 2, "C"), types.Array(types.float32, 1, "C")
    assert _accepts(registered, (f64, f32, types.int64), types)
    assert not _accepts(registered, (types.Array(types.float32, 2, "C"), f32, types.int64), types)
    assert not _accepts(registered, (types.Array(types.float64, 1, "C"), f32, types.int64), types)
    assert not _accepts(registered, (f64, types.Array(types.float32, 1, "A"), types.int64), types)
    assert not _accepts(registered, (f64, f32, types.float64), types)
    assert not _accepts(registered, (f64, f32), types)


def test_get_kernel_defaults():
    for name, spec in SPECS.items():
        chosen = registry.get_kernel(name, np)
        expected = spec.load("numba_cpu") if spec.numba_cpu else spec.reference
        assert chosen is expected


def test_unknown_kernel_and_impl():
    with pytest.raises(LookupError, match="no kernel named"):
        registry.get_kernel("no-such-kernel", np)
    name = next(iter(SPECS))
    with pytest.raises(ValueError, match="impl must be one of"):
        registry.get_kernel(name, np, impl="fortran")


def _add_one(x):
    i = cuda.grid(1)
    if i < x.shape[0]:
        x[i] += 1.0


def test_launcher_wraps_cupy_arrays_without_a_host_wait(monkeypatch):
    """The call the launcher makes for a CuPy argument (checked on stand-ins: no CuPy arrays without a GPU):
    a view owned by the array, with sync=False; NumPy arguments pass as they are."""
    from types import SimpleNamespace

    from deqcore.backend import launch

    class FakeCupyArray:
        __cuda_array_interface__ = {"shape": (3,), "typestr": "<f8", "data": (1, False), "version": 3}

    calls = []
    def from_cuda_array_interface(desc, owner, sync):
        calls.append((desc, owner, sync))
        return "device view"

    fake_cuda = SimpleNamespace(from_cuda_array_interface=from_cuda_array_interface)
    monkeypatch.setattr(launch, "is_cupy_array", lambda a: isinstance(a, FakeCupyArray))
    monkeypatch.setattr(launch, "cuda_simulator_enabled", lambda: False)
    monkeypatch.setattr(launch, "cuda", fake_cuda)
    host = np.ones(2)
    device = FakeCupyArray()
    assert launch.device_arguments((host, 2.0)) == ((host, 2.0), False)
    args, on_device = launch.device_arguments((host, device, 3))
    assert on_device and args == (host, "device view", 3)
    assert calls == [(FakeCupyArray.__cuda_array_interface__, device, False)]


def test_launcher_on_cupy_arrays_does_not_wait_for_the_gpu(xp, monkeypatch):
    """On a GPU: a launch on CuPy arrays never synchronises a stream, and runs on CuPy's current stream."""
    if not is_cupy_namespace(xp):
        pytest.skip("needs CuPy arrays on a GPU")
    from numba.cuda.cudadrv import driver

    from deqcore.backend.launch import cuda_kernel
    from deqcore.backend.numba_tools import launch_config

    waits = []
    real = driver.Stream.synchronize
    monkeypatch.setattr(driver.Stream, "synchronize", lambda self: waits.append(self) or real(self))
    kernel = cuda_kernel(_add_one)
    with xp.cuda.Stream(non_blocking=True) as stream:
        x = xp.arange(1000, dtype=xp.float64)
        for _ in range(3):                                # Numba's launch, then the fast launch twice
            kernel[launch_config(1000, kernel.threads)](x)
        x *= 2.0                                          # ordered after the kernels on the same stream
    assert waits == []
    assert [type(f).__name__ for f in kernel._fast.values()] == ["FastLauncher"]
    stream.synchronize()
    np.testing.assert_array_equal(x.get(), 2.0 * (np.arange(1000) + 3.0))


_PTX_SCRIPT = r"""
import inspect, json, sys
from deqcore.backend import kernels as registry
from numba import cuda
from numba.core.sigutils import normalize_signature
from deqcore.backend.fast_launch import check_parameters, entry_parameters, flat_kinds
# the launcher's conversion of CuPy arrays (the simulator has none; checked against the real API here)
assert {"owner", "sync"} <= set(inspect.signature(cuda.from_cuda_array_interface).parameters)
done = []
for target, signature in json.loads(sys.argv[1]):      # this process's share of the registered targets
    fn = registry.resolve(target)
    fn = getattr(fn, "py_func", fn)
    ptx, _ = cuda.compile_ptx(fn, signature, cc=(9, 0))
    assert ".target sm_90" in ptx, target
    # the fast launch's flattening of the arguments matches the kernel's PTX parameters
    check_parameters(flat_kinds(normalize_signature(signature)[0]), entry_parameters(ptx)[1])
    done.append([target, signature])
print(json.dumps(done))
"""


def _have_numba_cuda_toolkit():
    try:
        import importlib.util

        return importlib.util.find_spec("numba_cuda") is not None or importlib.util.find_spec("nvidia") is not None
    except Exception:
        return False


def _ptx_targets():
    # each (kernel, signature) once: two registered kernels may share one CUDA kernel
    return sorted({tuple(t) for spec in SPECS.values() for t in spec.cuda_ptx_targets})


def _start_ptx_compile(early):
    """Every registered (kernel, signature) compiled to PTX: in one process when started early, once the tests
    are collected (on the core the serial run leaves idle), else in two side by side (the compiles are
    independent and CPU-bound). Each process imports only the modules of its kernels (targets read here)."""
    targets = _ptx_targets()
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shards = 1 if early else 2
    return [BackgroundRun([sys.executable, "-c", _PTX_SCRIPT, json.dumps(targets[k::shards])], cwd=root,
                          env=env) for k in range(shards)]


EARLY = EarlyRuns({"test_cuda_kernels_compile_to_ptx": _start_ptx_compile}
                  if _have_numba_cuda_toolkit() else {})
start_early, stop_early = EARLY.start_early, EARLY.stop     # called by conftest


@pytest.mark.skipif(not _have_numba_cuda_toolkit(), reason="numba-cuda[cu13] is not installed")
def test_cuda_kernels_compile_to_ptx():
    targets = _ptx_targets()
    if not targets:
        pytest.skip("no CUDA kernels registered")
    compiled = []
    try:
        for run in EARLY.runs("test_cuda_kernels_compile_to_ptx"):
            code, out, err = run.result(timeout=600)
            assert code == 0, err[-4000:]
            compiled += [tuple(t) for t in json.loads(out.strip().splitlines()[-1])]
    finally:
        EARLY.stop()
    assert sorted(compiled) == targets
