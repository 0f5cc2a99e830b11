"""Numba CPU and CUDA versions of the driver's fused kernels (loaded lazily through the kernel registry)."""

from __future__ import annotations

import numpy as np

from ..backend.numba_tools import CACHE, numba
from numba import types  # noqa: E402  (after numba_tools has set the cache folder)
from numba.extending import intrinsic  # noqa: E402
from numba import cuda  # noqa: E402  (after numba_tools has set the cache folder)
from ..backend.cuda_blocks import block_reduce2, for_kernels  # noqa: E402
from ..backend.launch import cuda_kernel  # noqa: E402

__all__ = ["absmax_nan", "driver_update_numba_cpu", "driver_update_numba_cuda", "driver_update_cuda_kernel",
           "start_tolerance_numba_cpu", "start_point_numba_cpu", "all_finite_numba_cpu"]

from .driver_kernels import DIVERGED, STALLED, SUCCESS  # noqa: E402

NO_CODE = -1

THREADS = 128


@numba.njit(inline="always")
def absmax_nan(current, value):
    """max(current, |value|), where a NaN anywhere makes the result +inf (shared by CPU and CUDA)."""
    if value != value or current == np.inf:
        return np.inf
    a = abs(value)
    return a if a > current else current


@numba.njit(inline="always")
def _row_absmax_bits(f_bits, y_bits, skip, magnitude, inf_bits, out_f, out_y):
    """Max-norms of the rows not ``skip``-ped, on the floats' bit patterns: with the sign bit cleared,
    non-negative floats order like integers, and every NaN pattern lies above +inf's — so an integer max (which
    vectorises, unlike a NaN-aware float max) gives the norm, with NaN clamped to +inf."""
    for i in range(f_bits.shape[0]):
        if skip[i]:
            continue
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


@numba.njit(inline="always")
def block_row_absmax(f, y, row, shared_f, shared_y):
    """(max|f[row]|, max|y[row]|) over a CUDA block, NaN as +inf (the partial maxima hold no NaN, so a plain
    maximum combines them)."""
    mf, my = 0.0, 0.0
    for j in range(cuda.threadIdx.x, f.shape[1], cuda.blockDim.x):
        mf = absmax_nan(mf, f[row, j])
        my = absmax_nan(my, y[row, j])
    return _block_reduce2(shared_f, shared_y, mf, my, True, True)


_block_reduce2, = for_kernels(block_reduce2)
_block_row_absmax, = for_kernels(block_row_absmax)


# -- the driver's per-step bookkeeping --------------------------------------------------------------------------
@numba.njit(inline="always")
def driver_decision(res, y_norm, best, since, tol, rtol, cap, y_limit, limit, patience):
    """One live row: (improved, steps since the best residual, return code or NO_CODE).

    An iterate that is non-finite or reaches ``y_limit`` diverges; a residual within tol + rtol·min(max|y|, cap)
    converges and always counts as improved (the returned value of a SUCCESS is the iterate that passed)."""
    bounded = y_norm < y_limit
    converged = bounded and res <= tol + rtol * min(y_norm, cap)
    improved = bounded and (res < best or converged)
    since = 0 if improved else since + 1
    if converged:
        code = SUCCESS
    elif not bounded or not (res < limit):
        code = DIVERGED
    elif since >= patience:
        code = STALLED
    else:
        code = NO_CODE
    return improved, since, code


@numba.njit(cache=CACHE)
def _driver_update_loop(f_bits, y_bits, magnitude, inf_bits, norm_bits, norms, y, best_y, best_res, since_best,
                        codes, done, tol, rtol, cap, y_limit, limit, patience):
    """The whole CPU update in one call: the live rows' norms on bit patterns into ``norm_bits`` (2, B), read
    back as floats through ``norms`` (the same memory viewed as the float dtype), then the scalar bookkeeping
    per row."""
    _row_absmax_bits(f_bits, y_bits, done, magnitude, inf_bits, norm_bits[0], norm_bits[1])
    for i in range(y.shape[0]):
        if done[i]:
            continue
        res = norms[0, i]
        improved, since, code = driver_decision(res, norms[1, i], best_res[i], since_best[i], tol[i], rtol, cap[i],
                                                y_limit[i], limit[i], patience)
        since_best[i] = since
        if improved:
            best_res[i] = res
            best_y[i, :] = y[i, :]
        if code != NO_CODE:
            codes[i] = code
            done[i] = True


def driver_update_numba_cpu(f, y, best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit, patience):
    """Norms of the live rows on bit patterns (vectorised), then the scalar bookkeeping per row, in one call."""
    f, y = np.ascontiguousarray(f), np.ascontiguousarray(y)
    itype, magnitude, inf_bits = _BITS[f.dtype]
    norm_bits = np.empty((2, f.shape[0]), dtype=itype)
    _driver_update_loop(f.view(itype), y.view(itype), magnitude, inf_bits, norm_bits, norm_bits.view(f.dtype), y,
                        best_y, best_res, since_best, codes, done, tol, float(rtol), cap, y_limit, limit,
                        int(patience))
    return best_y, best_res, since_best, codes, done


_decision_cuda, = for_kernels(driver_decision)


def driver_update_cuda_kernel(f, y, best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit,
                              patience):
    """One block per row: a shared-memory max-reduction of both norms, thread 0 decides, then the block copies
    the row into ``best_y`` if it improved. Rows already done return at once."""
    row = cuda.blockIdx.x
    if done[row]:
        return
    tid = cuda.threadIdx.x
    shared_f = cuda.shared.array(THREADS, numba.float64)
    shared_y = cuda.shared.array(THREADS, numba.float64)
    copy_row = cuda.shared.array(1, numba.int32)
    res, y_norm = _block_row_absmax(f, y, row, shared_f, shared_y)
    if tid == 0:
        improved, since, code = _decision_cuda(res, y_norm, best_res[row], since_best[row], tol[row], rtol, cap[row],
                                               y_limit[row], limit[row], patience)
        since_best[row] = since
        copy_row[0] = 0
        if improved:
            best_res[row] = res
            copy_row[0] = 1
        if code != NO_CODE:
            codes[row] = code
            done[row] = True
    cuda.syncthreads()
    if copy_row[0] == 1:
        for j in range(tid, f.shape[1], cuda.blockDim.x):
            best_y[row, j] = y[row, j]


_DRIVER_UPDATE = cuda_kernel(driver_update_cuda_kernel, threads=THREADS)


def driver_update_numba_cuda(f, y, best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit,
                             patience):
    _DRIVER_UPDATE[f.shape[0], _DRIVER_UPDATE.threads](f, y, best_y, best_res, since_best, codes, done, tol,
                                                       float(rtol), cap, y_limit, limit, int(patience))
    return best_y, best_res, since_best, codes, done


@numba.njit(inline="always")
def _row_scale(i, y0, f0, y0_bits, f0_bits, work, work_bits, magnitude, inf_bits, scale_bits, scale,
               relative_to_iterate, root_eps, cap, y_limit):
    """Row i's start scale ``cap[i]`` and runaway limit ``y_limit[i]`` (see :func:`_start_tolerance`)."""
    n = y0.shape[1]
    m = 0
    if relative_to_iterate:
        for j in range(n):
            work[j] = y0[i, j] + f0[i, j]
        for j in range(n):
            a = y0_bits[i, j] & magnitude
            b = work_bits[j] & magnitude
            m = a if a > m else m
            m = b if b > m else m
    else:
        for j in range(n):
            a = f0_bits[i, j] & magnitude
            m = a if a > m else m
    scale_bits[0] = 0 if m >= inf_bits else m
    cap[i] = scale[0]
    if relative_to_iterate:
        y_limit[i] = np.float64(cap[i]) / root_eps if cap[i] > 0 else np.inf
    else:
        y_limit[i] = np.inf


@numba.njit(cache=CACHE)
def _start_tolerance(y0, f0, y0_bits, f0_bits, work, work_bits, magnitude, inf_bits, scale_bits, scale,
                     relative_to_iterate, root_eps, cap, y_limit):
    """Row by row, as :func:`~deqcore.root.driver_kernels.start_tolerance_reference` computes it: the maxima of
    |y0|, |y0 + f0| (rounded to the arrays' dtype, in ``work``) or |f0| on the floats' bit patterns (an integer
    max, which vectorises; NaN patterns lie above +inf's), and a non-finite scale (NaN or inf) counts as 0."""
    for i in range(y0.shape[0]):
        _row_scale(i, y0, f0, y0_bits, f0_bits, work, work_bits, magnitude, inf_bits, scale_bits, scale,
                   relative_to_iterate, root_eps, cap, y_limit)


def start_tolerance_numba_cpu(y0, f0, atol, relative_to_iterate, eps):
    """One compiled pass over y0 and f0 instead of about a dozen array operations (the reference's results)."""
    batch, dtype = y0.shape[0], y0.dtype
    itype, magnitude, inf_bits = _BITS[dtype]
    y0, f0 = np.ascontiguousarray(y0), np.ascontiguousarray(f0)
    tol, cap, y_limit = np.full(batch, atol, dtype=dtype), np.empty(batch, dtype), np.empty(batch, dtype)
    work, scale_bits = np.empty(y0.shape[1], dtype), np.empty(1, itype)
    _start_tolerance(y0, f0, y0.view(itype), f0.view(itype), work, work.view(itype), magnitude, inf_bits, scale_bits,
                     scale_bits.view(dtype), bool(relative_to_iterate), float(np.sqrt(eps)), cap, y_limit)
    return tol, cap, y_limit


@numba.njit(cache=CACHE)
def _all_finite(bits, inf_bits, magnitude):
    """No pattern of NaN or ±inf in ``bits`` (a float array's bit patterns, flat): an integer max, which
    vectorises and allocates nothing."""
    m = 0
    for j in range(bits.shape[0]):
        a = bits[j] & magnitude
        m = a if a > m else m
    return m < inf_bits


def all_finite_numba_cpu(x):
    """``bool(np.isfinite(x).all())`` for a float32/float64 NumPy array in one compiled pass, without the
    boolean temporary (other arrays: NumPy's test)."""
    entry = _BITS.get(x.dtype)
    if entry is None or not x.flags.c_contiguous:
        return bool(np.isfinite(x).all())
    itype, magnitude, inf_bits = entry
    return bool(_all_finite(x.reshape(-1).view(itype), inf_bits, magnitude))


def _int_of(value):
    return types.int32 if value.bitwidth == 32 else types.int64


@intrinsic
def _magnitude_bits(typingctx, value):
    """|value|'s bit pattern (sign bit cleared) as the signed integer of its size, without a pass through memory:
    non-negative floats order like these integers, and every NaN pattern lies above +inf's. Staying in the
    float's width keeps a float32 maximum at 8 lanes (Numba's integer arithmetic would widen it to int64)."""
    itype = _int_of(value)

    def codegen(context, builder, signature, args):
        bits = builder.bitcast(args[0], context.get_value_type(itype))
        return builder.and_(bits, context.get_constant(itype, (1 << (itype.bitwidth - 1)) - 1))
    return itype(value), codegen


@intrinsic
def _float_of_bits(typingctx, bits, like):
    """The float of ``like``'s type whose bit pattern is ``bits`` (an integer of its size)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(like))
    return like(bits, like), codegen


@numba.njit(cache=CACHE)
def _start_point(y0, raw0, is_map, f0, test, atol, relative_to_iterate, root_eps, inf_bits, zero):
    """Row by row: f0 = raw0 − y0 (a fixed-point map's evaluation) or raw0, then the row's test in ``test``
    (tol, cap, y_limit): the maxima of |y0| and |y0 + f0| (rounded to the arrays' dtype) or of |f0| on the floats'
    bit patterns (two running maxima, each one vectorised reduction), a non-finite scale (NaN or inf) counting
    as 0, as :func:`~deqcore.root.driver_kernels.start_tolerance_reference` computes it."""
    batch, n = y0.shape
    tol, cap, y_limit = test[0], test[1], test[2]
    for i in range(batch):
        if is_map:
            for j in range(n):
                f0[i, j] = raw0[i, j] - y0[i, j]
        else:
            for j in range(n):
                f0[i, j] = raw0[i, j]
        m = _magnitude_bits(zero)
        if relative_to_iterate:
            m_map = m
            for j in range(n):
                y = y0[i, j]
                a = _magnitude_bits(y)
                b = _magnitude_bits(y + f0[i, j])
                m = a if a > m else m
                m_map = b if b > m_map else m_map
            m = m_map if m_map > m else m
        else:
            for j in range(n):
                a = _magnitude_bits(f0[i, j])
                m = a if a > m else m
        tol[i] = atol
        cap[i] = zero if m >= inf_bits else _float_of_bits(m, zero)
        if relative_to_iterate:
            y_limit[i] = np.float64(cap[i]) / root_eps if cap[i] > 0 else np.inf
        else:
            y_limit[i] = np.inf


def start_point_numba_cpu(y0, raw0, is_map, atol, relative_to_iterate, eps):
    """:func:`~deqcore.root.driver_kernels.start_point_reference` in one compiled pass over y0 and the start's
    evaluation (the residual and the per-sample test together; one allocation for the three test vectors)."""
    dtype = y0.dtype
    if not y0.flags.c_contiguous:
        y0 = np.ascontiguousarray(y0)
    if not raw0.flags.c_contiguous:
        raw0 = np.ascontiguousarray(raw0)
    f0 = np.empty_like(y0)
    test = np.empty((3, y0.shape[0]), dtype)
    _start_point(y0, raw0, bool(is_map), f0, test, float(atol), bool(relative_to_iterate), _root(eps),
                 _BITS[dtype][2], _ZERO[dtype])
    return f0, test[0], test[1], test[2]


_ZERO = {dtype: dtype.type(0) for dtype in _BITS}   # (``zero``: the arrays' dtype, known to the kernel)
_ROOTS: dict = {}


def _root(eps):
    """√eps as a Python float (NumPy's sqrt of a scalar costs microseconds; one entry per dtype)."""
    root = _ROOTS.get(eps)
    if root is None:
        root = _ROOTS[eps] = float(np.sqrt(eps))
    return root
