"""Numba CPU and CUDA versions of the driver's fused kernels (loaded lazily through the kernel registry)."""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace
from ..backend.numba_tools import CACHE, cuda_simulator_enabled, cupy_stream, launch_config, numba
from numba import cuda  # noqa: E402  (after numba_tools has set the cache folder)

__all__ = ["row_norms_numba_cpu", "row_norms_numba_cuda", "row_norms_cuda_kernel", "absmax_nan"]

THREADS = 128


@numba.njit(inline="always")
def absmax_nan(current, value):
    """max(current, |value|), where a NaN anywhere makes the result +inf (shared by CPU and CUDA)."""
    if value != value or current == np.inf:
        return np.inf
    a = abs(value)
    return a if a > current else current


@numba.njit(cache=CACHE)
def _row_absmax_bits(f_bits, y_bits, magnitude, inf_bits, out_f, out_y):
    """Max-norms on the floats' bit patterns: with the sign bit cleared, non-negative floats order like integers,
    and every NaN pattern lies above +inf's — so an integer max (which vectorises, unlike a NaN-aware float max)
    gives the norm, with NaN clamped to +inf."""
    for i in range(f_bits.shape[0]):
        mf = f_bits[i, 0] & magnitude
        my = y_bits[i, 0] & magnitude
        for j in range(1, f_bits.shape[1]):
            a = f_bits[i, j] & magnitude
            b = y_bits[i, j] & magnitude
            mf = a if a > mf else mf
            my = b if b > my else my
        out_f[i] = inf_bits if mf > inf_bits else mf
        out_y[i] = inf_bits if my > inf_bits else my


# float dtype -> (integer type of its size, mask clearing the sign bit, bit pattern of +inf)
_BITS = {np.dtype(t): (i, i(np.iinfo(i).max), np.array(np.inf, dtype=t).view(i)[()])
         for t, i in ((np.float64, np.int64), (np.float32, np.int32))}


def row_norms_numba_cpu(f, y):
    """One vectorised pass over both arrays (see ``_row_absmax_bits``)."""
    itype, magnitude, inf_bits = _BITS[f.dtype]
    out_f = np.empty(f.shape[0], dtype=itype)
    out_y = np.empty(f.shape[0], dtype=itype)
    _row_absmax_bits(np.ascontiguousarray(f).view(itype), np.ascontiguousarray(y).view(itype), magnitude,
                     inf_bits, out_f, out_y)
    return out_f.view(f.dtype), out_y.view(f.dtype)


def row_norms_cuda_kernel(f, y, out_f, out_y):
    """One block per row; threads stride over the columns, then a shared-memory max-reduction."""
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    shared_f = cuda.shared.array(THREADS, numba.float64)
    shared_y = cuda.shared.array(THREADS, numba.float64)
    mf, my = 0.0, 0.0
    for j in range(tid, f.shape[1], cuda.blockDim.x):
        mf = absmax_nan(mf, f[row, j])
        my = absmax_nan(my, y[row, j])
    shared_f[tid] = mf
    shared_y[tid] = my
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            shared_f[tid] = absmax_nan(shared_f[tid], shared_f[tid + stride])
            shared_y[tid] = absmax_nan(shared_y[tid], shared_y[tid + stride])
        cuda.syncthreads()
        stride //= 2
    if tid == 0:
        out_f[row] = shared_f[0]
        out_y[row] = shared_y[0]


_compiled = {}


def row_norms_numba_cuda(f, y):
    """Launch on CuPy's current stream (or on NumPy arrays under the CUDA simulator)."""
    if "row_norms" not in _compiled:
        _compiled["row_norms"] = cuda.jit(row_norms_cuda_kernel)
    kernel = _compiled["row_norms"]
    xp = get_namespace(f)
    out_f = xp.empty(f.shape[0], dtype=f.dtype)
    out_y = xp.empty(f.shape[0], dtype=f.dtype)
    threads = 32 if cuda_simulator_enabled() else THREADS
    if xp is np:
        kernel[f.shape[0], threads](f, y, out_f, out_y)
    else:
        kernel[f.shape[0], threads, cupy_stream()](f, y, out_f, out_y)
    return out_f, out_y
