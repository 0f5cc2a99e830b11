"""Numba CPU and CUDA versions of the ODE step kernels (loaded lazily through the kernel registry).

Scalar logic (NaN-propagating maxima, the PI factor, the control of one row) is written once as
``numba.njit(inline="always")`` helpers, called by the CPU loops and the CUDA kernels alike. CUDA kernels
that reduce over a row run one block per (row, chunk of columns) and leave one partial result per chunk;
rows longer than ``CHUNK_ELEMENTS`` are split over several blocks and their partials summed afterwards.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace
from ..backend.numba_tools import CACHE, launch_config, numba
from .controller import make_control_step as _make_control_step, pi_factor as _pi_factor_py, \
    step_limit as _step_limit_py
from numba import cuda  # noqa: E402  (after numba_tools has set the cache folder)
from ..backend.cuda_blocks import block_reduce2, for_kernels, max_nan  # noqa: E402
from ..backend.launch import cuda_kernel  # noqa: E402

__all__ = ["rk_stage_numba_cpu", "rk_stage_numba_cuda", "rk_combine_error_numba_cpu",
           "rk_combine_error_numba_cuda", "adams_predict_numba_cpu", "adams_predict_numba_cuda",
           "adams_correct_error_numba_cpu", "adams_correct_error_numba_cuda", "ode_control_numba_cpu",
           "ode_control_numba_cuda"]

THREADS = 128
#: columns one CUDA block reduces before a row is split over several blocks
CHUNK_ELEMENTS = 8 * THREADS
MAX_CHUNKS = 1024


# ---- scalar helpers (CPU and CUDA) ------------------------------------------------------------------------
@numba.njit(inline="always")
def add_scaled_error(total, top, err, y_old, y_new, atol, rtol):
    """One element into a row's error sums: Σ (err / (atol + rtol·max(|y_old|, |y_new|)))² and max|y_new|
    (NaN-propagating). Shared by the Runge–Kutta and Adams kernels, CPU and CUDA."""
    a_new = abs(y_new)
    q = err / (atol + rtol * max_nan(abs(y_old), a_new))
    return total + q * q, max_nan(top, a_new)


pi_factor = numba.njit(inline="always", cache=CACHE)(_pi_factor_py)


@numba.njit(inline="always")
def adams_row(h, h1, h2):
    """Per-row constants of the Adams kernels: the weight w₂ = ∫_0^h s (s + h₁) ds and the reciprocals of
    h₁, h₂, h₁ + h₂, h, h + h₁, h + h₁ + h₂ (products by reciprocals instead of divisions per element)."""
    return (h * h * (h / 3.0 + h1 / 2.0), 1.0 / h1, 1.0 / h2, 1.0 / (h1 + h2), 1.0 / h, 1.0 / (h + h1),
            1.0 / (h + h1 + h2))


@numba.njit(inline="always")
def adams_differences(f0, f1, f2, inv1, inv2, inv12):
    """First and second divided differences of the last three derivatives."""
    d1 = (f0 - f1) * inv1
    d2 = (d1 - (f1 - f2) * inv2) * inv12
    return d1, d2


@numba.njit(inline="always")
def adams_error_weight(h, h1, h2, corrector):
    """Weight of the third divided difference in the local error (twice AM4 − AM3, or the next AB term)."""
    if corrector:
        return -h * h * h * (h / 6.0 + h1 / 3.0)
    p = h1
    q = h1 + h2
    return h * h * (h * h / 4.0 + (p + q) * h / 3.0 + p * q / 2.0)


step_limit = numba.njit(inline="always", cache=CACHE)(_step_limit_py)
control_step = numba.njit(inline="always")(_make_control_step(pi_factor, step_limit))


@numba.njit(inline="always")
def control_row(r, err_sq, y_absmax, res, threshold, exponent, t, h, h_next, err_prev, after_reject, active,
                codes, accepted, rejected, nfev_rows, m, t_end, direction, steady, big, eps, nfev):
    """Step control of row ``r`` after an attempt (see ``ode_control_reference``; the logic is
    :func:`~deqcore.ode.controller.make_control_step`'s); returns whether the row's attempt was accepted."""
    if not active[r]:
        h_next[r] = h[r]
        after_reject[r] = False
        return False
    good, still, code, t_r, hn, ep, rej = control_step(err_sq[r], y_absmax[r], res[r], threshold[r], exponent[r],
                                                       t[r], h[r], err_prev[r], after_reject[r], m, t_end,
                                                       direction, steady, big, eps)
    t[r] = t_r
    err_prev[r] = ep
    h_next[r] = hn
    after_reject[r] = rej
    if good:
        accepted[r] += 1
    else:
        rejected[r] += 1
    nfev_rows[r] = nfev
    if code != 0:
        codes[r] = code
    active[r] = still
    return good


_block_reduce2, = for_kernels(block_reduce2)


@numba.njit(inline="always")
def store_row_partials(shared_sum, shared_max, total, top, part_sum, part_max, r):
    """The block's sum of ``total`` and maximum of ``top`` into column ``blockIdx.y`` of row ``r``'s partials
    (the tail of the CUDA error kernels)."""
    block_sum, block_max = _block_reduce2(shared_sum, shared_max, total, top, False, True)
    if cuda.threadIdx.x == 0:
        part_sum[r, cuda.blockIdx.y] = block_sum
        part_max[r, cuda.blockIdx.y] = block_max


_add_scaled_error, _adams_row, _adams_differences, _adams_error_weight, _control_row, _store_row_partials = (
    for_kernels(add_scaled_error, adams_row, adams_differences, adams_error_weight, control_row,
                store_row_partials))


# ---- Numba CPU ------------------------------------------------------------------------------------------

@numba.njit(inline="always")
def _accumulate(acc, coef, ks, r):
    """acc = Σ_j coef_j ks[j, r] (stage by stage, so each pass vectorises)."""
    m = acc.shape[0]
    for i in range(m):
        acc[i] = 0.0
    for j in range(coef.shape[0]):
        c = coef[j]
        for i in range(m):
            acc[i] += c * ks[j, r, i]


@numba.njit(cache=CACHE)
def _rk_stage_cpu(y, ks, a, h, out):
    rows, m = y.shape
    acc = np.empty(m)
    for r in range(rows):
        _accumulate(acc, a, ks, r)
        hr = h[r]
        for i in range(m):
            out[r, i] = y[r, i] + hr * acc[i]


def rk_stage_numba_cpu(y, ks, a, h):
    out = np.empty(y.shape, dtype=y.dtype)
    _rk_stage_cpu(y, ks, a, h, out)
    return out


@numba.njit(cache=CACHE)
def _rk_combine_cpu(y, ks, b, e, h, y_new, compute_new, atol, rtol, err_sq, y_absmax):
    rows, m = y.shape
    acc = np.empty(m)
    for r in range(rows):
        hr = h[r]
        if compute_new:
            _accumulate(acc, b, ks, r)
            for i in range(m):
                y_new[r, i] = y[r, i] + hr * acc[i]
        _accumulate(acc, e, ks, r)
        total = 0.0
        top = 0.0
        for i in range(m):
            total, top = add_scaled_error(total, top, hr * acc[i], y[r, i], y_new[r, i], atol, rtol)
        err_sq[r] = total
        y_absmax[r] = top


def rk_combine_error_numba_cpu(y, ks, b, e, h, y_new, compute_new, atol, rtol):
    err_sq = np.empty(y.shape[0])
    y_absmax = np.empty(y.shape[0])
    _rk_combine_cpu(y, ks, b, e, h, y_new, bool(compute_new), float(atol), float(rtol), err_sq, y_absmax)
    return y_new, err_sq, y_absmax


@numba.njit(cache=CACHE)
def _adams_predict_cpu(y, f0, f1, f2, h, h1, h2, out):
    rows, m = y.shape
    for r in range(rows):
        hr = h[r]
        w2, inv1, inv2, inv12, _, _, _ = adams_row(hr, h1[r], h2[r])
        half = 0.5 * hr
        for i in range(m):
            d1, d2 = adams_differences(f0[r, i], f1[r, i], f2[r, i], inv1, inv2, inv12)
            out[r, i] = y[r, i] + hr * (f0[r, i] + half * d1) + w2 * d2


def adams_predict_numba_cpu(y, f0, f1, f2, h, h1, h2):
    out = np.empty(y.shape, dtype=y.dtype)
    _adams_predict_cpu(y, f0, f1, f2, h, h1, h2, out)
    return out


@numba.njit(cache=CACHE)
def _adams_correct_cpu(y, y_pred, f_pred, f0, f1, f2, h, h1, h2, y_new, corrector, atol, rtol, err_sq,
                       y_absmax):
    rows, m = y.shape
    for r in range(rows):
        hr = h[r]
        w2, inv1, inv2, inv12, inv_h, inv_h1, inv_h12 = adams_row(hr, h1[r], h2[r])
        w3 = adams_error_weight(hr, h1[r], h2[r], corrector)
        total = 0.0
        top = 0.0
        for i in range(m):
            d1, d2 = adams_differences(f0[r, i], f1[r, i], f2[r, i], inv1, inv2, inv12)
            e2 = ((f_pred[r, i] - f0[r, i]) * inv_h - d1) * inv_h1
            e3 = (e2 - d2) * inv_h12
            if corrector:
                y_new[r, i] = y_pred[r, i] + w2 * (e2 - d2)
            total, top = add_scaled_error(total, top, w3 * e3, y[r, i], y_new[r, i], atol, rtol)
        err_sq[r] = total
        y_absmax[r] = top


def adams_correct_error_numba_cpu(y, y_pred, f_pred, f0, f1, f2, h, h1, h2, y_new, corrector, atol, rtol):
    err_sq = np.empty(y.shape[0])
    y_absmax = np.empty(y.shape[0])
    _adams_correct_cpu(y, y_pred, f_pred, f0, f1, f2, h, h1, h2, y_new, bool(corrector), float(atol),
                       float(rtol), err_sq, y_absmax)
    return y_new, err_sq, y_absmax


@numba.njit(cache=CACHE)
def _control_cpu(err_sq, y_absmax, res, threshold, exponent, t, h, h_next, err_prev, after_reject, active,
                 codes, accepted, rejected, nfev_rows, ok, summary, m, t_end, direction, steady, big, eps, nfev):
    n_ok = 0
    n_active = 0
    for r in range(err_sq.shape[0]):
        good = control_row(r, err_sq, y_absmax, res, threshold, exponent, t, h, h_next, err_prev,
                           after_reject, active, codes, accepted, rejected, nfev_rows, m, t_end, direction,
                           steady, big, eps, nfev)
        ok[r] = good
        n_ok += good
        n_active += active[r]
    summary[0] = n_ok
    summary[1] = n_active


def ode_control_numba_cpu(err_sq, y_absmax, res, threshold, exponent, t, h, h_next, err_prev, after_reject,
                          active, codes, accepted, rejected, nfev_rows, ok, summary, m, t_end, direction, steady,
                          big, eps, nfev):
    _control_cpu(err_sq, y_absmax, res, threshold, exponent, t, h, h_next, err_prev, after_reject, active,
                 codes, accepted, rejected, nfev_rows, ok, summary, int(m), float(t_end), float(direction),
                 bool(steady), float(big), float(eps), int(nfev))
    return t, h_next, err_prev, after_reject, active, codes, accepted, rejected, nfev_rows, ok, summary


# ---- Numba CUDA -----------------------------------------------------------------------------------------

def rk_stage_cuda_kernel(y, ks, a, h, out):
    """Grid-stride over all elements; each sums its stages."""
    rows, m = y.shape
    for idx in range(cuda.grid(1), rows * m, cuda.gridsize(1)):
        r = idx // m
        i = idx - r * m
        acc = 0.0
        for j in range(a.shape[0]):
            acc += a[j] * ks[j, r, i]
        out[r, i] = y[r, i] + h[r] * acc


def rk_combine_error_cuda_kernel(y, ks, b, e, h, y_new, compute_new, atol, rtol, part_sum, part_max):
    """Block (row, chunk): strides over its share of the row's columns, then a shared-memory reduction."""
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    m = y.shape[1]
    hr = h[r]
    total = 0.0
    top = 0.0
    step = cuda.blockDim.x * cuda.gridDim.y
    for i in range(cuda.blockIdx.y * cuda.blockDim.x + tid, m, step):
        if compute_new:
            acc = 0.0
            for j in range(b.shape[0]):
                acc += b[j] * ks[j, r, i]
            y_new[r, i] = y[r, i] + hr * acc
        acc = 0.0
        for j in range(e.shape[0]):
            acc += e[j] * ks[j, r, i]
        total, top = _add_scaled_error(total, top, hr * acc, y[r, i], y_new[r, i], atol, rtol)
    shared_sum = cuda.shared.array(THREADS, numba.float64)
    shared_max = cuda.shared.array(THREADS, numba.float64)
    _store_row_partials(shared_sum, shared_max, total, top, part_sum, part_max, r)


def adams_predict_cuda_kernel(y, f0, f1, f2, h, h1, h2, out):
    rows, m = y.shape
    for idx in range(cuda.grid(1), rows * m, cuda.gridsize(1)):
        r = idx // m
        i = idx - r * m
        hr = h[r]
        w2, inv1, inv2, inv12, _, _, _ = _adams_row(hr, h1[r], h2[r])
        d1, d2 = _adams_differences(f0[r, i], f1[r, i], f2[r, i], inv1, inv2, inv12)
        out[r, i] = y[r, i] + hr * (f0[r, i] + (0.5 * hr) * d1) + w2 * d2


def adams_correct_error_cuda_kernel(y, y_pred, f_pred, f0, f1, f2, h, h1, h2, y_new, corrector, atol, rtol,
                                    part_sum, part_max):
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    m = y.shape[1]
    hr = h[r]
    w2, inv1, inv2, inv12, inv_h, inv_h1, inv_h12 = _adams_row(hr, h1[r], h2[r])
    w3 = _adams_error_weight(hr, h1[r], h2[r], corrector)
    total = 0.0
    top = 0.0
    step = cuda.blockDim.x * cuda.gridDim.y
    for i in range(cuda.blockIdx.y * cuda.blockDim.x + tid, m, step):
        d1, d2 = _adams_differences(f0[r, i], f1[r, i], f2[r, i], inv1, inv2, inv12)
        e2 = ((f_pred[r, i] - f0[r, i]) * inv_h - d1) * inv_h1
        e3 = (e2 - d2) * inv_h12
        if corrector:
            y_new[r, i] = y_pred[r, i] + w2 * (e2 - d2)
        total, top = _add_scaled_error(total, top, w3 * e3, y[r, i], y_new[r, i], atol, rtol)
    shared_sum = cuda.shared.array(THREADS, numba.float64)
    shared_max = cuda.shared.array(THREADS, numba.float64)
    _store_row_partials(shared_sum, shared_max, total, top, part_sum, part_max, r)


def ode_control_cuda_kernel(err_sq, y_absmax, res, threshold, exponent, t, h, h_next, err_prev, after_reject,
                            active, codes, accepted, rejected, nfev_rows, ok, summary, m, t_end, direction,
                            steady, big, eps, nfev):
    """One thread per row (grid-stride): the row's control, counted into ``summary`` (atomics)."""
    for r in range(cuda.grid(1), err_sq.shape[0], cuda.gridsize(1)):
        good = _control_row(r, err_sq, y_absmax, res, threshold, exponent, t, h, h_next, err_prev,
                            after_reject, active, codes, accepted, rejected, nfev_rows, m, t_end, direction,
                            steady, big, eps, nfev)
        ok[r] = good
        if good:
            cuda.atomic.add(summary, 0, 1)
        if active[r]:
            cuda.atomic.add(summary, 1, 1)


_RK_STAGE = cuda_kernel(rk_stage_cuda_kernel, threads=THREADS)
_RK_COMBINE_ERROR = cuda_kernel(rk_combine_error_cuda_kernel, threads=THREADS)
_ADAMS_PREDICT = cuda_kernel(adams_predict_cuda_kernel, threads=THREADS)
_ADAMS_CORRECT_ERROR = cuda_kernel(adams_correct_error_cuda_kernel, threads=THREADS)
_ODE_CONTROL = cuda_kernel(ode_control_cuda_kernel, threads=THREADS)


def _row_partials(xp, rows, m, threads):
    """(grid, partial sums, partial maxima) of a reduction over each row's ``m`` columns."""
    chunks = max(1, min(MAX_CHUNKS, -(-m // max(CHUNK_ELEMENTS, threads))))
    return (rows, chunks), xp.empty((rows, chunks)), xp.empty((rows, chunks))


def _finish(xp, part_sum, part_max):
    if part_sum.shape[1] == 1:
        return part_sum[:, 0], part_max[:, 0]
    return part_sum.sum(axis=1), part_max.max(axis=1)


def rk_stage_numba_cuda(y, ks, a, h):
    out = get_namespace(y).empty(y.shape, dtype=y.dtype)
    _RK_STAGE[launch_config(y.size, _RK_STAGE.threads)](y, ks, a, h, out)
    return out


def rk_combine_error_numba_cuda(y, ks, b, e, h, y_new, compute_new, atol, rtol):
    xp = get_namespace(y)
    threads = _RK_COMBINE_ERROR.threads
    grid, part_sum, part_max = _row_partials(xp, y.shape[0], y.shape[1], threads)
    _RK_COMBINE_ERROR[grid, threads](y, ks, b, e, h, y_new, bool(compute_new), float(atol), float(rtol),
                                     part_sum, part_max)
    return (y_new,) + _finish(xp, part_sum, part_max)


def adams_predict_numba_cuda(y, f0, f1, f2, h, h1, h2):
    out = get_namespace(y).empty(y.shape, dtype=y.dtype)
    _ADAMS_PREDICT[launch_config(y.size, _ADAMS_PREDICT.threads)](y, f0, f1, f2, h, h1, h2, out)
    return out


def adams_correct_error_numba_cuda(y, y_pred, f_pred, f0, f1, f2, h, h1, h2, y_new, corrector, atol, rtol):
    xp = get_namespace(y)
    threads = _ADAMS_CORRECT_ERROR.threads
    grid, part_sum, part_max = _row_partials(xp, y.shape[0], y.shape[1], threads)
    _ADAMS_CORRECT_ERROR[grid, threads](y, y_pred, f_pred, f0, f1, f2, h, h1, h2, y_new, bool(corrector),
                                        float(atol), float(rtol), part_sum, part_max)
    return (y_new,) + _finish(xp, part_sum, part_max)


def ode_control_numba_cuda(err_sq, y_absmax, res, threshold, exponent, t, h, h_next, err_prev, after_reject,
                           active, codes, accepted, rejected, nfev_rows, ok, summary, m, t_end, direction, steady,
                           big, eps, nfev):
    summary[...] = 0
    _ODE_CONTROL[launch_config(err_sq.shape[0], _ODE_CONTROL.threads)](
        err_sq, y_absmax, res, threshold, exponent, t, h, h_next, err_prev, after_reject, active, codes,
        accepted, rejected, nfev_rows, ok, summary, int(m), float(t_end), float(direction), bool(steady),
        float(big), float(eps), int(nfev))
    return t, h_next, err_prev, after_reject, active, codes, accepted, rejected, nfev_rows, ok, summary
