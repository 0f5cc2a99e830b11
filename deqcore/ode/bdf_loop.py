"""The driver's loop over :class:`~deqcore.ode.bdf.BDFStepper` for one small dense float64 system as one
compiled call (:func:`~deqcore.ode.bdf_machine.bdf_run`), with only the right-hand side and the Jacobian
evaluated in Python, through the callback of :mod:`deqcore.ode.loop_callback` (as
:mod:`deqcore.ode.radau_loop` does for Radau); finite-difference Jacobians are formed in compiled code (the
arithmetic of :class:`~deqcore.linalg.finite_diff.FiniteDiffJacobian` for one dense system), only their
column evaluations of f called back.

It is the algorithm of :meth:`BDFStepper.attempt <deqcore.ode.bdf.BDFStepper.attempt>` and of the driver's
loop (:func:`deqcore.ode.driver.run`), step for step: the same attempts, evaluations of f and Jacobians,
the same numbers (the same compiled kernels of :mod:`deqcore.ode.kernels_host` form them) and return
codes. Every call of ``rhs`` is counted and checked as the :class:`~deqcore.ode.base.Evaluator` does; an
exception raised by ``rhs`` or ``jac`` stops the compiled loop and is raised again, unchanged. Accepted
steps are recorded in a growing array (time, end time, y, f) from which the driver's step records are built
at the end.

>>> import numpy as np, deqcore as dq, deqcore.ode.bdf as bdf
>>> f = lambda t, y: np.array([-1e4 * (y[0] - np.cos(t)), y[0] - y[1]])
>>> fast = dq.integrate(f, np.zeros(2), (0.0, 2.0), dq.BDF(), rtol=1e-6, atol=1e-9)
>>> bdf.COMPILED_LOOP = False           # the driver's loop over BDFStepper.attempt
>>> slow = dq.integrate(f, np.zeros(2), (0.0, 2.0), dq.BDF(), rtol=1e-6, atol=1e-9)
>>> bdf.COMPILED_LOOP = True
>>> fast.stats == slow.stats, bool((fast.ys == slow.ys).all()), fast.stats["njev"] > 0
(True, True, True)
"""

from __future__ import annotations

import numpy as np

from . import bdf_machine
from .bdf_machine import (ATOL_FULL, COLS, FD_COLS, FD_ROWS, I_USER_JAC, I_NJEV_FD, I_NFEV_JAC, F_FD_START,
                          F_LOST_BELOW, F_GROW, F_AT, GROW, V_ROWS, Y, F, Y0, F0, YA, FA, I_SIZE, F_SIZE, I_N,
                          I_MAX_ORDER,
                          I_NEWTON_MAXITER, I_AUTONOMOUS, I_STEADY, I_RECORD, I_MAX_STEPS, I_NUM_STEPS, I_ACCEPTED,
                          I_REJECTED, I_CODE, I_ACTIVE, I_AFTER_REJECT, I_Y0_VALID, I_REC_COUNT, I_REC_CAP,
                          I_NLINSOLVE, I_NFACTOR, I_NNEWTON_FAIL, I_NFAILED_SOLVES, I_GETRS, I_GETRF, F_T, F_H,
                          F_ERR_PREV, F_T_END, F_DIRECTION, F_BIG, F_THRESHOLD, F_TEPS, F_RTOL, F_NEWTON_TOL,
                          F_EPS, F_MIN_FACTOR, F_MAX_FACTOR, F_RATE)
from .loop_callback import (DISPATCH, HAND_BACK, RAISED, SERVED, add_counters, checked, finish_row, run_growing,
                            run_served, step_records)

__all__ = ["run_bdf_loop"]


def run_bdf_loop(stepper, rows, y0, f0, tol, max_steps: int, record: bool, params: dict):
    """The driver's loop for ``stepper`` (a :class:`~deqcore.ode.bdf.BDFStepper` of one small dense float64
    system, started, no attempt made) from the control state ``rows`` (the driver's ``_HostRow``, updated in
    place) as one compiled call. ``params``: the method's constants (``max_iter``, ``min_factor``,
    ``max_factor``, ``t_eps``, ``getrs``, ``getrf``). Returns ``(y, f, steps, num_steps)`` as the driver's loop
    leaves them, or None when the first Jacobian is sparse (the driver's loop then takes over from the
    stepper's state, which holds that Jacobian). An exception raised by ``rhs`` or ``jac`` propagates
    unchanged."""
    ev, n = stepper.ev, stepper.n
    shape = ev.shape
    ist = np.zeros(I_SIZE, dtype=np.int64)
    fw = np.zeros(F_SIZE)
    V = np.zeros((V_ROWS, n))
    V[Y] = V[Y0] = y0.reshape(-1)
    V[F] = V[F0] = f0.reshape(-1)
    rows_D = stepper.D_rows
    D, D_new = np.zeros((rows_D, n)), np.zeros((rows_D, n))
    J = np.zeros((n, n))
    lu, piv = np.empty(n * n), np.zeros(n, dtype=np.int32)      # LU column-major, flat: one type for every n
    atol, rtol = tol
    # a copy (writable): a read-only view of the caller's array would compile bdf_run a second time
    atol = np.array(np.broadcast_to(np.asarray(atol, dtype=np.float64), shape).reshape(-1)) \
        if np.ndim(atol) else np.array([float(atol)])
    V[ATOL_FULL] = atol if atol.shape[0] == n else atol[0]
    FD, YP, FP, M = np.zeros((FD_ROWS, n)), np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    coef = np.stack([stepper.gamma, stepper.alpha, stepper.error_const]).astype(np.float64)
    ist[I_N], ist[I_MAX_ORDER], ist[I_NEWTON_MAXITER] = n, stepper.max_order, params["max_iter"]
    ist[I_AUTONOMOUS], ist[I_STEADY], ist[I_RECORD] = int(ev.autonomous), int(rows.steady), int(record)
    ist[I_MAX_STEPS], ist[I_CODE], ist[I_ACTIVE] = max_steps, rows.code, int(rows.active)
    ist[I_AFTER_REJECT], ist[I_Y0_VALID] = int(rows.after_reject), 1
    ist[I_GETRS], ist[I_GETRF] = params["getrs"], params["getrf"]
    ist[I_USER_JAC] = int(stepper.jac is not None)
    eps = float(np.finfo(np.float64).eps)
    for k, v in {F_T: rows.t, F_H: rows.h, F_ERR_PREV: rows.err_prev, F_T_END: rows.t_end,
                 F_DIRECTION: rows.direction, F_BIG: rows.big, F_THRESHOLD: rows.threshold,
                 F_TEPS: params["t_eps"], F_RTOL: float(rtol), F_NEWTON_TOL: stepper.newton_tolerance(rtol),
                 F_EPS: eps, F_MIN_FACTOR: params["min_factor"], F_MAX_FACTOR: params["max_factor"],
                 F_FD_START: float(np.sqrt(eps)), F_LOST_BELOW: eps ** 0.875, F_GROW: params["fd_grow"],
                 F_RATE: stepper._rate}.items():
        fw[k] = v
    rec = np.empty((64 if record else 0, 2 + 2 * n))
    ist[I_REC_CAP] = rec.shape[0]

    rhs, args, autonomous, dtype = ev.rhs, ev.args, ev.autonomous, ev.dtype
    ya, fa = V[YA].reshape(shape), V[FA].reshape(shape)
    columns = FD[COLS]
    YPs = [YP[j].reshape(shape) for j in range(n)]
    ndarray = np.ndarray
    raised = []
    stats = stepper.stats

    def serve(request, t, _b, _c):
        try:
            if request == F_AT:         # the hot path: rhs as the evaluator calls it, counted and checked
                ev.nfev += 1
                value = rhs(0.0 if autonomous else t, ya, *args)
                if type(value) is not ndarray or value.dtype is not dtype or value.shape != shape:
                    value = checked(ev, value)
                fa[...] = value
            elif request == FD_COLS:    # the columns of a finite-difference Jacobian
                for j in columns.nonzero()[0].tolist():
                    ev.nfev += 1
                    value = rhs(0.0 if autonomous else t, YPs[j], *args)
                    if type(value) is not ndarray or value.dtype is not dtype or value.shape != shape:
                        value = checked(ev, value)
                    FP[j] = value.reshape(-1)
            else:                       # the user's Jacobian
                Jt = stepper._evaluate_jacobian(t, V[YA], V[FA], tol)
                if type(Jt) is not ndarray:
                    if ist[I_NUM_STEPS] == 0:       # a sparse user Jacobian: the driver's loop, from here
                        stepper.J, stepper.jac_current, stepper.lu = Jt, True, None
                        return HAND_BACK
                    Jt = Jt.toarray()
                J[...] = Jt
            return SERVED
        except BaseException as exc:        # noqa: BLE001 - kept and raised again after the compiled call
            raised.append(exc)
            return RAISED

    rec = run_served(serve, lambda: run_growing(
        lambda rec: bdf_machine.bdf_run(ist, fw, D, D_new, V, atol, J, lu, piv, coef, rec, FD, YP, FP, M, DISPATCH),
        rec, ist, I_REC_CAP, GROW, raised))
    if rec is None:
        return None
    finish_row(rows, ev, fw[F_T], fw[F_H], fw[F_ERR_PREV], ist[I_AFTER_REJECT], ist[I_ACTIVE], ist[I_CODE],
               ist[I_ACCEPTED], ist[I_REJECTED], ist[I_NUM_STEPS])
    add_counters(stats, ist, dict(njev=I_NJEV_FD, nfev_jac=I_NFEV_JAC, nlinsolve=I_NLINSOLVE, nfactor=I_NFACTOR,
                                  nfailed_solves=I_NFAILED_SOLVES, nnewton_fail=I_NNEWTON_FAIL))
    steps = step_records(rec, int(ist[I_REC_COUNT]), shape, y0, f0)
    return V[Y].reshape(shape).copy(), V[F].reshape(shape).copy(), steps, int(ist[I_NUM_STEPS])
