"""Numba CPU and CUDA versions of the fused Arnoldi step (loaded lazily through the kernel registry)."""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_namespace
from ..backend.numba_tools import CACHE, numba
from .gmres_kernels import MAX_RESTART, REORTHOGONALISE_BELOW
from numba import cuda  # noqa: E402  (after numba_tools has set the cache folder)
from ..backend.cuda_blocks import block_reduce, for_kernels  # noqa: E402
from ..backend.launch import cuda_kernel  # noqa: E402

__all__ = ["arnoldi_step_numba_cpu", "arnoldi_step_numba_cuda", "least_squares_numba_cpu", "arnoldi_step_cuda_kernel", "finish_column",
           "reorthogonalise", "shift_column"]

THREADS = 128
SCRATCH = MAX_RESTART + 2


@numba.njit(inline="always")
def finish_column(hsum, hnext, wnorm, Q, R, col, j, beta, tol, tiny_factor):
    """The scalar tail of an Arnoldi step on one sample: rotate the new Hessenberg column by the previous
    rotations (``Q``), add the rotation that zeroes its subdiagonal, store it in ``R``. Returns
    ``(usable, go_on)``: the rotated diagonal is not round-off, and the sample keeps iterating."""
    for r in range(j + 2):
        acc = 0.0
        for c in range(j + 1):
            acc += Q[r, c] * hsum[c]
        col[r] = acc + Q[r, j + 1] * hnext
    den = math.hypot(col[j], col[j + 1])
    c = col[j] / den if den > 0 else 1.0
    s = col[j + 1] / den if den > 0 else 0.0
    for i in range(j + 2):                  # (rows j and j + 1 of Q are zero past column j + 1)
        qj = Q[j, i]
        qn = Q[j + 1, i]
        Q[j, i] = c * qj + s * qn
        Q[j + 1, i] = c * qn - s * qj
    col[j] = den
    col[j + 1] = 0.0
    for r in range(j + 2):
        R[r, j] = col[r]
    tiny = tiny_factor * wnorm
    usable = den > tiny
    estimate = beta * abs(Q[j + 1, 0])
    go_on = usable and hnext > tiny and not (estimate <= tol)
    return usable, go_on


@numba.njit(inline="always")
def reorthogonalise(norm2_after, norm_before):
    """Whether the first Gram–Schmidt pass cancelled enough of w (squared norm ``norm2_after`` from
    ``norm_before``) to need a second one."""
    return norm2_after < REORTHOGONALISE_BELOW * norm_before * norm_before


@numba.njit(inline="always")
def shift_column(hsum, hnext, j):
    """The Hessenberg column of ``A = I − B`` from the one of B (``hsum``, turned into ``e_j − hsum`` in place)
    and ``||A v_j||`` from it: the orthogonalised part of ``B v_j``, negated, is the new basis vector."""
    acc = hnext * hnext
    for i in range(j + 1):
        hsum[i] = -hsum[i]
    hsum[j] += 1.0
    for i in range(j + 1):
        acc += hsum[i] * hsum[i]
    return math.sqrt(acc)


@numba.njit(cache=CACHE, fastmath={"reassoc", "contract"})   # reassociation vectorises the dot products
def _arnoldi_loop(V, w, R, Q, beta, tol, k, live, broke, j, tiny_factor, shifted, inputs):
    """The CPU step on every live sample; ``w`` is only read (each sample's row is orthogonalised in a scratch
    row of its own). ``inputs``: ``(B, n)`` also given each live sample's new basis vector (the next operator
    input), or empty. Returns the number of samples still iterating."""
    copy = inputs.shape[0] > 0
    hsum = np.empty(j + 1)
    h = np.empty(j + 1)
    col = np.empty(j + 2)
    n = w.shape[1]
    wb = np.empty(n, dtype=w.dtype)
    count = 0
    for b in range(V.shape[0]):
        if not live[b]:
            continue
        Vb = V[b]
        zero = w[b, 0] * 0                                  # sums in the arrays' dtype: 8 float32 lanes per vector
        acc = zero
        for e in range(n):
            x = w[b, e]
            wb[e] = x
            acc += x * x
        wnorm = math.sqrt(acc)
        for i in range(j + 1):
            hsum[i] = 0.0
        for sweep in range(2):                              # classical Gram–Schmidt, twice where needed
            for i in range(j + 1):
                acc = zero
                for e in range(n):
                    acc += Vb[i, e] * wb[e]
                h[i] = acc
            for i in range(j + 1):
                hi = wb.dtype.type(h[i])
                for e in range(n):
                    wb[e] -= hi * Vb[i, e]
                hsum[i] += h[i]
            acc = zero
            for e in range(n):
                acc += wb[e] * wb[e]
            if sweep == 0 and not reorthogonalise(acc, wnorm):
                break
        hnext = math.sqrt(acc)
        if shifted:
            wnorm = shift_column(hsum, hnext, j)
        usable, go_on = finish_column(hsum, hnext, wnorm, Q[b], R[b], col, j, beta[b], tol[b], tiny_factor)
        if usable:
            k[b] = j + 1
        else:
            broke[b] = True
        live[b] = go_on
        count += go_on
        scale = 1.0 / hnext if hnext > 0 else 1.0
        if shifted:
            scale = -scale
        for e in range(n):
            Vb[j + 1, e] = wb[e] * scale if go_on else 0.0
        if copy:
            for e in range(n):
                inputs[b, e] = Vb[j + 1, e]
    return count


def arnoldi_step_numba_cpu(V, w, R, Q, beta, tol, k, live, broke, j, tiny_factor, shifted=False):
    w = np.array(w, order="C", copy=True) if np.may_share_memory(w, V) else np.ascontiguousarray(w)
    _arnoldi_loop(V, w, R, Q, beta, tol, k, live, broke, int(j), float(tiny_factor), bool(shifted),
                  np.empty((0, V.shape[2]), dtype=V.dtype))                                # (w only read)
    return V, R, Q, k, live, broke


def _prepare_arnoldi(V, R, Q, beta, tol, k, live, broke, tiny_factor, shifted=False, inputs=None):
    """``step(w, j) -> live count``: :func:`arnoldi_step_numba_cpu` with a cycle's arrays bound once, returning
    the number of samples still iterating (the cycle's host check, with no array method call). ``w`` is only
    read, never copied unless it is strided. ``inputs``: a ``(B, n)`` array the step also writes each live
    sample's new basis vector into (the operator's next input, contiguous; other rows left as they are)."""
    loop, tiny, shifted, shares = _arnoldi_loop, float(tiny_factor), bool(shifted), np.may_share_memory
    if inputs is None:
        inputs = np.empty((0, V.shape[2]), dtype=V.dtype)

        def step(w, j):
            if not w.flags.c_contiguous or shares(w, V):  # (a w inside the basis, as an identity operator returns)
                w = np.array(w, order="C", copy=True)
            return loop(V, w, R, Q, beta, tol, k, live, broke, j, tiny, shifted, inputs)

        return step

    def step_from_inputs(w, j):
        # (the operator was given ``inputs``, never the basis: its output cannot lie inside V; an output that is
        # ``inputs`` itself is safe too, each row being read whole before the kernel writes it)
        if not w.flags.c_contiguous:
            w = np.array(w, order="C", copy=True)
        return loop(V, w, R, Q, beta, tol, k, live, broke, j, tiny, shifted, inputs)

    return step_from_inputs


@numba.njit(cache=CACHE)
def _update_add_loop(V, y, k, x, out):
    for b in range(V.shape[0]):
        for e in range(V.shape[2]):
            out[b, e] = 0.0
        for i in range(k[b]):
            yi = y[b, i]
            for e in range(V.shape[2]):
                out[b, e] += yi * V[b, i, e]
        for e in range(V.shape[2]):
            out[b, e] = x[b, e] + out[b, e]


def _cycle_update_add(V, y, k, x):
    """``x + dx`` with the cycle's update ``dx`` (:func:`_cycle_update`'s sums, then the addition), in one pass:
    the array code's ``x + dx``, bit for bit."""
    out = np.empty((V.shape[0], V.shape[2]), dtype=V.dtype)
    _update_add_loop(V, y, k, x, out)
    return out


def _cycle_update(V, y, k):
    """The cycle's update ``dx_b = Σ_{i<k_b} y_bi V_bi``: reads only the basis vectors the sample's steps wrote
    (so the prepared step's workspace needs no zeroing between cycles: stale rows past ``k_b`` are never read)."""
    dx = np.empty((V.shape[0], V.shape[2]), dtype=V.dtype)
    # (0 + s is s bit for bit: the sums start at +0 and so never end at −0)
    _update_add_loop(V, y, k, np.zeros_like(dx), dx)
    return dx


@numba.njit(cache=CACHE)
def _start_loop(V, r, rnorm, active, beta, live, k, broke, inputs):
    copy = inputs.shape[0] > 0
    for b in range(V.shape[0]):
        go = active[b]
        live[b] = go
        k[b] = 0
        broke[b] = False
        beta[b] = rnorm[b] if go else 0.0
        scale = rnorm[b] if rnorm[b] > 0 else 1.0
        for e in range(V.shape[2]):
            V[b, 0, e] = r[b, e] / scale if go else 0.0
        if copy and go:
            for e in range(V.shape[2]):
                inputs[b, e] = V[b, 0, e]


def _cycle_start(V, r, rnorm, active, inputs=None):
    """``(beta, live, k, broke)`` of a cycle and its first basis vector ``V[:, 0] = r / ||r||`` (zero for the
    samples not running), in one pass: the array code's values, bit for bit; also into the running samples'
    rows of ``inputs`` where given."""
    B = V.shape[0]
    beta, live = np.empty(B, dtype=V.dtype), np.empty(B, dtype=np.bool_)
    k, broke = np.empty(B, dtype=np.int64), np.empty(B, dtype=np.bool_)
    _start_loop(V, r, rnorm, active, beta, live, k, broke,
                np.empty((0, V.shape[2]), dtype=V.dtype) if inputs is None else inputs)
    return beta, live, k, broke


@numba.njit(cache=CACHE)
def _end_loop(x, x_new, r, r_new, new, rnorm, tol, broke, done, codes, shrink, success, breakdown, stalled,
              diverged):
    finished = True
    for b in range(x.shape[0]):
        if done[b]:
            continue
        nb = new[b]
        finite = math.isfinite(nb)
        conv = nb <= tol[b]
        slow = not conv and not broke[b] and not (nb < rnorm[b] * shrink)
        if not finite:
            codes[b] = diverged
        elif conv:
            codes[b] = success
        elif broke[b]:
            codes[b] = breakdown
        elif slow:
            codes[b] = stalled
        if finite:
            for e in range(x.shape[1]):
                x[b, e] = x_new[b, e]
                r[b, e] = r_new[b, e]
            rnorm[b] = nb
        if not finite or conv or broke[b] or slow:
            done[b] = True
        else:
            finished = False
    return finished


def _cycle_end(x, x_new, r, r_new, new, rnorm, tol, broke, done, codes, shrink, success, breakdown, stalled,
               diverged):
    """The bookkeeping after a cycle's true residual ``r_new`` (norms ``new``) of ``x_new``, in place for the
    samples not done: their codes, ``x``, ``r`` and ``rnorm`` (the finite ones), ``done``; returns whether
    every sample is done. ``shrink``: ``1 − sqrt(eps)`` in the arrays' dtype."""
    return _end_loop(x, x_new, r, r_new, new, rnorm, tol, broke, done, codes, rnorm.dtype.type(shrink),
                     int(success), int(breakdown), int(stalled), int(diverged))


@numba.njit(cache=CACHE)
def _reset_loop(Q, touched):
    for b in range(Q.shape[0]):
        for i in range(touched):
            for c in range(touched):
                Q[b, i, c] = 1.0 if i == c else 0.0


def _reset_rotations(Q, touched):
    """The leading ``touched × touched`` block of each sample's Q back to the identity (the rest of a kept Q
    already is), in one pass."""
    _reset_loop(Q, int(touched))


arnoldi_step_numba_cpu.prepare = _prepare_arnoldi
arnoldi_step_numba_cpu.reset = _reset_rotations
arnoldi_step_numba_cpu.update = _cycle_update
arnoldi_step_numba_cpu.start = _cycle_start
arnoldi_step_numba_cpu.end = _cycle_end
arnoldi_step_numba_cpu.update_add = _cycle_update_add


@numba.njit(cache=CACHE)
def _least_squares_loop(R, Q, beta, k, y):
    """The sums of ``back_substitute`` on the identity-padded system, in the same order, without the padding's
    exact zeros (bit for bit the reference's composition with the compiled back substitution)."""
    used = y.shape[1]
    for b in range(R.shape[0]):
        kb = k[b]
        for i in range(used - 1, -1, -1):
            if i >= kb:
                y[b, i] = 0.0
                continue
            acc = beta[b] * Q[b, i, 0]
            for j in range(i + 1, kb):
                acc -= R[b, i, j] * y[b, j]
            y[b, i] = acc / R[b, i, i]


def least_squares_numba_cpu(R, Q, beta, k, used):
    y = np.empty((R.shape[0], int(used)), dtype=R.dtype)
    _least_squares_loop(R, Q, beta, k, y)
    return y


arnoldi_step_numba_cpu.least_squares = least_squares_numba_cpu     # (the cycle's, with the compiled step)


_finish_cuda, _block_reduce, _reorthogonalise, _shift_column = for_kernels(finish_column, block_reduce, reorthogonalise,
                                                                          shift_column)


def arnoldi_step_cuda_kernel(V, w, R, Q, beta, tol, k, live, broke, j, tiny_factor, shifted):
    """One block per live sample: block reductions for the norms and the dot products, thread 0 for the
    rotations, then the block writes the next basis vector. ``w`` is overwritten (scratch)."""
    b = cuda.blockIdx.x
    if not live[b]:
        return
    tid = cuda.threadIdx.x
    n = w.shape[1]
    red = cuda.shared.array(THREADS, numba.float64)
    hsum = cuda.shared.array(SCRATCH, numba.float64)
    h = cuda.shared.array(SCRATCH, numba.float64)
    col = cuda.shared.array(SCRATCH, numba.float64)
    norms = cuda.shared.array(3, numba.float64)             # ||w|| before, ||w|| after, 1 / scale or 0
    for i in range(tid, j + 1, cuda.blockDim.x):
        hsum[i] = 0.0
    cuda.syncthreads()
    # task -1: ||w||²; tasks 0..j: <V_i, w>; after each pass's update, ||w||² decides on a second pass
    hnext = 0.0
    for sweep in range(2):
        for task in range(-1 if sweep == 0 else 0, j + 1):
            acc = 0.0
            for e in range(tid, n, cuda.blockDim.x):
                acc += (w[b, e] * w[b, e]) if task < 0 else (V[b, task, e] * w[b, e])
            total = _block_reduce(red, acc, False)
            if tid == 0:
                if task < 0:
                    norms[0] = math.sqrt(total)
                else:
                    h[task] = total
                    hsum[task] += total
            cuda.syncthreads()
        for e in range(tid, n, cuda.blockDim.x):
            acc = w[b, e]
            for i in range(j + 1):
                acc -= h[i] * V[b, i, e]
            w[b, e] = acc
        cuda.syncthreads()
        acc = 0.0
        for e in range(tid, n, cuda.blockDim.x):
            acc += w[b, e] * w[b, e]
        total = _block_reduce(red, acc, False)              # the same for every thread: a uniform branch
        hnext = math.sqrt(total)
        if sweep == 0 and not _reorthogonalise(total, norms[0]):
            break
    if tid == 0:
        wnorm = _shift_column(hsum, hnext, j) if shifted else norms[0]
        usable, go_on = _finish_cuda(hsum, hnext, wnorm, Q[b], R[b], col, j, beta[b], tol[b], tiny_factor)
        if usable:
            k[b] = j + 1
        else:
            broke[b] = True
        live[b] = go_on
        scale = 1.0 / hnext if hnext > 0 else 1.0
        norms[2] = (-scale if shifted else scale) if go_on else 0.0
    cuda.syncthreads()
    scale = norms[2]
    for e in range(tid, n, cuda.blockDim.x):
        V[b, j + 1, e] = w[b, e] * scale


_ARNOLDI_STEP = cuda_kernel(arnoldi_step_cuda_kernel, threads=THREADS, simulated_threads=8)


def arnoldi_step_numba_cuda(V, w, R, Q, beta, tol, k, live, broke, j, tiny_factor, shifted=False):
    w = get_namespace(V).array(w, order="C", copy=True)      # scratch: the caller's w is left as it was
    _ARNOLDI_STEP[V.shape[0], _ARNOLDI_STEP.threads](V, w, R, Q, beta, tol, k, live, broke, int(j),
                                                     float(tiny_factor), bool(shifted))
    return V, R, Q, k, live, broke
