"""Numba CPU and CUDA versions of the adjoint iteration's fused step (loaded lazily through the kernel
registry)."""

from __future__ import annotations

import math

import numpy as np

from ..backend.numba_tools import CACHE, numba
from numba import cuda  # noqa: E402  (after numba_tools has set the cache folder)
from ..backend.cuda_blocks import block_reduce, for_kernels  # noqa: E402
from ..backend.launch import cuda_kernel  # noqa: E402

__all__ = ["richardson_step_numba_cpu", "richardson_step_numba_cuda", "richardson_step_cuda_kernel",
           "richardson_decision"]

THREADS = 128


@numba.njit(inline="always")
def richardson_decision(new, old, tol, rate):
    """One row that was iterating, from its new residual norm ``new`` (already rounded to the arrays' dtype)
    and its last one ``old``: ``(take, slow, done)``. A non-finite norm keeps the last iterate and waits for
    GMRES; a finite one is taken, converges within ``tol`` and waits when it shrank by less than ``rate``."""
    if not math.isfinite(new):
        return False, True, False
    done = new <= tol
    slow = not done and not (float(new) <= rate * float(old))
    return True, slow, done


@numba.njit(cache=CACHE, fastmath={"reassoc", "contract"})   # reassociation vectorises the sums of squares
def _richardson_loop(trial, u, g, lam, r, rnorm, tol, going, slow, done, rate, next_trial, counts):
    n_going = 0
    n_slow = 0
    n = trial.shape[1]
    for i in range(trial.shape[0]):
        if going[i]:
            acc = rnorm[i] * 0                                  # sums in the arrays' dtype, as the reference
            for j in range(n):
                d = g[i, j] + u[i, j] - trial[i, j]
                acc += d * d
            old = rnorm[i]
            rnorm[i] = math.sqrt(acc)                           # rounded to the dtype by the store
            take, row_slow, row_done = richardson_decision(rnorm[i], old, tol[i], rate)
            if take:
                for j in range(n):
                    t = trial[i, j]
                    d = g[i, j] + u[i, j] - t
                    lam[i, j] = t
                    r[i, j] = d
            else:
                rnorm[i] = old
            slow[i] = row_slow
            done[i] = row_done
            going[i] = not (row_slow or row_done)
        if going[i]:
            n_going += 1
            for j in range(n):
                next_trial[i, j] = lam[i, j] + r[i, j]
        else:
            n_slow += slow[i]
            for j in range(n):
                next_trial[i, j] = lam[i, j]
    counts[0] = n_going
    counts[1] = n_slow


def richardson_step_numba_cpu(trial, u, g, lam, r, rnorm, tol, going, slow, done, rate, next_trial, counts):
    trial, u = np.ascontiguousarray(trial), np.ascontiguousarray(u)
    _richardson_loop(trial, u, g, lam, r, rnorm, tol, going, slow, done, float(rate), next_trial, counts)
    return lam, r, rnorm, going, slow, done, next_trial, counts


def _bound_step(trial, u, g, lam, r, rnorm, tol, going, slow, done, rate, next_trial, counts):
    """:func:`richardson_step_numba_cpu` for the adjoint's own loop: its arrays are C-contiguous (``u`` made so
    when a VJP returns a strided view), ``rate`` a float; nothing returned."""
    if not u.flags.c_contiguous:
        u = np.ascontiguousarray(u)
    _richardson_loop(trial, u, g, lam, r, rnorm, tol, going, slow, done, rate, next_trial, counts)


@numba.njit(cache=CACHE)
def _select_rows_loop(going, a, b, out):
    for i in range(out.shape[0]):
        if going[i]:
            ai, oi = a[i], out[i]
            for j in range(out.shape[1]):
                oi[j] = ai[j]
        else:
            bi, oi = b[i], out[i]
            for j in range(out.shape[1]):
                oi[j] = bi[j]


def _select_rows(going, a, b, out):
    """``out[i] = a[i] if going[i] else b[i]`` (``xp.where(going[:, None], a, b)`` into ``out``, one pass): the
    VJP input of a step the iteration shares with GMRES (its rows' trials, GMRES's vectors for the others)."""
    _select_rows_loop(going, a, b, out)
    return out


@numba.njit(cache=CACHE)
def _hand_over_loop(slow, done, r, tol, waiting, rhs, rhs_tol):
    for i in range(r.shape[0]):
        w = slow[i]
        waiting[i] = w
        slow[i] = False
        if w:
            done[i] = True
            rhs_tol[i] = tol[i]
        else:
            rhs_tol[i] = 1
        for j in range(r.shape[1]):
            rhs[i, j] = r[i, j] if w else 0


def _hand_over(slow, done, r, tol):
    """The rows waiting for GMRES handed over in one pass: ``(waiting, rhs, rhs_tol)`` with ``waiting`` the
    former ``slow`` (now cleared; those rows marked ``done``), their residuals as GMRES's right-hand sides (zero
    rows elsewhere) and their tolerances (1 elsewhere)."""
    waiting, rhs, rhs_tol = np.empty_like(slow), np.empty_like(r), np.empty_like(tol)
    _hand_over_loop(slow, done, r, tol, waiting, rhs, rhs_tol)
    return waiting, rhs, rhs_tol


@numba.njit(cache=CACHE)
def _take_back_loop(waiting, lam, delta, rnorm, gnorm, codes, gcodes):
    for i in range(lam.shape[0]):
        if waiting[i]:
            for j in range(lam.shape[1]):
                lam[i, j] += delta[i, j]
            rnorm[i] = gnorm[i]
            codes[i] = gcodes[i]


def _take_back(waiting, lam, delta, rnorm, gnorm, codes, gcodes):
    """GMRES's corrections, residual norms and codes into the handed-over rows (in place)."""
    _take_back_loop(waiting, lam, delta, rnorm, gnorm, codes, gcodes)


@numba.njit(cache=CACHE)
def _trial_loop(going, lam, r, out):
    for i in range(lam.shape[0]):
        if going[i]:
            for j in range(lam.shape[1]):
                out[i, j] = lam[i, j] + r[i, j]
        else:
            for j in range(lam.shape[1]):
                out[i, j] = lam[i, j]


def _trial(going, lam, r, out):
    """``out[i] = λ_i + r_i`` for the rows still iterating, ``λ_i`` for the others (the next trial iterate)."""
    _trial_loop(going, lam, r, out)
    return out


richardson_step_numba_cpu.bound = _bound_step
richardson_step_numba_cpu.select_rows = _select_rows
richardson_step_numba_cpu.hand_over = _hand_over
richardson_step_numba_cpu.take_back = _take_back
richardson_step_numba_cpu.trial = _trial


_decision_cuda, _block_reduce = for_kernels(richardson_decision, block_reduce)


def richardson_step_cuda_kernel(trial, u, g, lam, r, rnorm, tol, going, slow, done, rate, next_trial, counts):
    """One block per row: a block reduction for the residual norm, thread 0 decides, then the block writes the
    row (``counts`` must be zero before the launch: each block adds its row)."""
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n = trial.shape[1]
    red = cuda.shared.array(THREADS, numba.float64)
    flags = cuda.shared.array(2, numba.int32)                 # took the step, still iterating
    was_going = going[row]
    if tid == 0:
        flags[0] = 0
        flags[1] = 1 if was_going else 0
    if was_going:                                            # the same for the whole block
        acc = 0.0
        for j in range(tid, n, cuda.blockDim.x):
            d = g[row, j] + u[row, j] - trial[row, j]
            acc += d * d
        total = _block_reduce(red, acc, False)
        if tid == 0:
            old = rnorm[row]
            rnorm[row] = math.sqrt(total)
            take, row_slow, row_done = _decision_cuda(rnorm[row], old, tol[row], rate)
            if not take:
                rnorm[row] = old
            slow[row] = row_slow
            done[row] = row_done
            going[row] = not (row_slow or row_done)
            flags[0] = 1 if take else 0
            flags[1] = 0 if (row_slow or row_done) else 1
    cuda.syncthreads()
    take = flags[0] == 1
    go_on = flags[1] == 1
    for j in range(tid, n, cuda.blockDim.x):
        if take:
            t = trial[row, j]
            d = g[row, j] + u[row, j] - t
            lam[row, j] = t
            r[row, j] = d
        next_trial[row, j] = lam[row, j] + r[row, j] if go_on else lam[row, j]
    if tid == 0:
        if go_on:
            cuda.atomic.add(counts, 0, 1)
        elif slow[row]:
            cuda.atomic.add(counts, 1, 1)


_RICHARDSON_STEP = cuda_kernel(richardson_step_cuda_kernel, threads=THREADS, simulated_threads=8)


def richardson_step_numba_cuda(trial, u, g, lam, r, rnorm, tol, going, slow, done, rate, next_trial, counts):
    counts[...] = 0
    _RICHARDSON_STEP[trial.shape[0], _RICHARDSON_STEP.threads](trial, u, g, lam, r, rnorm, tol, going, slow, done,
                                                               float(rate), next_trial, counts)
    return lam, r, rnorm, going, slow, done, next_trial, counts
