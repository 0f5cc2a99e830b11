"""Block-wide reductions for the CUDA kernels, written once.

Each thread of the block passes its partial value(s); every thread gets the block's result. ``use_max`` picks
a NaN-propagating maximum instead of a sum. The helpers are inlined njit functions, which compile into the
calling CUDA kernel (``cuda.syncthreads`` included); kernels take them through :func:`for_kernels`, which hands
out simulated device functions under the CUDA simulator. The block size must be a power of two no larger than the
shared buffers.
"""

from __future__ import annotations

from .numba_tools import cuda_simulator_enabled, numba
from numba import cuda  # noqa: E402  (after numba_tools has set the cache folder)

__all__ = ["max_nan", "block_reduce", "block_reduce2", "block_sum_rows", "for_kernels"]


@numba.njit(inline="always")
def max_nan(a, b):
    """max(a, b), NaN if either is NaN (as ``numpy.maximum``); branch-free, so reductions pipeline."""
    return a if (a > b) | (a != a) else b


@numba.njit(inline="always")
def _combine(a, b, use_max):
    return max_nan(a, b) if use_max else a + b


@numba.njit(inline="always")
def block_reduce(shared, value, use_max):
    """The block's sum (or maximum) of ``value``; ``shared`` holds one float64 per thread."""
    tid = cuda.threadIdx.x
    shared[tid] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            shared[tid] = _combine(shared[tid], shared[tid + stride], use_max)
        cuda.syncthreads()
        stride //= 2
    result = shared[0]
    cuda.syncthreads()                                      # the buffer may be reused at once
    return result


@numba.njit(inline="always")
def block_reduce2(shared_a, shared_b, a, b, a_max, b_max):
    """Two reductions in one tree (half the synchronisations of two calls)."""
    tid = cuda.threadIdx.x
    shared_a[tid] = a
    shared_b[tid] = b
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            shared_a[tid] = _combine(shared_a[tid], shared_a[tid + stride], a_max)
            shared_b[tid] = _combine(shared_b[tid], shared_b[tid + stride], b_max)
        cuda.syncthreads()
        stride //= 2
    ra, rb = shared_a[0], shared_b[0]
    cuda.syncthreads()
    return ra, rb


@numba.njit(inline="always")
def block_sum_rows(shared, rows):
    """n reductions in one tree: sums each of the first ``rows`` rows of ``shared`` (rows × block size, one
    column per thread, filled by the caller) into its first column. The threads share the (row, column) pairs
    of each halving step, so few rows still keep the block busy; the result is visible to every thread."""
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    cuda.syncthreads()
    stride = threads // 2
    while stride > 0:
        for k in range(tid, rows * stride, threads):
            r = k // stride
            t = k - r * stride
            shared[r, t] += shared[r, t + stride]
        cuda.syncthreads()
        stride //= 2


def for_kernels(*helpers):
    """The helpers as a CUDA kernel must call them: compiled and inlined, or on the simulator (which runs
    kernels as Python on array stand-ins that compiled helpers cannot take) their Python functions as
    simulated device functions, which see the simulated thread indices and barriers."""
    if cuda_simulator_enabled():
        return tuple(cuda.jit(device=True)(h.py_func) for h in helpers)
    return helpers
