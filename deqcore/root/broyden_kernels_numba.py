"""Numba CPU and CUDA versions of the Broyden kernels (loaded lazily through the kernel registry).

The CPU loops go sample by sample, both passes over a sample's pairs back to back, and let LLVM reassociate
floating-point sums (``fastmath={"reassoc", "contract"}``; nothing that changes NaN or infinity handling) so
that the dot products vectorise; the sums over the pairs accumulate in the arrays' dtype (in many partial sums),
each sample's scalar reductions in float64. The CUDA kernels accumulate everything in float64 (they are bound by
memory, not arithmetic). A parallel CPU loop over the samples (``prange``) was measured slower on the 2-core
machines this runs on whenever anything else is running, and is not used.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_namespace
from ..backend.numba_tools import CACHE, numba
from numba import cuda  # noqa: E402  (after numba_tools has set the cache folder)
from ..backend.cuda_blocks import block_reduce2, block_sum_rows, for_kernels  # noqa: E402
from ..backend.launch import cuda_kernel  # noqa: E402

__all__ = ["broyden_dots_numba_cpu", "broyden_dots_numba_cuda", "broyden_dots_cuda_kernel",
           "broyden_update_numba_cpu", "broyden_update_numba_cuda", "broyden_update_cuda_kernel",
           "broyden_step_numba_cpu", "broyden_step_numba_cuda", "broyden_slot", "broyden_decision"]

THREADS = 128
_FASTMATH = {"reassoc", "contract"}
_TINY = {np.dtype(t): float(np.finfo(t).tiny) for t in (np.float64, np.float32)}


@numba.njit(inline="always")
def broyden_slot(count, k, m, limited):
    """(slot the new pair goes to, whether it overwrites a stored pair) for a sample with ``count`` filled slots."""
    if limited:
        return min(count, m - 1), False
    return k % m, count >= m


@numba.njit(inline="always")
def broyden_decision(denom, ss, dd, bad, ff, fo, count, m, limited, reset_factor, tiny):
    """(usable, reset) for one sample from its reductions: denom = vᵀd, ss = sᵀs, dd = dᵀd, bad = Σ(f − f) (NaN
    unless f is finite), ff = fᵀf and fo = f_oldᵀf_old. Shared by the CPU loop and the CUDA kernel."""
    scale = max(math.sqrt(ss) * math.sqrt(dd), tiny)     # (ss·dd overflows from |s|, |d| ~ 1e77 in float64)
    usable = abs(denom) > 1e-12 * scale and abs(denom) != np.inf and bad == 0.0
    reset = False
    if limited:
        reset = count >= m or math.sqrt(ff / max(fo, tiny)) > reset_factor
    return usable, reset


@numba.njit(inline="always")
def add_pair_terms(denom, vf, ss, dd, ff, fo, bad, fj, oj, sj, tj):
    """One element's terms added to a sample's seven reductions for :func:`broyden_decision` (tj: Hᵀs, fj: f,
    oj: the previous f, sj: s). Shared by the CPU loop and the CUDA kernel."""
    dj = fj - oj
    return (denom + tj * dj, vf + tj * fj, ss + sj * sj, dd + dj * dj, ff + fj * fj, fo + oj * oj,
            bad + (fj - fj))


_slot_cuda, _decision_cuda, _add_pair_terms, _block_reduce2, _block_sum_rows = for_kernels(
    broyden_slot, broyden_decision, add_pair_terms, block_reduce2, block_sum_rows)


# -- CPU ----------------------------------------------------------------------------------------------------------
# Per-sample loops: the dot products and the sums over the stored pairs take four slots at a time, so each load
# of f (or of H f) serves four pairs. They accumulate in the arrays' dtype (vectorised, in many partial sums);
# the sample's scalar reductions in float64.
@numba.njit(fastmath=_FASTMATH, inline="always")
def _dots_sample(U, V, f, s, b, filled, a, c, r):
    """a[r, i] = V[b, i]·f[b] and c[r, i] = U[b, i]·s[b] for i < filled, zero beyond. (Sample and row indices
    rather than views: a view per sample costs reference counting.)"""
    n = f.shape[1]
    zero = U.dtype.type(0)
    i = 0
    while i + 4 <= filled:
        a0, a1, a2, a3 = zero, zero, zero, zero
        for j in range(n):
            fj = f[b, j]
            a0 += V[b, i, j] * fj
            a1 += V[b, i + 1, j] * fj
            a2 += V[b, i + 2, j] * fj
            a3 += V[b, i + 3, j] * fj
        c0, c1, c2, c3 = zero, zero, zero, zero
        for j in range(n):
            sj = s[b, j]
            c0 += U[b, i, j] * sj
            c1 += U[b, i + 1, j] * sj
            c2 += U[b, i + 2, j] * sj
            c3 += U[b, i + 3, j] * sj
        a[r, i], a[r, i + 1], a[r, i + 2], a[r, i + 3] = a0, a1, a2, a3
        c[r, i], c[r, i + 1], c[r, i + 2], c[r, i + 3] = c0, c1, c2, c3
        i += 4
    while i < filled:
        a0, c0 = zero, zero
        for j in range(n):
            a0 += V[b, i, j] * f[b, j]
            c0 += U[b, i, j] * s[b, j]
        a[r, i], c[r, i] = a0, c0
        i += 1
    for i in range(filled, a.shape[1]):
        a[r, i] = 0.0
        c[r, i] = 0.0


@numba.njit(fastmath=_FASTMATH, inline="always")
def _update_sample(U, V, y, f, f_old, s, a, c, b, r, filled, k, limited, reset_factor, tiny, hf, ht, y_next, s_next):
    """Sample b of ``broyden_update`` (its dot products in row r of a and c); ``hf``, ``ht``: (n,) scratch.
    Returns the sample's new count."""
    m, n = U.shape[1], U.shape[2]
    slot, wrap = broyden_slot(filled, k, m, limited)
    for j in range(n):
        hf[j] = -f[b, j]
        ht[j] = -s[b, j]
    i = 0
    while i + 4 <= filled:                              # H f = −f + Σ aᵢ uᵢ and Hᵀ s = −s + Σ cᵢ vᵢ
        a0, a1, a2, a3 = a[r, i], a[r, i + 1], a[r, i + 2], a[r, i + 3]
        for j in range(n):
            hf[j] += a0 * U[b, i, j] + a1 * U[b, i + 1, j] + a2 * U[b, i + 2, j] + a3 * U[b, i + 3, j]
        c0, c1, c2, c3 = c[r, i], c[r, i + 1], c[r, i + 2], c[r, i + 3]
        for j in range(n):
            ht[j] += c0 * V[b, i, j] + c1 * V[b, i + 1, j] + c2 * V[b, i + 2, j] + c3 * V[b, i + 3, j]
        i += 4
    while i < filled:
        a0, c0 = a[r, i], c[r, i]
        for j in range(n):
            hf[j] += a0 * U[b, i, j]
            ht[j] += c0 * V[b, i, j]
        i += 1
    denom, vf, ss, dd, ff, fo, bad = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    for j in range(n):
        denom, vf, ss, dd, ff, fo, bad = add_pair_terms(denom, vf, ss, dd, ff, fo, bad, float(f[b, j]),
                                                        float(f_old[b, j]), float(s[b, j]), float(ht[j]))
    usable, reset = broyden_decision(denom, ss, dd, bad, ff, fo, filled, m, limited, reset_factor, tiny)
    if reset:                                           # H = −I: the step is a plain fixed-point step
        for j in range(n):
            s_next[b, j] = f[b, j]
            y_next[b, j] = y[b, j] + s_next[b, j]
        for i in range(filled):
            for j in range(n):
                U[b, i, j] = 0.0
                V[b, i, j] = 0.0
        return 0
    a_slot = float(a[r, slot]) if wrap else 0.0
    if usable:
        for j in range(n):
            u = -hf[j] / denom
            s_next[b, j] = -((hf[j] - a_slot * U[b, slot, j]) + u * vf)
            y_next[b, j] = y[b, j] + s_next[b, j]
            U[b, slot, j] = u
            V[b, slot, j] = ht[j]
    else:
        for j in range(n):
            s_next[b, j] = -(hf[j] - a_slot * U[b, slot, j])
            y_next[b, j] = y[b, j] + s_next[b, j]
            U[b, slot, j] = 0.0
            V[b, slot, j] = 0.0
    if limited:
        return filled + 1 if usable else filled
    return min(filled + 1, m)


@numba.njit(cache=CACHE, fastmath=_FASTMATH)
def _dots_loop(U, V, f, s, count, a, c):
    m = U.shape[1]
    for b in range(U.shape[0]):
        _dots_sample(U, V, f, s, b, min(count[b], m), a, c, b)


def broyden_dots_numba_cpu(U, V, f, s, count):
    a = np.empty(U.shape[:2], dtype=U.dtype)
    c = np.empty(U.shape[:2], dtype=U.dtype)
    _dots_loop(U, V, f, s, count, a, c)
    return a, c


@numba.njit(cache=CACHE, fastmath=_FASTMATH)
def _update_loop(U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor, tiny, y_next, s_next):
    m, n = U.shape[1], U.shape[2]
    hf = np.empty(n, dtype=U.dtype)
    ht = np.empty(n, dtype=U.dtype)
    for b in range(U.shape[0]):
        count[b] = _update_sample(U, V, y, f, f_old, s, a, c, b, b, min(count[b], m), k, limited, reset_factor, tiny,
                                  hf, ht, y_next, s_next)


def broyden_update_numba_cpu(U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor):
    y_next = np.empty_like(y)
    s_next = np.empty_like(y)
    _update_loop(U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor, _TINY[U.dtype], y_next, s_next)
    return y_next, s_next, U, V, count


@numba.njit(cache=CACHE, fastmath=_FASTMATH)
def _step_loop(U, V, y, f, f_old, s, count, k, limited, reset_factor, tiny, y_next, s_next):
    m, n = U.shape[1], U.shape[2]
    a = np.empty((1, m), dtype=U.dtype)
    c = np.empty((1, m), dtype=U.dtype)
    hf = np.empty(n, dtype=U.dtype)
    ht = np.empty(n, dtype=U.dtype)
    for b in range(U.shape[0]):
        filled = min(count[b], m)
        _dots_sample(U, V, f, s, b, filled, a, c, 0)
        count[b] = _update_sample(U, V, y, f, f_old, s, a, c, b, 0, filled, k, limited, reset_factor, tiny, hf, ht,
                                  y_next, s_next)


def broyden_step_numba_cpu(U, V, y, f, f_old, s, count, k, limited, reset_factor):
    """The fused CPU loop. The residuals come from user code: made contiguous (a no-op when they are), so that
    an unusual layout costs a copy rather than a new compilation."""
    f, f_old, s = np.ascontiguousarray(f), np.ascontiguousarray(f_old), np.ascontiguousarray(s)
    y_next = np.empty(y.shape, dtype=U.dtype)
    s_next = np.empty(y.shape, dtype=U.dtype)
    _step_loop(U, V, y, f, f_old, s, count, k, limited, reset_factor, _TINY[U.dtype], y_next, s_next)
    return y_next, s_next, U, V, count



# -- CUDA ---------------------------------------------------------------------------------------------------------
def broyden_dots_cuda_kernel(U, V, f, s, count, a, c):
    """One block per (sample, slot): both dot products of the slot, reduced in shared memory. The batch is on the
    grid's x axis (up to 2³¹ − 1 blocks), the slots on y (at most 65,535)."""
    b = cuda.blockIdx.x
    i = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    if i >= count[b]:                                   # the same for the whole block
        if tid == 0:
            a[b, i] = 0.0
            c[b, i] = 0.0
        return
    shared_a = cuda.shared.array(THREADS, numba.float64)
    shared_c = cuda.shared.array(THREADS, numba.float64)
    acc_a = 0.0
    acc_c = 0.0
    for j in range(tid, U.shape[2], cuda.blockDim.x):
        acc_a += float(V[b, i, j]) * float(f[b, j])
        acc_c += float(U[b, i, j]) * float(s[b, j])
    sum_a, sum_c = _block_reduce2(shared_a, shared_c, acc_a, acc_c, False, False)
    if tid == 0:
        a[b, i] = sum_a
        c[b, i] = sum_c


def broyden_update_cuda_kernel(U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor, tiny, work, y_next,
                               s_next):
    """One block per sample: H f and Hᵀ s (into the float64 scratch ``work``) with the seven reductions, a
    shared-memory reduction, thread 0 decides, then the block writes the step and the ring slot (or clears)."""
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    step = cuda.blockDim.x
    m = U.shape[1]
    n = U.shape[2]
    sums = cuda.shared.array((7, THREADS), numba.float64)
    decision = cuda.shared.array(2, numba.int32)
    filled = min(count[b], m)
    slot, wrap = _slot_cuda(filled, k, m, limited)
    denom, vf, ss, dd, ff, fo, bad = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    for j in range(tid, n, step):
        hf = -float(f[b, j])
        ht = -float(s[b, j])
        for i in range(filled):
            hf += float(a[b, i]) * float(U[b, i, j])
            ht += float(c[b, i]) * float(V[b, i, j])
        work[b, 0, j] = hf
        work[b, 1, j] = ht
        denom, vf, ss, dd, ff, fo, bad = _add_pair_terms(denom, vf, ss, dd, ff, fo, bad, float(f[b, j]),
                                                         float(f_old[b, j]), float(s[b, j]), ht)
    sums[0, tid] = denom
    sums[1, tid] = vf
    sums[2, tid] = ss
    sums[3, tid] = dd
    sums[4, tid] = ff
    sums[5, tid] = fo
    sums[6, tid] = bad
    _block_sum_rows(sums, 7)
    if tid == 0:
        usable, reset = _decision_cuda(sums[0, 0], sums[2, 0], sums[3, 0], sums[6, 0], sums[4, 0], sums[5, 0], filled,
                                       m, limited, reset_factor, tiny)
        decision[0] = 1 if usable else 0
        decision[1] = 1 if reset else 0
    cuda.syncthreads()
    usable = decision[0] == 1
    denom = sums[0, 0]
    vf = sums[1, 0]
    if decision[1] == 1:
        for j in range(tid, n, step):
            s_next[b, j] = f[b, j]
            y_next[b, j] = y[b, j] + s_next[b, j]
        for i in range(filled):
            for j in range(tid, n, step):
                U[b, i, j] = 0.0
                V[b, i, j] = 0.0
        if tid == 0:
            count[b] = 0
        return
    a_slot = float(a[b, slot]) if wrap else 0.0
    for j in range(tid, n, step):
        hf = work[b, 0, j]
        if usable:
            u = -hf / denom
            s_next[b, j] = -((hf - a_slot * float(U[b, slot, j])) + u * vf)
            U[b, slot, j] = u
            V[b, slot, j] = work[b, 1, j]
        else:
            s_next[b, j] = -(hf - a_slot * float(U[b, slot, j]))
            U[b, slot, j] = 0.0
            V[b, slot, j] = 0.0
        y_next[b, j] = y[b, j] + s_next[b, j]
    if tid == 0:
        if limited:
            count[b] = filled + 1 if usable else filled
        else:
            count[b] = min(filled + 1, m)


_DOTS = cuda_kernel(broyden_dots_cuda_kernel, threads=THREADS)
_UPDATE = cuda_kernel(broyden_update_cuda_kernel, threads=THREADS)


def broyden_dots_numba_cuda(U, V, f, s, count):
    xp = get_namespace(U)
    batch, m, _ = U.shape
    a = xp.empty((batch, m), dtype=U.dtype)
    c = xp.empty((batch, m), dtype=U.dtype)
    _DOTS[(batch, m), _DOTS.threads](U, V, f, s, count, a, c)
    return a, c


def broyden_update_numba_cuda(U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor):
    xp = get_namespace(U)
    batch, _, n = U.shape
    work = xp.empty((batch, 2, n), dtype=np.float64)
    y_next = xp.empty_like(y)
    s_next = xp.empty_like(y)
    _UPDATE[batch, _UPDATE.threads](U, V, y, f, f_old, s, a, c, count, int(k), bool(limited),
                                    float(reset_factor), _TINY[np.dtype(U.dtype)], work, y_next, s_next)
    return y_next, s_next, U, V, count


def broyden_step_numba_cuda(U, V, y, f, f_old, s, count, k, limited, reset_factor):
    """The two kernels, one after the other on the same stream."""
    a, c = broyden_dots_numba_cuda(U, V, f, s, count)
    return broyden_update_numba_cuda(U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor)
