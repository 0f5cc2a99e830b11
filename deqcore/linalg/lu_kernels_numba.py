"""Numba CPU and CUDA versions of the small-system LU kernels (loaded lazily through the kernel registry).

The scalar algorithms are written once as inlined njit helpers on one system; the CPU loops over the stack and
the CUDA kernel gives each system a thread (the systems are small and independent)."""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace
from ..backend.numba_tools import CACHE, launch_config, numba
from numba import cuda  # noqa: E402  (after numba_tools has set the cache folder)
from ..backend.cuda_blocks import for_kernels  # noqa: E402
from ..backend.launch import cuda_kernel  # noqa: E402

__all__ = ["lu_factor_numba_cpu", "lu_factor_numba_cuda", "lu_factor_cuda_kernel", "lu_solve_numba_cpu",
           "lu_solve_numba_cuda", "lu_solve_cuda_kernel"]


@numba.njit(inline="always")
def factor_one(a, piv):
    """getrf on one (n, n) system in place: first largest pivot, whole-row interchanges, zero pivots skipped."""
    n = a.shape[0]
    for k in range(n):
        p = k
        big = abs(a[k, k])
        for i in range(k + 1, n):
            v = abs(a[i, k])
            if v > big:
                big, p = v, i
        piv[k] = p
        if p != k:
            for j in range(n):
                tmp = a[k, j]
                a[k, j] = a[p, j]
                a[p, j] = tmp
        pivot = a[k, k]
        if pivot != 0.0:
            for i in range(k + 1, n):
                a[i, k] /= pivot
            for i in range(k + 1, n):
                factor = a[i, k]
                if factor != 0.0:
                    for j in range(k + 1, n):
                        a[i, j] -= factor * a[k, j]


@numba.njit(inline="always")
def solve_one(lu, piv, x, trans):
    """getrs on one system for the columns of x (n, k), in place: A x = b, or Aᵀ x = b when ``trans``."""
    n = lu.shape[0]
    for c in range(x.shape[1]):
        if trans == 0:
            for k in range(n):                      # P b
                p = piv[k]
                if p != k:
                    tmp = x[k, c]
                    x[k, c] = x[p, c]
                    x[p, c] = tmp
            for i in range(n):                      # L (unit lower)
                acc = x[i, c]
                for j in range(i):
                    acc -= lu[i, j] * x[j, c]
                x[i, c] = acc
            for i in range(n - 1, -1, -1):          # U
                acc = x[i, c]
                for j in range(i + 1, n):
                    acc -= lu[i, j] * x[j, c]
                x[i, c] = acc / lu[i, i]
        else:
            for i in range(n):                      # Uᵀ (lower)
                acc = x[i, c]
                for j in range(i):
                    acc -= lu[j, i] * x[j, c]
                x[i, c] = acc / lu[i, i]
            for i in range(n - 1, -1, -1):          # Lᵀ (unit upper)
                acc = x[i, c]
                for j in range(i + 1, n):
                    acc -= lu[j, i] * x[j, c]
                x[i, c] = acc
            for k in range(n - 1, -1, -1):          # Pᵀ, interchanges in reverse order
                p = piv[k]
                if p != k:
                    tmp = x[k, c]
                    x[k, c] = x[p, c]
                    x[p, c] = tmp


@numba.njit(cache=CACHE)
def _factor_stack(a, piv):
    for b in range(a.shape[0]):
        factor_one(a[b], piv[b])


@numba.njit(cache=CACHE)
def _solve_stack(lu, piv, x, trans):
    for b in range(lu.shape[0]):
        solve_one(lu[b], piv[b], x[b], trans)


def lu_factor_numba_cpu(A3):
    lu = np.array(A3, order="C", copy=True)
    piv = np.empty(A3.shape[:2], dtype=np.int32)
    with np.errstate(all="ignore"):
        _factor_stack(lu, piv)
    return lu, piv


def lu_solve_numba_cpu(lu, piv, b3, trans):
    x = np.array(b3, dtype=np.result_type(lu.dtype, b3.dtype), order="C", copy=True)
    _solve_stack(np.ascontiguousarray(lu), np.ascontiguousarray(piv, dtype=np.int32), x, int(trans))
    return x


_factor_cuda, _solve_cuda = for_kernels(factor_one, solve_one)


def lu_factor_cuda_kernel(a, piv):
    """One thread per system, factoring it in place in global memory."""
    b = cuda.grid(1)
    if b < a.shape[0]:
        _factor_cuda(a[b], piv[b])


def lu_solve_cuda_kernel(lu, piv, x, trans):
    """One thread per system, solving its right-hand sides in place."""
    b = cuda.grid(1)
    if b < lu.shape[0]:
        _solve_cuda(lu[b], piv[b], x[b], trans)


_FACTOR = cuda_kernel(lu_factor_cuda_kernel, threads=64)
_SOLVE = cuda_kernel(lu_solve_cuda_kernel, threads=64)


def lu_factor_numba_cuda(A3):
    xp = get_namespace(A3)
    lu = xp.array(A3, order="C", copy=True)
    piv = xp.empty(A3.shape[:2], dtype=np.int32)
    _FACTOR[launch_config(A3.shape[0], _FACTOR.threads)](lu, piv)
    return lu, piv


def lu_solve_numba_cuda(lu, piv, b3, trans):
    xp = get_namespace(lu)
    x = xp.array(b3, dtype=np.result_type(lu.dtype, b3.dtype), order="C", copy=True)
    _SOLVE[launch_config(lu.shape[0], _SOLVE.threads)](xp.ascontiguousarray(lu),
                                                       xp.ascontiguousarray(piv).astype(np.int32, copy=False),
                                                       x, int(trans))
    return x
