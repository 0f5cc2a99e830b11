"""Numba CPU and CUDA versions of the Anderson kernels (loaded lazily through the kernel registry)."""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace
from ..backend.numba_tools import CACHE, cuda_simulator_enabled, cupy_stream, launch_config, numba
from numba import cuda  # noqa: E402  (after numba_tools has set the cache folder)

__all__ = ["anderson_weights_numba_cpu", "anderson_weights_numba_cuda", "anderson_weights_cuda_kernel",
           "solve_anderson_system"]

_compiled = {}


@numba.njit(inline="always")
def solve_anderson_system(gram, work, newest, ridge, floor, alpha):
    """One sample: (H + λI) w = 1 by elimination with partial pivoting in ``work`` (c, c + 1), α = w/Σw,
    else α = e_newest. Shared by the CPU loop and the CUDA kernel."""
    c = gram.shape[0]
    trace = 0.0
    for i in range(c):
        trace += gram[i, i]
    lam = ridge * trace / c + floor
    for i in range(c):
        for j in range(c):
            work[i, j] = gram[i, j]
        work[i, i] += lam
        work[i, c] = 1.0
    ok = True
    for k in range(c):
        p = k
        for i in range(k + 1, c):
            if abs(work[i, k]) > abs(work[p, k]):
                p = i
        pivot = work[p, k]
        if not (abs(pivot) > 0.0) or pivot != pivot or abs(pivot) == np.inf:
            ok = False
            break
        if p != k:
            for j in range(k, c + 1):
                tmp = work[k, j]
                work[k, j] = work[p, j]
                work[p, j] = tmp
        for i in range(k + 1, c):
            factor = work[i, k] / pivot
            for j in range(k, c + 1):
                work[i, j] -= factor * work[k, j]
    total = 0.0
    if ok:
        for i in range(c - 1, -1, -1):
            acc = work[i, c]
            for j in range(i + 1, c):
                acc -= work[i, j] * alpha[j]
            alpha[i] = acc / work[i, i]
            total += alpha[i]
        ok = total == total and total != 0.0 and abs(total) != np.inf
    if ok:
        for i in range(c):
            alpha[i] /= total
            if alpha[i] != alpha[i] or abs(alpha[i]) == np.inf:
                ok = False
    if not ok:
        for i in range(c):
            alpha[i] = 0.0
        alpha[newest] = 1.0


# The CUDA simulator runs kernels as Python on array stand-ins that compiled helpers cannot take.
_solve_system_cuda = solve_anderson_system.py_func if cuda_simulator_enabled() else solve_anderson_system


@numba.njit(cache=CACHE)
def _anderson_weights_loop(gram, work, newest, ridge, floor, alpha):
    for b in range(gram.shape[0]):
        solve_anderson_system(gram[b], work[b], newest, ridge, floor, alpha[b])


def anderson_weights_numba_cpu(gram, newest, ridge, floor):
    batch, c, _ = gram.shape
    alpha = np.empty((batch, c), dtype=gram.dtype)
    work = np.empty((batch, c, c + 1), dtype=gram.dtype)
    _anderson_weights_loop(np.ascontiguousarray(gram), work, int(newest), float(ridge), float(floor), alpha)
    return alpha


def anderson_weights_cuda_kernel(gram, work, newest, ridge, floor, alpha):
    """One thread per sample (the systems are tiny); ``work`` is per-sample scratch in global memory."""
    b = cuda.grid(1)
    if b < gram.shape[0]:
        _solve_system_cuda(gram[b], work[b], newest, ridge, floor, alpha[b])


def anderson_weights_numba_cuda(gram, newest, ridge, floor):
    if "anderson_weights" not in _compiled:
        _compiled["anderson_weights"] = cuda.jit(anderson_weights_cuda_kernel)
    kernel = _compiled["anderson_weights"]
    xp = get_namespace(gram)
    batch, c, _ = gram.shape
    gram = xp.ascontiguousarray(gram)
    alpha = xp.empty((batch, c), dtype=gram.dtype)
    work = xp.empty((batch, c, c + 1), dtype=gram.dtype)
    blocks, threads = launch_config(batch, 64)
    if xp is np:
        kernel[blocks, threads](gram, work, int(newest), float(ridge), float(floor), alpha)
    else:
        kernel[blocks, threads, cupy_stream()](gram, work, int(newest), float(ridge), float(floor), alpha)
    return alpha
