"""Numba CPU and CUDA versions of the fused Anderson step (loaded lazily through the kernel registry)."""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace
from ..backend.numba_tools import CACHE, numba
from .anderson_kernels import HISTORY_CAP
from numba import cuda  # noqa: E402  (after numba_tools has set the cache folder)
from ..backend.cuda_blocks import block_sum_rows, for_kernels  # noqa: E402
from ..backend.launch import cuda_kernel  # noqa: E402

__all__ = ["anderson_step_numba_cpu", "anderson_step_numba_cuda", "anderson_step_cuda_kernel",
           "solve_anderson_system", "step_rows", "cpu_scratch"]


@numba.njit(inline="always")
def solve_anderson_system(gram, work, newest, ridge, floor, alpha):
    """One sample: (H + λI) w = 1 by elimination with partial pivoting in ``work`` (at least c × (c + 1)),
    α = w/Σw in ``alpha``, else α = e_newest. Shared by the CPU loop and the CUDA kernel."""
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


_solve_system_cuda, _block_sum_rows = for_kernels(solve_anderson_system, block_sum_rows)


# -- CPU -----------------------------------------------------------------------------------------------------
@numba.njit(fastmath={"reassoc", "contract"})
def _dot(a, b, zero):
    """Σ a_j b_j in the type of ``zero`` (the arrays' dtype, as the reference's matmul sums); reassociation lets
    LLVM vectorise the sum (float32 data: 8 lanes, twice float64's and with no conversions). Not inlined at
    Numba's level: its fastmath flags would be lost in the caller's body."""
    acc = zero
    for j in range(a.shape[0]):
        acc += a[j] * b[j]
    return acc


#: samples whose small systems the CPU version eliminates side by side (the sample index is the innermost loop,
#: so each elimination step is one vectorised loop over the block)
BLOCK = 32


def cpu_scratch(history_size, batch):
    """The CPU loop's float64 scratch for rings of ``history_size`` slots and ``batch`` rows: ``(W, V)``, W the
    block's systems (m, m + 1, width), V the per-sample vectors, the pivoted fallback's system and its solution.
    A solve allocates it once and passes it to every step (see :func:`step_rows`)."""
    m, width = history_size, max(1, min(BLOCK, batch))
    return np.empty((m, m + 1, width)), np.empty((5, max(m, 3), max(width, m + 1)))


@numba.njit(error_model="numpy")
def _solve_block(H, rows, r0, S, c, ridge, floor, W, inv, alpha, good, lam, fac):
    """The systems of samples rows[r0] … rows[r0 + S − 1], the sample index innermost (every loop over ``s`` is
    one vectorised loop; S is not known when compiling, so LLVM vectorises these loops instead of unrolling
    them): symmetric elimination without pivoting (H + λI is symmetric positive definite; only H's upper
    triangle is read), α = w / Σw in ``alpha[:, s]``. A sample whose pivot is not positive and finite, or whose
    α is not finite, gets ``good[s] = 0`` (the caller solves it again with pivoting). ``error_model="numpy"``:
    no Python ZeroDivisionError branch in the divisions, which would keep the loops scalar."""
    for s in range(S):
        lam[s] = 0.0
        good[s] = 1.0
    for i in range(c):
        for j in range(i, c):
            for s in range(S):
                W[i, j, s] = H[rows[r0 + s], i, j]
        for s in range(S):
            W[i, c, s] = 1.0
    for i in range(c):
        for s in range(S):
            lam[s] += W[i, i, s]
    for s in range(S):
        lam[s] = ridge * lam[s] / c + floor
    for i in range(c):
        for s in range(S):
            W[i, i, s] += lam[s]
    for k in range(c):
        for s in range(S):
            p = W[k, k, s]
            ok = (p > 0.0) & (p < np.inf)
            good[s] = good[s] if ok else 0.0
            inv[k, s] = 1.0 / p if ok else 0.0
        for i in range(k + 1, c):
            for s in range(S):
                fac[s] = W[k, i, s] * inv[k, s]
            for j in range(i, c + 1):
                for s in range(S):
                    W[i, j, s] -= fac[s] * W[k, j, s]
    for i in range(c - 1, -1, -1):
        for s in range(S):
            alpha[i, s] = W[i, c, s]
        for j in range(i + 1, c):
            for s in range(S):
                alpha[i, s] -= W[i, j, s] * alpha[j, s]
        for s in range(S):
            alpha[i, s] *= inv[i, s]
    for s in range(S):
        lam[s] = 0.0                               # lam holds Σw, then 1/Σw, from here on
    for i in range(c):
        for s in range(S):
            lam[s] += alpha[i, s]
    for s in range(S):
        total = lam[s]
        ok = (total == total) & (total != 0.0) & (abs(total) != np.inf)
        lam[s] = 1.0 / total if ok else 0.0
        good[s] = good[s] if ok else 0.0
    for i in range(c):
        for s in range(S):
            a = alpha[i, s] * lam[s]
            alpha[i, s] = a
            good[s] = good[s] if abs(a) < np.inf else 0.0


@numba.njit(error_model="numpy")
def _mix(G, b, c, weights, out):
    """out = Σ_{i < c} weights[i] G[b, i], three slots per pass over ``out`` (in the arrays' dtype)."""
    n = out.shape[0]
    a0 = weights[0]
    g0 = G[b, 0]
    for j in range(n):
        out[j] = a0 * g0[j]
    i = 1
    while i + 3 <= c:
        a0, a1, a2 = weights[i], weights[i + 1], weights[i + 2]
        g0, g1, g2 = G[b, i], G[b, i + 1], G[b, i + 2]
        for j in range(n):
            out[j] += a0 * g0[j] + a1 * g1[j] + a2 * g2[j]
        i += 3
    while i < c:
        a0 = weights[i]
        g0 = G[b, i]
        for j in range(n):
            out[j] += a0 * g0[j]
        i += 1


@numba.njit(cache=CACHE, error_model="numpy")
def step_rows(G, F, H, y, f, slot, count, beta, ridge, floor, y_new, rows, nrows, W, V):
    """The samples ``rows[:nrows]`` (the others are not touched), in blocks of W.shape[2]: write the slot and
    form the dot products of each sample, solve the block's systems side by side (a sample that fails there:
    ``solve_anderson_system``, with pivoting and the plain-step fallback), then mix each sample into y_new.
    ``beta`` is in the arrays' dtype (y + beta·f as NumPy computes it); dot products and mixing run in the
    arrays' dtype, the small systems in float64. Only slots below ``count`` are touched. ``(W, V)``: scratch
    from :func:`cpu_scratch` for at least ``count`` slots."""
    n = y.shape[1]
    c = count
    width = W.shape[2]
    zero = y.dtype.type(0)
    inv, alpha = V[0], V[1]
    good, lam, fac = V[2, 0], V[2, 1], V[2, 2]
    work = V[3]
    single = V[4, 0]
    weights = np.empty(c, y.dtype)
    for r0 in range(0, nrows, width):
        S = min(width, nrows - r0)
        for s in range(S):
            b = rows[r0 + s]
            for j in range(n):
                fj = f[b, j]
                G[b, slot, j] = y[b, j] + beta * fj
                F[b, slot, j] = fj
            for i in range(c):
                d = _dot(F[b, i], f[b], zero)
                H[b, slot, i] = d
                H[b, i, slot] = d
        _solve_block(H, rows, r0, S, c, ridge, floor, W, inv, alpha, good, lam, fac)
        for s in range(S):
            b = rows[r0 + s]
            if good[s] == 0.0:
                solve_anderson_system(H[b, :c, :c], work, slot, ridge, floor, single)
                for i in range(c):
                    alpha[i, s] = single[i]
            for i in range(c):
                weights[i] = alpha[i, s]
            _mix(G, b, c, weights, y_new[b])


def anderson_step_numba_cpu(G, F, H, y, f, slot, count, beta, ridge, floor):
    """One pass over each sample's ring (see :func:`step_rows`), on one thread (why not threads over the
    samples: ARCHITECTURE.md, "Constants set by measurement")."""
    y_new = np.empty_like(y)
    W, V = cpu_scratch(int(count), y.shape[0])
    step_rows(G, F, H, np.ascontiguousarray(y), np.ascontiguousarray(f), int(slot), int(count), G.dtype.type(beta),
              float(ridge), float(floor), y_new, np.arange(y.shape[0]), y.shape[0], W, V)
    return y_new, G, F, H


# -- CUDA ----------------------------------------------------------------------------------------------------
THREADS = 128   # threads per block (a power of two); the simulator runs 32
CHUNK = 8       # dot products reduced together in shared memory
_WORK_COLS = HISTORY_CAP + 1   # shared-array shapes must be compile-time constants


def anderson_step_cuda_kernel(G, F, H, y, f, slot, count, beta, ridge, floor, y_new):
    """One block per sample. Pass 1: the threads stride over the columns, write the slot and form the partial
    dot products ⟨F_i, f⟩ (float64), reduced in shared memory ``CHUNK`` slots at a time; thread 0 solves the
    small system in shared memory; pass 2 mixes y_new = Σ α_i G_i (float64 sums)."""
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    n = y.shape[1]
    red = cuda.shared.array((CHUNK, THREADS), numba.float64)
    work = cuda.shared.array((HISTORY_CAP, _WORK_COLS), numba.float64)
    alpha = cuda.shared.array(HISTORY_CAP, numba.float64)
    for j in range(tid, n, threads):
        fj = f[b, j]
        G[b, slot, j] = y[b, j] + beta * fj
        F[b, slot, j] = fj
    for start in range(0, count, CHUNK):
        stop = min(start + CHUNK, count)
        for i in range(start, stop):
            acc = 0.0
            for j in range(tid, n, threads):
                acc += np.float64(F[b, i, j]) * np.float64(f[b, j])
            red[i - start, tid] = acc
        rows = stop - start
        _block_sum_rows(red, rows)
        if tid < rows:
            d = red[tid, 0]
            H[b, slot, start + tid] = d
            H[b, start + tid, slot] = d
        cuda.syncthreads()
    if tid == 0:
        _solve_system_cuda(H[b, :count, :count], work, slot, ridge, floor, alpha)
    cuda.syncthreads()
    for j in range(tid, n, threads):
        acc = 0.0
        for i in range(count):
            acc += alpha[i] * G[b, i, j]
        y_new[b, j] = acc


_ANDERSON_STEP = cuda_kernel(anderson_step_cuda_kernel, threads=THREADS)


def anderson_step_numba_cuda(G, F, H, y, f, slot, count, beta, ridge, floor):
    if not 0 < count <= min(HISTORY_CAP, G.shape[1]) or not 0 <= slot < count:
        raise ValueError(f"need 0 <= slot < count <= min({HISTORY_CAP}, history size), got slot={slot}, "
                         f"count={count}")
    y_new = get_namespace(G).empty_like(y)
    _ANDERSON_STEP[G.shape[0], _ANDERSON_STEP.threads](G, F, H, y, f, int(slot), int(count), float(beta),
                                                       float(ridge), float(floor), y_new)
    return y_new, G, F, H
