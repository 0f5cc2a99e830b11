"""The compiled part of :mod:`deqcore.ode.radau_loop`: Radau's step loop for one small dense float64 system
as a state machine, :func:`radau_run`, which serves its own requests (f at the stages or at a point, a
Jacobian or its columns) through a ctypes callback. Kept apart from the Python that serves the requests,
so that editing that Python leaves the compiled code cached on disk valid.

The state lives in a few flat arrays (integers ``ist``, floats ``fw`` with the buffers laid out by
:func:`layout`, the complex factors, the pivots, the record of accepted steps), so that a call unboxes five
arguments.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend.numba_tools import CACHE, numba
from ..results import ReturnCode
from ..linalg.finite_diff import _fd_columns, _fd_factors
from .kernels_host import (BAD_F, CONVERGED, RADAU_GEMV, _combine, radau_error, radau_extrapolation, radau_factor,
                           radau_newton, radau_start)

__all__ = ["radau_run", "layout"]

from .loop_callback import (SERVED, call_back as _call_back, control_with_proposal as _control,
                            fd_increments as _increments, fd_perturbed as _perturbed)

_MAX_STEPS = int(ReturnCode.MAX_STEPS)
_LINEAR_SOLVE_FAILED = int(ReturnCode.LINEAR_SOLVE_FAILED)

# requests (what radau_run asks the callback for; DONE and GROW: what it returns)
DONE, STAGES, F_BASE, F_ERR, F_NEW, JAC, GROW, FD_COLS = range(8)

# integer state (ist)
(I_PHASE, I_N, I_KMAX, I_JAC_KEEP_ITER, I_AUTONOMOUS, I_USER_JAC, I_STEADY, I_RECORD, I_MAX_STEPS,
 I_NUM_STEPS, I_ACCEPTED, I_REJECTED, I_CODE, I_ACTIVE, I_AFTER_REJECT, I_HAVE_JAC, I_NEED_JAC, I_JAC_FRESH,
 I_JAC_FINITE, I_LU_VALID, I_F_EXACT, I_HAVE_ZPREV, I_FIRST, I_LAST_REJECTED, I_HAVE_ACC, I_K, I_NITER,
 I_REC_COUNT, I_REC_CAP, I_NLINSOLVE, I_NFACTOR, I_NFAILED_SOLVES, I_NNEWTON_FAIL, I_TRIAL_CODE, I_KEEP_JAC,
 I_HAVE_M, I_HAVE_FD, I_NJEV_FD, I_NFEV_JAC, I_ADDR) = range(40)
# after the 7 LAPACK/BLAS addresses: the last stage point of the step that ended at the current state is held
# (y_stage, f_stage), and the finite-difference Jacobian being formed takes it as its base point
I_HAVE_STAGE, I_FD_STAGE, I_TRY_OK = I_ADDR + 7, I_ADDR + 8, I_ADDR + 9
I_SIZE = I_ADDR + 10

# float scalars at the head of the float state (fw)
(F_T, F_H, F_ERR_PREV, F_T_END, F_DIRECTION, F_BIG, F_THRESHOLD, F_TEPS, F_RTOL, F_NEWTON_TOL, F_NEWTON_FACTOR,
 F_JAC_RATE, F_SAFETY, F_MIN_FACTOR, F_MAX_FACTOR, F_KEEP_LOW, F_KEEP_HIGH, F_GAMMA, F_MU_RE, F_MU_IM, F_FACCON,
 F_LU_H, F_H_PREV, F_H_ACC, F_ERR_ACC, F_M_RATIO, F_T_ARG, F_H_ARG, F_ERRV, F_THETA, F_TOP, F_H_NEXT, F_ERR_SQ,
 F_RES, F_EXPONENT, F_EPS, F_LOST_BELOW, F_GROW, F_FD_START, F_RATE) = range(40)
F_RATE_TARGET, F_RATE_MIN_FACTOR = F_RATE + 4, F_RATE + 5
F_HEAD = F_RATE + 6

# phases of the state machine
P_ATTEMPT, P_AFTER_F_BASE, P_AFTER_JAC, P_NEWTON, P_AFTER_F_ERR, P_AFTER_F_NEW, P_CONTROL, P_FD1, P_FD2 = range(9)
P_FD_START, P_FD_FINISH = 200, 201
P_ERROR = 202         # the error estimate after Newton converged (internal)

# buffers in fw after the head: name -> size in units of n (or fixed)
_VECTORS = ("y", "f", "y_new", "f_new", "scale", "ez", "err_vec", "y_err", "f_err", "atol")
_STAGES = ("Z", "W", "Y", "F", "Z_prev")
# the finite-difference Jacobian's buffers (after the small matrices)
_FD_VECTORS = ("fd_factor", "fd_factor2", "fd_h", "fd_h2", "fd_big", "fd_scale", "fd_lost", "fd_cols", "fd_fabs")
_FD_MATRICES = ("fd_YP", "fd_FP", "fd_D")
# after them: (Y₃, f(t + h, Y₃)) of the last Newton iteration, of the attempt (try) and of the accepted step
_STAGE_POINT = ("y_try", "f_try", "y_stage", "f_stage")


def layout(n: int) -> dict:
    """Offsets of the buffers in the float state (name -> (start, stop))."""
    out, at = {}, F_HEAD
    for name in _VECTORS:
        out[name] = (at, at + n)
        at += n
    for name in _STAGES:
        out[name] = (at, at + 3 * n)
        at += 3 * n
    for name, size in (("J", n * n), ("lu_r", n * n), ("M", 9), ("T", 9), ("T_inv", 9), ("e", 3), ("c", 3),
                       ("a_last", 3), ("dense", 9)) + tuple((name, n) for name in _FD_VECTORS) + \
            tuple((name, n * n) for name in _FD_MATRICES) + tuple((name, n) for name in _STAGE_POINT):
        out[name] = (at, at + size)
        at += size
    out["size"] = (at, at)
    return out


@numba.njit
def _reject(ist, fw, n, h_next, err_sq):
    """:meth:`RadauStepper._reject` after the error test: the trial of a rejected attempt (state unchanged),
    code 0 (a caller sets another after it). Numba compiles a function once per distinct constant argument
    (flags, codes, buffer indices): the helpers here take none."""
    ist[I_LAST_REJECTED] = 1
    y = fw[F_HEAD:F_HEAD + n]
    top = 0.0
    for q in range(n):
        a = abs(y[q])
        if a > top or a != a:
            top = a
    fw[F_TOP] = top
    fw[F_H_NEXT] = h_next
    fw[F_ERR_SQ] = err_sq
    ist[I_TRIAL_CODE] = 0
    ist[I_KEEP_JAC] = -1            # no pending accepted step
    ist[I_PHASE] = P_CONTROL


@numba.njit
def _reject_newton(ist, fw, n, h_next):
    """:meth:`RadauStepper._reject` with ``newton=True``: a failed Newton iteration, a matrix that could not be
    factored or a new point f cannot continue from; a new J unless the current one is fresh."""
    if ist[I_JAC_FRESH] == 0:
        ist[I_NEED_JAC] = 1
    _reject(ist, fw, n, h_next, math.inf)


@numba.njit(cache=CACHE)
def radau_run(ist, fw, lu_c_flat, piv, rec, callback):
    """Run the solve, serving its evaluation and Jacobian requests through ``callback`` (the address of a
    :data:`~deqcore.ode.loop_callback.CALLBACK`), until it ends (DONE), the record is full (GROW) or the
    callback fails (``-RAISED`` or ``-HAND_BACK``); returns which. The state lives in ``ist``/``fw`` (see the
    module docstring): a call after GROW or a served request continues where the last one stopped.
    ``lu_c_flat`` holds the complex LU column-major, flat: an (n, n) array with n = 1 is C- and F-contiguous
    at once and would be compiled a second time. One function: a compiled callee is optimised again inside
    each caller, so a separate state machine called by a serving loop cost its compilation twice."""
    n = ist[I_N]
    lu_c = lu_c_flat.reshape((n, n)).T
    addresses = ist[I_ADDR:I_ADDR + 7]
    piv_r = piv[:n]
    piv_c = piv[n:]
    lu_r = fw[F_HEAD + 25 * n + n * n:F_HEAD + 25 * n + 2 * n * n].reshape((n, n)).T
    J = fw[F_HEAD + 25 * n:F_HEAD + 25 * n + n * n].reshape((n, n))
    # the buffers of layout(n), as views (slices here: a helper taking the index would compile once per index)
    vb = F_HEAD
    y = fw[vb + 0 * n:vb + 1 * n]
    f = fw[vb + 1 * n:vb + 2 * n]
    y_new = fw[vb + 2 * n:vb + 3 * n]
    f_new = fw[vb + 3 * n:vb + 4 * n]
    scale = fw[vb + 4 * n:vb + 5 * n]
    ez = fw[vb + 5 * n:vb + 6 * n]
    err_vec = fw[vb + 6 * n:vb + 7 * n]
    y_err = fw[vb + 7 * n:vb + 8 * n]
    f_err = fw[vb + 8 * n:vb + 9 * n]
    atol = fw[vb + 9 * n:vb + 10 * n]
    sb = F_HEAD + 10 * n
    Z = fw[sb + 0 * n:sb + 3 * n].reshape((3, n))
    W = fw[sb + 3 * n:sb + 6 * n].reshape((3, n))
    Y = fw[sb + 6 * n:sb + 9 * n].reshape((3, n))
    F = fw[sb + 9 * n:sb + 12 * n].reshape((3, n))
    Z_prev = fw[sb + 12 * n:sb + 15 * n].reshape((3, n))
    mb = F_HEAD + 25 * n + 2 * n * n       # after J and lu_r: M, T, T_inv (9 each), e, c, a_last (3 each), dense
    M_flat = fw[mb:mb + 9]
    M = M_flat.reshape((3, 3))
    T = fw[mb + 9:mb + 18].reshape((3, 3))
    T_inv = fw[mb + 18:mb + 27].reshape((3, 3))
    e = fw[mb + 27:mb + 30]
    c = fw[mb + 30:mb + 33]
    a_last = fw[mb + 33:mb + 36]
    dense = fw[mb + 36:mb + 45]
    rate = fw[F_RATE:F_RATE + 4]
    fdb = F_HEAD + 25 * n + 2 * n * n + 45
    fd_factor = fw[fdb:fdb + n]
    fd_factor2 = fw[fdb + n:fdb + 2 * n]
    fd_h = fw[fdb + 2 * n:fdb + 3 * n]
    fd_h2 = fw[fdb + 3 * n:fdb + 4 * n]
    fd_big = fw[fdb + 4 * n:fdb + 5 * n]
    fd_scale = fw[fdb + 5 * n:fdb + 6 * n]
    fd_lost = fw[fdb + 6 * n:fdb + 7 * n]
    fd_cols = fw[fdb + 7 * n:fdb + 8 * n]
    fd_fabs = fw[fdb + 8 * n:fdb + 9 * n]
    fdm = fdb + 9 * n
    YP = fw[fdm:fdm + n * n].reshape((n, n))
    FP = fw[fdm + n * n:fdm + 2 * n * n].reshape((n, n))
    D = fw[fdm + 2 * n * n:fdm + 3 * n * n].reshape((n, n))
    spb = fdm + 3 * n * n
    y_try = fw[spb:spb + n]
    f_try = fw[spb + n:spb + 2 * n]
    y_stage = fw[spb + 2 * n:spb + 3 * n]
    f_stage = fw[spb + 3 * n:spb + 4 * n]
    k_max = ist[I_KMAX]
    eps = fw[F_EPS]
    while True:
        phase = ist[I_PHASE]
        if phase == P_ATTEMPT:
            if ist[I_ACTIVE] == 0:
                return DONE
            if ist[I_NUM_STEPS] >= ist[I_MAX_STEPS]:
                ist[I_CODE] = _MAX_STEPS
                ist[I_ACTIVE] = 0
                return DONE
            t = fw[F_T]
            h = fw[F_DIRECTION] * fw[F_H]
            fw[F_T_ARG] = t
            fw[F_H_ARG] = h
            if ist[I_NEED_JAC] != 0 or ist[I_HAVE_JAC] == 0:
                ist[I_FD_STAGE] = 0
                if ist[I_USER_JAC] == 0 and ist[I_F_EXACT] == 0:
                    if ist[I_HAVE_STAGE] != 0:     # finite differences around the last stage point
                        ist[I_FD_STAGE] = 1
                        phase = P_FD_START
                    else:
                        ist[I_PHASE] = P_AFTER_F_BASE
                        status = _call_back(callback, F_BASE, t, 0.0, 0.0)
                        if status != SERVED:
                            return -status
                        continue
                if ist[I_USER_JAC] != 0:
                    ist[I_PHASE] = P_AFTER_JAC
                    status = _call_back(callback, JAC, t, 0.0, 0.0)
                    if status != SERVED:
                        return -status
                    continue
                phase = P_FD_START
            else:
                phase = P_AFTER_JAC + 100      # factor and start Newton
        elif phase == P_AFTER_F_BASE:
            ist[I_F_EXACT] = 1
            phase = P_FD_START
        elif phase == P_FD1 or phase == P_FD2:
            # FiniteDiffJacobian._dense_one: the columns' differences, quotients and lost columns
            first = phase == P_FD1
            fb = f_stage if ist[I_FD_STAGE] != 0 else f
            yb = y_stage if ist[I_FD_STAGE] != 0 else y
            for j in range(n):
                if fd_cols[j] != 0.0:
                    ist[I_NFEV_JAC] += 1
                    for i in range(n):
                        D[i, j] = FP[j, i] - fb[i]
            lost = np.empty(n, dtype=np.bool_)
            for j in range(n):
                lost[j] = fd_lost[j] != 0.0
            any_lost = _fd_columns(D, fd_h if first else fd_h2, fd_fabs, fw[F_LOST_BELOW], J, fd_big, fd_scale,
                                   lost, first)
            for j in range(n):
                fd_lost[j] = 1.0 if lost[j] else 0.0
            if first and any_lost:
                # columns lost in rounding: once more with a 10x larger increment
                for j in range(n):
                    fd_factor2[j] = fd_factor[j] * fw[F_GROW] if lost[j] else fd_factor[j]
                    fd_cols[j] = fd_lost[j]
                _increments(yb, atol, fd_factor2, fd_h2)
                _perturbed(yb, fd_h2, fd_cols, YP)
                ist[I_PHASE] = P_FD2
                status = _call_back(callback, FD_COLS, fw[F_T_ARG], 0.0, 0.0)
                if status != SERVED:
                    return -status
                continue
            if first:
                for j in range(n):
                    fd_factor2[j] = fd_factor[j]
            new = _fd_factors(fd_factor2.reshape((1, n)), fd_big, fd_scale, eps)
            for j in range(n):
                fd_factor[j] = new[0, j]
            ist[I_NJEV_FD] += 1
            ist[I_PHASE] = P_AFTER_JAC
            continue
        if phase == P_FD_START:
            if ist[I_HAVE_FD] == 0:
                for j in range(n):
                    fd_factor[j] = fw[F_FD_START]
                ist[I_HAVE_FD] = 1
            fb = f_stage if ist[I_FD_STAGE] != 0 else f
            yb = y_stage if ist[I_FD_STAGE] != 0 else y
            for j in range(n):
                fd_cols[j] = 1.0
                fd_lost[j] = 0.0
                fd_fabs[j] = abs(fb[j])
            _increments(yb, atol, fd_factor, fd_h)
            _perturbed(yb, fd_h, fd_cols, YP)
            ist[I_PHASE] = P_FD1
            status = _call_back(callback, FD_COLS, fw[F_T_ARG], 0.0, 0.0)
            if status != SERVED:
                return -status
            continue
        if phase == P_AFTER_JAC:
            ist[I_HAVE_JAC] = 1
            ist[I_JAC_FRESH] = 1
            ist[I_NEED_JAC] = 0
            ist[I_LU_VALID] = 0
            finite = 1
            for i in range(n):
                for j in range(n):
                    if not math.isfinite(J[i, j]):
                        finite = 0
            ist[I_JAC_FINITE] = finite
            phase = P_AFTER_JAC + 100
        if phase == P_AFTER_JAC + 100:
            # factor when needed, then the Newton start and its first stage evaluations
            t = fw[F_T_ARG]
            h = fw[F_H_ARG]
            if ist[I_LU_VALID] == 0 or fw[F_LU_H] != h:
                ist[I_NFACTOR] += 1
                ok = False
                if ist[I_JAC_FINITE] != 0:
                    ok = not radau_factor(addresses, J, fw[F_GAMMA] / h, fw[F_MU_RE] / h, fw[F_MU_IM] / h,
                                          lu_r, piv_r, lu_c, piv_c)
                ist[I_LU_VALID] = 1 if ok else 0
                fw[F_LU_H] = h
            if ist[I_LU_VALID] == 0:
                ist[I_NFAILED_SOLVES] += 1
                _reject_newton(ist, fw, n, 0.5 * abs(h))
                ist[I_TRIAL_CODE] = _LINEAR_SOLVE_FAILED
                continue
            if ist[I_HAVE_ZPREV] != 0:
                ratio = h / fw[F_H_PREV]
                if ist[I_HAVE_M] == 0 or fw[F_M_RATIO] != ratio:
                    radau_extrapolation(ratio, c, dense, M_flat)
                    fw[F_M_RATIO] = ratio
                    ist[I_HAVE_M] = 1
                radau_start(addresses, M, Z_prev, T_inv, y, atol, fw[F_RTOL], Z, W, Y, scale)
            else:
                radau_start(addresses, T, Z_prev[:0], T_inv, y, atol, fw[F_RTOL], Z, W, Y, scale)
            rate[0] = 1.0
            rate[1] = 1.0
            rate[2] = fw[F_JAC_RATE]
            rate[3] = max(fw[F_FACCON], eps) ** 0.8
            ist[I_K] = 1
            ist[I_PHASE] = P_NEWTON
            status = _call_back(callback, STAGES, t + c[0] * h, t + c[1] * h, t + c[2] * h)
            if status != SERVED:
                return -status
            continue
        elif phase == P_NEWTON:
            t = fw[F_T_ARG]
            h = fw[F_H_ARG]
            k = ist[I_K]
            tol_fail = fw[F_NEWTON_TOL]
            for q in range(n):
                y_try[q] = Y[2, q]          # the stage point f was just evaluated at (Y is overwritten)
            status, factor = radau_newton(addresses, F, T, T_inv, fw[F_GAMMA] / h, fw[F_MU_RE] / h,
                                          fw[F_MU_IM] / h, lu_r, piv_r, lu_c, piv_c, scale, y, W, Z, Y, rate, k,
                                          k_max, tol_fail * fw[F_NEWTON_FACTOR], tol_fail)
            if status != BAD_F:
                ist[I_NLINSOLVE] += 2
            h_fail = 0.0
            converged = False
            failed = False
            if status == CONVERGED:
                converged = True
                for q in range(n):
                    f_try[q] = F[2, q]
                # the stage point serves as a Jacobian's base only when Newton's last correction was small
                ist[I_TRY_OK] = 1 if rate[0] <= tol_fail else 0
            elif status != 0:
                failed = True
                h_fail = factor * abs(h)
            elif k == k_max:
                failed = True
                h_fail = 0.5 * abs(h)
            if not (converged or failed):
                ist[I_K] = k + 1
                status = _call_back(callback, STAGES, t + c[0] * h, t + c[1] * h, t + c[2] * h)
                if status != SERVED:
                    return -status
                continue
            fw[F_FACCON] = rate[3]
            fw[F_THETA] = rate[2]
            ist[I_NITER] = k
            if failed:
                ist[I_NNEWTON_FAIL] += 1
                _reject_newton(ist, fw, n, h_fail)
                continue
            phase = P_ERROR
        elif phase == P_AFTER_F_NEW:
            ist[I_F_EXACT] = 1
            phase = P_AFTER_F_NEW + 100
        if phase == P_ERROR or phase == P_AFTER_F_ERR:
            # the filtered error estimate, or (after F_ERR) the re-filtered one: one call site with a run-time
            # flag, so that radau_error is compiled once (a literal True/False compiles it twice)
            refilter = phase == P_AFTER_F_ERR
            err, top = radau_error(addresses, not refilter, f_err if refilter else f, Z, e, fw[F_H_ARG], lu_r,
                                   piv_r, y, atol, fw[F_RTOL], y_new, scale, ez, err_vec)
            ist[I_NLINSOLVE] += 1
            fw[F_ERRV] = err
            fw[F_TOP] = top
            if not refilter and not err < 1.0 and (ist[I_FIRST] != 0 or ist[I_LAST_REJECTED] != 0) \
                    and math.isfinite(err):
                for q in range(n):
                    y_err[q] = y[q] + err_vec[q]
                ist[I_PHASE] = P_AFTER_F_ERR
                status = _call_back(callback, F_ERR, fw[F_T_ARG], 0.0, 0.0)
                if status != SERVED:
                    return -status
                continue
            phase = P_AFTER_F_ERR + 100
        if phase == P_AFTER_F_ERR + 100:
            # RadauStepper._decide
            t = fw[F_T_ARG]
            h = fw[F_H_ARG]
            err = fw[F_ERRV]
            if not math.isfinite(err):
                _reject_newton(ist, fw, n, 0.5 * abs(h))
                continue
            err = max(err, 1e-10)
            fw[F_ERRV] = err
            safety = fw[F_SAFETY]
            fac = min(safety, safety * (2 * k_max + 1) / (2 * k_max + ist[I_NITER]))
            quot = min(1.0 / fw[F_MIN_FACTOR], max(1.0 / fw[F_MAX_FACTOR], err ** 0.25 / fac))
            h_abs = abs(h)
            if err > 1.0:
                h_next = 0.1 * h_abs if ist[I_FIRST] != 0 else h_abs / quot
                _reject(ist, fw, n, h_next, err * err * n)
                continue
            if ist[I_HAVE_ACC] != 0:
                gus = fw[F_H_ACC] / h_abs * (err * err / fw[F_ERR_ACC]) ** 0.25 / safety
                quot = max(quot, min(1.0 / fw[F_MIN_FACTOR], max(1.0 / fw[F_MAX_FACTOR], gus)))
            h_next = h_abs / quot
            if ist[I_LAST_REJECTED] != 0:
                h_next = min(h_next, h_abs)
            if ist[I_NITER] >= 2:
                h_next = min(h_next, h_abs * max(fw[F_RATE_MIN_FACTOR],
                                                 fw[F_RATE_TARGET] / max(fw[F_THETA], 1e-10)))
            fw[F_H_NEXT] = h_next
            if ist[I_AUTONOMOUS] == 0:
                _combine(addresses[RADAU_GEMV], a_last, Z, f_new)
                for q in range(n):
                    f_new[q] = f_new[q] / h
                ist[I_F_EXACT] = 0
                phase = P_AFTER_F_NEW + 100
            else:
                ist[I_PHASE] = P_AFTER_F_NEW
                status = _call_back(callback, F_NEW, t + h, 0.0, 0.0)
                if status != SERVED:
                    return -status
                continue
        if phase == P_AFTER_F_NEW + 100:
            h = fw[F_H_ARG]
            h_abs = abs(h)
            finite = True
            for q in range(n):
                if not math.isfinite(f_new[q]):
                    finite = False
            if not finite:
                _reject_newton(ist, fw, n, 0.5 * h_abs)
                continue
            h_next = fw[F_H_NEXT]
            keep_jac = fw[F_THETA] <= fw[F_JAC_RATE] or ist[I_NITER] <= ist[I_JAC_KEEP_ITER]
            if keep_jac and fw[F_KEEP_LOW] <= h_next / h_abs <= fw[F_KEEP_HIGH]:
                h_next = h_abs
            fw[F_H_NEXT] = h_next
            err = fw[F_ERRV]
            fw[F_ERR_SQ] = err * err * n
            ist[I_KEEP_JAC] = 1 if keep_jac else 0
            ist[I_TRIAL_CODE] = 0
            ist[I_PHASE] = P_CONTROL
            phase = P_CONTROL
        if phase == P_CONTROL:
            # the driver: step control of the row (_HostRow.control), then record and accept
            accepted_trial = ist[I_KEEP_JAC] >= 0
            if ist[I_RECORD] != 0 and ist[I_REC_COUNT] >= ist[I_REC_CAP]:
                return GROW
            ist[I_NUM_STEPS] += 1
            res = fw[F_THRESHOLD]
            if ist[I_STEADY] != 0:
                src = f_new if accepted_trial else f
                res = 0.0
                for q in range(n):
                    a = abs(src[q])
                    if a > res or a != a:
                        res = a
            t_arg = fw[F_T_ARG]
            err_sq = fw[F_ERR_SQ]
            good, active, code, t_new, h_ctrl, err_prev, after_reject = _control(
                err_sq, fw[F_TOP], res, fw[F_THRESHOLD], fw[F_EXPONENT], fw[F_T], fw[F_H], fw[F_ERR_PREV],
                ist[I_AFTER_REJECT] != 0, n, fw[F_T_END], fw[F_DIRECTION], ist[I_STEADY] != 0, fw[F_BIG],
                fw[F_TEPS], fw[F_H_NEXT], ist[I_TRIAL_CODE])
            fw[F_T] = t_new
            fw[F_ERR_PREV] = err_prev
            ist[I_AFTER_REJECT] = 1 if after_reject else 0
            if good:
                ist[I_ACCEPTED] += 1
            else:
                ist[I_REJECTED] += 1
            if code != 0:
                ist[I_CODE] = code
            fw[F_H] = h_ctrl
            ist[I_ACTIVE] = 1 if active else 0
            if good:
                if ist[I_RECORD] != 0:
                    r = ist[I_REC_COUNT]
                    rec[r, 0] = t_arg
                    rec[r, 1] = t_new
                    for q in range(n):
                        rec[r, 2 + q] = y_new[q] if accepted_trial else y[q]
                        rec[r, 2 + n + q] = f_new[q] if accepted_trial else f[q]
                    for i in range(3):
                        for q in range(n):
                            rec[r, 2 + 2 * n + i * n + q] = Z[i, q]
                    ist[I_REC_COUNT] = r + 1
                if accepted_trial:
                    for q in range(n):
                        y[q] = y_new[q]
                        f[q] = f_new[q]
                    # RadauStepper.accept
                    for i in range(3):
                        for q in range(n):
                            Z_prev[i, q] = Z[i, q]
                    ist[I_HAVE_ZPREV] = 1
                    for q in range(n):
                        y_stage[q] = y_try[q]
                        f_stage[q] = f_try[q]
                    ist[I_HAVE_STAGE] = ist[I_TRY_OK]
                    fw[F_H_PREV] = fw[F_H_ARG]
                    fw[F_H_ACC] = abs(fw[F_H_ARG])
                    fw[F_ERR_ACC] = max(1e-2, fw[F_ERRV])
                    ist[I_HAVE_ACC] = 1
                    ist[I_FIRST] = 0
                    ist[I_LAST_REJECTED] = 0
                    ist[I_JAC_FRESH] = 0
                    ist[I_NEED_JAC] = 0 if ist[I_KEEP_JAC] == 1 else 1
            ist[I_PHASE] = P_ATTEMPT
