"""The compiled part of :mod:`deqcore.ode.bdf_loop`: the driver's loop over
:meth:`BDFStepper.attempt <deqcore.ode.bdf.BDFStepper.attempt>` for one small dense float64 system,
:func:`bdf_run`, which asks Python for f and J through a ctypes callback
(:mod:`deqcore.ode.loop_callback`). Kept apart from the Python that serves the requests, so that editing that
Python leaves the compiled code cached on disk valid.

Between attempts the whole state lives in the arrays handed in (integers ``ist``, floats ``fw``, the
differences, the vectors ``V``, J and its factors, the record of accepted steps), so :func:`bdf_run` can
return when the record is full (:data:`GROW`) and be called again where it stopped.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend.numba_tools import CACHE, numba
from ..linalg.finite_diff import _fd_columns, _fd_factors
from ..results import ReturnCode
from .kernels_host import BAD_F, CONVERGED, FAILED, _factor, bdf_error, bdf_newton, bdf_predict, bdf_rescale, bdf_update
from .loop_callback import SERVED, call_back, control_with_proposal, fd_increments, fd_perturbed

__all__ = ["bdf_run"]

_MAX_STEPS = int(ReturnCode.MAX_STEPS)
_LINEAR_SOLVE_FAILED = int(ReturnCode.LINEAR_SOLVE_FAILED)

# what bdf_run returns (DONE, GROW; minus the callback's status when it failed) and asks for (F_AT: f at
# (t_a, V[YA]) into V[FA]; JAC_AT: the user's J at (t_a, V[YA]) into J; FD_COLS: f at (t_a, YP[j]) into FP[j]
# for the columns j flagged in FD[COLS])
DONE, F_AT, JAC_AT, GROW, FD_COLS = range(5)

# integer state (ist)
(I_N, I_MAX_ORDER, I_NEWTON_MAXITER, I_AUTONOMOUS, I_STEADY, I_RECORD, I_MAX_STEPS, I_NUM_STEPS, I_ACCEPTED,
 I_REJECTED, I_CODE, I_ACTIVE, I_AFTER_REJECT, I_STARTED, I_ORDER, I_N_EQUAL, I_HAVE_J, I_JAC_CURRENT, I_LU_VALID,
 I_Y0_VALID, I_REC_COUNT, I_REC_CAP, I_NLINSOLVE, I_NFACTOR, I_NNEWTON_FAIL, I_NFAILED_SOLVES, I_GETRS,
 I_GETRF, I_USER_JAC, I_HAVE_FD, I_NJEV_FD, I_NFEV_JAC) = range(32)
I_SIZE = 32

# float state (fw)
(F_T, F_H, F_ERR_PREV, F_T_END, F_DIRECTION, F_BIG, F_THRESHOLD, F_TEPS, F_RTOL, F_NEWTON_TOL, F_EPS, F_H_ABS,
 F_LU_C, F_MIN_FACTOR, F_MAX_FACTOR, F_FD_START, F_LOST_BELOW, F_GROW, F_RATE) = range(19)
F_SIZE = 19

# rows of the vectors V (n each)
(Y, F, Y0, F0, Y_PREDICT, PSI, SCALE, WORK, DIFF, Y_NEW, F_NEW, F_PRED, YA, FA, ATOL_FULL) = range(15)
V_ROWS = 15
# rows of the finite-difference state FD (n each): FiniteDiffJacobian._dense_one's factors, increments,
# column scales, lost columns, columns to evaluate, |f|
(FACTOR, FACTOR2, H1, H2, BIG, COL_SCALE, LOST, COLS, F_ABS) = range(9)
FD_ROWS = 9


@numba.njit
def _absmax(x):
    """max|x|, NaN-propagating (``np.max(np.abs(x))``; 0 when empty)."""
    top = 0.0
    for q in range(x.shape[0]):
        a = abs(x[q])
        if a > top or a != a:
            top = a
        if top != top:
            return top
    return top


@numba.njit
def _all_finite(x):
    for q in range(x.shape[0]):
        if not math.isfinite(x[q]):
            return False
    return True


@numba.njit
def _differences(ist, FD, FP, f, M):
    """Column j of ``M`` = FP[j] − f for the columns evaluated (counted as the Jacobian's evaluations)."""
    n = f.shape[0]
    for j in range(n):
        if FD[COLS, j] != 0.0:
            ist[I_NFEV_JAC] += 1
            for i in range(n):
                M[i, j] = FP[j, i] - f[i]


@numba.njit
def _jacobian(ist, fw, t, V, FD, YP, FP, M, J, callback):
    """J at (t, V[YA]) with f = V[FA]: the user's (through the callback) or forward differences around f
    (FiniteDiffJacobian._dense_one for one dense system: the same increments, evaluations, lost-column retry
    and factor update; its compiled helpers), the columns evaluated through the callback. Returns the
    callback's status. (One function, and one call of each helper, with no constant flag: Numba compiles a
    helper once per distinct constant argument, and a compiled callee again inside each caller.)"""
    if ist[I_USER_JAC] != 0:
        return call_back(callback, JAC_AT, t, 0.0, 0.0)
    y = V[YA]
    f = V[FA]
    threshold = V[ATOL_FULL]
    n = y.shape[0]
    if ist[I_HAVE_FD] == 0:
        for j in range(n):
            FD[FACTOR, j] = fw[F_FD_START]
        ist[I_HAVE_FD] = 1
    for j in range(n):
        FD[COLS, j] = 1.0
        FD[F_ABS, j] = abs(f[j])
    lost = np.zeros(n, dtype=np.bool_)
    fd_increments(y, threshold, FD[FACTOR], FD[H1])
    fd_perturbed(y, FD[H1], FD[COLS], YP)
    first = True
    while True:
        status = call_back(callback, FD_COLS, t, 0.0, 0.0)
        if status != SERVED:
            return status
        _differences(ist, FD, FP, f, M)
        any_lost = _fd_columns(M, FD[H1] if first else FD[H2], FD[F_ABS], fw[F_LOST_BELOW], J, FD[BIG],
                               FD[COL_SCALE], lost, first)
        if not (first and any_lost):
            break
        # columns lost in rounding: once more with a larger increment
        for j in range(n):
            FD[FACTOR2, j] = FD[FACTOR, j] * fw[F_GROW] if lost[j] else FD[FACTOR, j]
            FD[COLS, j] = 1.0 if lost[j] else 0.0
        fd_increments(y, threshold, FD[FACTOR2], FD[H2])
        fd_perturbed(y, FD[H2], FD[COLS], YP)
        first = False
    if first:
        for j in range(n):
            FD[FACTOR2, j] = FD[FACTOR, j]
    new = _fd_factors(FD[FACTOR2].reshape((1, n)), FD[BIG], FD[COL_SCALE], fw[F_EPS])
    for j in range(n):
        FD[FACTOR, j] = new[0, j]
    ist[I_NJEV_FD] += 1
    return SERVED


@numba.njit(cache=CACHE)
def bdf_run(ist, fw, D, D_new, V, atol, J, lu_flat, piv, coef, rec, FD, YP, FP, M, callback):
    """Run the solve until it ends (:data:`DONE`), the record is full (:data:`GROW`) or the callback at
    ``callback`` did not serve a request (minus its status). ``coef``: the rows γ, α and the error
    constants of :func:`deqcore.ode.bdf._coefficients`. ``lu_flat``: the LU factors column-major, flat (an
    (n, n) array with n = 1 is C- and F-contiguous at once and would be compiled a second time)."""
    n = ist[I_N]
    lu = lu_flat.reshape((n, n)).T
    gamma = coef[0]
    alpha = coef[1]
    error_const = coef[2]
    y, f, y0, f0 = V[Y], V[F], V[Y0], V[F0]
    y_predict, psi, scale, work, d = V[Y_PREDICT], V[PSI], V[SCALE], V[WORK], V[DIFF]
    y_new, f_new, f_pred, ya, fa = V[Y_NEW], V[F_NEW], V[F_PRED], V[YA], V[FA]
    rtol, newton_tol, eps = fw[F_RTOL], fw[F_NEWTON_TOL], fw[F_EPS]
    max_iter = ist[I_NEWTON_MAXITER]
    getrs, getrf = ist[I_GETRS], ist[I_GETRF]
    while True:
        if ist[I_ACTIVE] == 0:
            return DONE
        if ist[I_NUM_STEPS] >= ist[I_MAX_STEPS]:
            ist[I_CODE] = _MAX_STEPS
            ist[I_ACTIVE] = 0
            return DONE
        if ist[I_RECORD] != 0 and ist[I_REC_COUNT] >= ist[I_REC_CAP]:
            return GROW
        t = fw[F_T]
        h = fw[F_DIRECTION] * fw[F_H]
        # ---- BDFStepper.attempt ----
        h_abs = abs(h)
        if ist[I_STARTED] == 0:                 # _init_differences
            s = h_abs * (1.0 if h > 0 else -1.0)
            D[:] = 0.0
            for q in range(n):
                D[0, q] = y0[q]
                D[1, q] = f0[q] * s
            fw[F_H_ABS] = h_abs
            ist[I_ORDER] = 1
            ist[I_N_EQUAL] = 0
            ist[I_STARTED] = 1
        elif h_abs != fw[F_H_ABS]:
            bdf_rescale(D, ist[I_ORDER], h_abs / fw[F_H_ABS])
            fw[F_H_ABS] = h_abs
            ist[I_N_EQUAL] = 0
            ist[I_LU_VALID] = 0
        order = ist[I_ORDER]
        t_new = t + h
        bdf_predict(D, order, gamma, alpha, atol, rtol, y_predict, psi, scale)
        c = h / alpha[order]
        linear_failed = False
        have_f_pred = False
        converged = False
        n_iter = 0
        while True:
            if ist[I_HAVE_J] == 0:
                same = ist[I_Y0_VALID] != 0
                for q in range(n):
                    ya[q] = D[0, q]
                    if not y0[q] == D[0, q]:
                        same = False
                if same:
                    for q in range(n):
                        fa[q] = f0[q]
                else:
                    status = call_back(callback, F_AT, t, 0.0, 0.0)
                    if status != SERVED:
                        return -status
                status = _jacobian(ist, fw, t, V, FD, YP, FP, M, J, callback)
                if status != SERVED:
                    return -status
                ist[I_HAVE_J] = 1
                ist[I_JAC_CURRENT] = 1
                ist[I_LU_VALID] = 0
                fw[F_RATE] = -1.0
            if ist[I_LU_VALID] == 0 or fw[F_LU_C] != c:
                ist[I_NFACTOR] += 1
                singular, _ = _factor(getrf, J, 1.0, c, eps, lu, piv)
                ist[I_LU_VALID] = 0 if singular else 1
                fw[F_LU_C] = c
            if ist[I_LU_VALID] == 0:
                linear_failed = True
                converged = False
            else:
                linear_failed = False
                # BDFStepper._newton
                for q in range(n):
                    d[q] = 0.0
                    y_new[q] = y_predict[q]
                dy_norm_old = -1.0
                rate_prev = fw[F_RATE]
                converged = False
                k = 0
                for k in range(max_iter):
                    for q in range(n):
                        ya[q] = y_new[q]
                    status = call_back(callback, F_AT, t_new, 0.0, 0.0)
                    if status != SERVED:
                        return -status
                    if k == 0 and not have_f_pred:
                        for q in range(n):
                            f_pred[q] = fa[q]
                        have_f_pred = True
                    status, dy_norm = bdf_newton(getrs, fa, c, psi, d, y_new, lu, piv, scale, work, dy_norm_old,
                                                 rate_prev, newton_tol, k, max_iter)
                    if status == BAD_F:
                        break
                    ist[I_NLINSOLVE] += 1
                    if dy_norm_old >= 0.0:
                        fw[F_RATE] = dy_norm / dy_norm_old
                    if status == FAILED:
                        break
                    if status == CONVERGED:
                        converged = True
                        if k == 0:
                            fw[F_RATE] = -1.0
                        break
                    dy_norm_old = dy_norm
                n_iter = k + 1
            if converged or ist[I_JAC_CURRENT] != 0:
                break
            if not have_f_pred:     # Newton's first evaluation is f(t_new, y_predict): reused for J
                for q in range(n):
                    ya[q] = y_predict[q]
                status = call_back(callback, F_AT, t_new, 0.0, 0.0)
                if status != SERVED:
                    return -status
                for q in range(n):
                    f_pred[q] = fa[q]
                have_f_pred = True
            if not _all_finite(f_pred):
                break
            for q in range(n):
                ya[q] = y_predict[q]
                fa[q] = f_pred[q]
            status = _jacobian(ist, fw, t_new, V, FD, YP, FP, M, J, callback)
            if status != SERVED:
                return -status
            ist[I_JAC_CURRENT] = 1
            ist[I_LU_VALID] = 0
            fw[F_RATE] = -1.0
        accepted_trial = False
        trial_code = 0
        new_order = order
        if not converged:
            ist[I_NNEWTON_FAIL] += 1
            if linear_failed:
                ist[I_NFAILED_SOLVES] += 1
                trial_code = _LINEAR_SOLVE_FAILED
            h_next = 0.5 * h_abs
            err_sq = math.inf
        else:
            safety = 0.9 * (2 * max_iter + 1) / (2 * max_iter + n_iter)
            err_sq, y_absmax = bdf_error(D[0], y_new, d, error_const[order], atol, rtol, scale)
            error_norm = math.sqrt(err_sq / max(n, 1))
            if not math.isfinite(error_norm):
                h_next = 0.5 * h_abs
                err_sq = math.inf
            elif error_norm > 1.0:
                v = safety * error_norm ** (-1.0 / (order + 1))
                h_next = (v if v > fw[F_MIN_FACTOR] else fw[F_MIN_FACTOR]) * h_abs
            else:
                accepted_trial = True
                select = ist[I_N_EQUAL] + 1 >= order + 1
                err_m, err_p = bdf_update(D, D_new, d, order, error_const, scale, ist[I_MAX_ORDER], select, psi, c,
                                          f_new)
                h_next = h_abs
                if select:
                    best, best_factor = 0, 0.0
                    for k in range(3):
                        e = err_m if k == 0 else error_norm if k == 1 else err_p
                        factor = math.inf if e == 0.0 else e ** (-1.0 / (order + k))
                        # max(range(3), key=lambda k: (isnan, factor)): the first NaN, else the first largest
                        if k == 0 or (factor != factor and best_factor == best_factor) or \
                                (factor == factor and best_factor == best_factor and factor > best_factor):
                            best, best_factor = k, factor
                    new_order = order + best - 1
                    v = safety * best_factor
                    h_next = h_abs * (v if v < fw[F_MAX_FACTOR] else fw[F_MAX_FACTOR])
                if ist[I_AUTONOMOUS] != 0:      # f evaluated at the new point (the corrector's otherwise)
                    for q in range(n):
                        ya[q] = y_new[q]
                    status = call_back(callback, F_AT, t_new, 0.0, 0.0)
                    if status != SERVED:
                        return -status
                    for q in range(n):
                        f_new[q] = fa[q]
        if not accepted_trial:              # BDFStepper._reject
            y_absmax = _absmax(y)
            fw[F_RATE] = -1.0
        y1 = y_new if accepted_trial else y
        f1 = f_new if accepted_trial else f
        # ---- the driver: _HostRow.control, then record and accept ----
        ist[I_NUM_STEPS] += 1
        res = fw[F_THRESHOLD]
        if ist[I_STEADY] != 0:
            res = _absmax(f1)
        good, active, code, t_row, h_row, err_prev, after_reject = control_with_proposal(
            err_sq, y_absmax, res, fw[F_THRESHOLD], float(order + 1), t, fw[F_H], fw[F_ERR_PREV],
            ist[I_AFTER_REJECT] != 0, n, fw[F_T_END], fw[F_DIRECTION], ist[I_STEADY] != 0, fw[F_BIG], fw[F_TEPS],
            h_next, trial_code)
        fw[F_T] = t_row
        fw[F_ERR_PREV] = err_prev
        ist[I_AFTER_REJECT] = 1 if after_reject else 0
        if good:
            ist[I_ACCEPTED] += 1
        else:
            ist[I_REJECTED] += 1
        if code != 0:
            ist[I_CODE] = code
        fw[F_H] = h_row
        ist[I_ACTIVE] = 1 if active else 0
        if good and accepted_trial:
            if ist[I_RECORD] != 0:
                r = ist[I_REC_COUNT]
                rec[r, 0] = t
                rec[r, 1] = t_row
                for q in range(n):
                    rec[r, 2 + q] = y1[q]
                    rec[r, 2 + n + q] = f1[q]
                ist[I_REC_COUNT] = r + 1
            for q in range(n):
                y[q] = y1[q]
                f[q] = f1[q]
            # BDFStepper.accept (the new differences: the swap of D and D_new, as a copy)
            for j in range(D.shape[0]):     # D[:] = D_new (a sliced array assignment compiles its shape-error path)
                for q in range(n):
                    D[j, q] = D_new[j, q]
            if new_order != order:
                ist[I_ORDER] = new_order
                ist[I_N_EQUAL] = 0
                ist[I_LU_VALID] = 0
                fw[F_RATE] = -1.0
            else:
                ist[I_N_EQUAL] += 1
            ist[I_JAC_CURRENT] = 0
            ist[I_Y0_VALID] = 0
