"""Launching CUDA kernels, written once.

A fused kernel module declares its CUDA kernel once, ``KERNEL = cuda_kernel(kernel_pyfunc)``, and launches it
with ``KERNEL[grid, KERNEL.threads](*args)``. The launcher compiles the kernel on first use, launches it on
CuPy's current stream when any argument is a CuPy array (so it orders with the CuPy work around it), and hands
CuPy arrays to Numba without the per-array host synchronisation Numba does by default
(``NUMBA_CUDA_ARRAY_INTERFACE_SYNC``): the launch is on the arrays' stream already, so the wait buys nothing.
NumPy arrays go to the kernel as they are: under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) that is how
kernels are tested; on a GPU Numba copies them to the device and back.

``threads`` is the block size (a power of two; kernels size their shared buffers by it) and drops to
``simulated_threads`` under the simulator, which runs every thread in Python. :func:`recording` collects the
argument types of each launch, which the test suite checks against each kernel's registered PTX signatures.

>>> def double(x):
...     i = cuda.grid(1)
...     if i < x.shape[0]:
...         x[i] *= 2.0
>>> kernel = cuda_kernel(double, threads=64)
>>> kernel.target
'deqcore.backend.launch:double'
"""

from __future__ import annotations

import contextlib

from .fast_launch import enabled as fast_launch_enabled, fast_launcher, launch_key
from .namespace import is_cupy_array
from .numba_tools import cuda_simulator_enabled, numba  # first: it sets the cache folder
from numba import cuda  # noqa: E402

__all__ = ["CudaKernel", "cuda_kernel", "recording", "device_arguments"]

_RECORDS: list | None = None
_STREAMS: dict = {}


class CudaKernel:
    """A CUDA kernel compiled on first launch; see the module docstring."""

    def __init__(self, pyfunc, *, threads: int = 128, simulated_threads: int = 32, cache: bool = False):
        if any(t < 1 or t & (t - 1) for t in (threads, simulated_threads)):
            raise ValueError(f"threads must be powers of two, got {threads} and {simulated_threads}")
        self.pyfunc = pyfunc
        self.cache = cache
        self.threads = min(simulated_threads, threads) if cuda_simulator_enabled() else threads
        self._compiled = None
        self._fast: dict = {}   # launch key -> FastLauncher, or None where Numba's launch is kept

    @property
    def target(self) -> str:
        """``"module:function"`` of the kernel, as its PTX targets name it."""
        return f"{self.pyfunc.__module__}:{self.pyfunc.__name__}"

    @property
    def compiled(self):
        if self._compiled is None:
            self._compiled = cuda.jit(self.pyfunc, cache=self.cache)
        return self._compiled

    def __getitem__(self, config):
        grid, block = config
        return lambda *args: self.launch(grid, block, *args)

    def launch(self, grid, block, *args) -> None:
        """Launch on ``grid`` blocks of ``block`` threads (on CuPy's current stream for CuPy arguments).

        On CuPy arrays, once Numba has compiled the kernel for the arguments' types, later launches with those
        types go through :mod:`deqcore.backend.fast_launch` (a few µs of host time against Numba's ~100 µs+)."""
        key = launch_key(args) if _RECORDS is None and fast_launch_enabled() else None
        if key is not None:
            fast = self._fast.get(key, False)
            if fast:
                fast(grid, block, args)
                return
        device_args, on_device = device_arguments(args)
        if _RECORDS is not None:
            _RECORDS.append((self.target, tuple(numba.typeof(a) for a in device_args)))
        if on_device:
            self.compiled[grid, block, _current_stream()](*device_args)
            if key is not None and key not in self._fast:
                self._fast[key] = fast_launcher(self.compiled, device_args)
        else:
            self.compiled[grid, block](*device_args)


def cuda_kernel(pyfunc, *, threads: int = 128, simulated_threads: int = 32,
                cache: bool = False) -> CudaKernel:
    """Declare ``pyfunc`` (a plain Python function written against ``numba.cuda``) as a CUDA kernel.

    ``cache=True`` keeps the compiled kernel on disk where a writable cache folder exists (worth it for
    kernels that take seconds to compile)."""
    from .numba_tools import CACHE

    return CudaKernel(pyfunc, threads=threads, simulated_threads=simulated_threads, cache=cache and CACHE)


def device_arguments(args):
    """(the arguments with CuPy arrays wrapped as Numba device arrays without a stream synchronisation,
    whether any was a CuPy array)."""
    if not any(is_cupy_array(a) for a in args):
        return args, False
    if cuda_simulator_enabled():
        raise TypeError("the CUDA simulator runs kernels on NumPy arrays only; unset NUMBA_ENABLE_CUDASIM to "
                        "launch on CuPy arrays")
    return tuple(cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=a, sync=False)
                 if is_cupy_array(a) else a for a in args), True


def _current_stream():
    """Numba's handle on CuPy's current stream (one handle per stream)."""
    import cupy

    key = (cupy.cuda.runtime.getDevice(), cupy.cuda.get_current_stream().ptr)
    stream = _STREAMS.get(key)
    if stream is None:
        if len(_STREAMS) >= 64:                             # streams come and go: keep the handles bounded
            _STREAMS.clear()
        stream = _STREAMS[key] = cuda.external_stream(key[1])
    return stream


@contextlib.contextmanager
def recording():
    """Collect ``(target, argument types)`` of every launch inside the block (into the list it yields)."""
    global _RECORDS
    outer, _RECORDS = _RECORDS, []
    try:
        yield _RECORDS
    finally:
        _RECORDS = outer
