"""The whole step loop of :class:`~deqcore.ode.radau.RadauStepper` for one small dense float64 system in
compiled code, with only the right-hand side (and the Jacobian) evaluated in Python.

The loop is a compiled state machine (:func:`~deqcore.ode.radau_machine.radau_run`): it runs attempts,
error tests, step-size decisions and the driver's step control (:func:`~deqcore.ode.controller.make_control_step`,
compiled) and asks Python, through a ctypes callback (served by :func:`run_radau_loop`), for what only Python
can give: the three stage evaluations of a Newton iteration, one evaluation of f at a point, a Jacobian or its
columns; it returns for room for more recorded steps and at the end of the solve. The callback counts and
checks every call of ``rhs`` as the :class:`~deqcore.ode.base.Evaluator` does; an exception raised by
``rhs`` or ``jac`` is kept, stops the compiled loop and is raised again, unchanged.

It is the algorithm of :meth:`RadauStepper.attempt <deqcore.ode.radau.RadauStepper.attempt>` and of the
driver's loop (:func:`deqcore.ode.driver.run`), step for step: the same attempts, evaluations of f and
Jacobians, the same numbers (the same compiled kernels of :mod:`deqcore.ode.kernels_host` form them), the same
return codes. Its heuristic parameters are read from :mod:`deqcore.ode.radau` and the stepper when a solve
starts and passed in as data, so the compiled code cached on disk never holds a stale copy of them. Accepted
steps are recorded in a growing array (time, end time, y, f, the stage increments Z) from which the driver's
step records and the collocation polynomials of the dense output are built at the end.

Measured on this machine: a compiled call with five array arguments costs 1.1–1.5 µs to dispatch; a ctypes
callback from compiled code 0.4 µs. Returning to Python for each request (one per Newton iteration) was
slower than calling back, and the callback keeps Python's errors, the evaluator's checks and the
finite-difference Jacobian where they are. Finite-difference Jacobians are formed in the compiled loop too
(the arithmetic of :class:`~deqcore.linalg.finite_diff.FiniteDiffJacobian` for one dense system, its compiled
helpers called directly), only their column evaluations of f called back.

>>> import numpy as np, deqcore as dq, deqcore.ode.radau as radau
>>> f = lambda t, y: np.array([-1e4 * (y[0] - np.cos(t)), y[0] - y[1]])
>>> fast = dq.integrate(f, np.zeros(2), (0.0, 2.0), dq.Radau(), rtol=1e-8, atol=1e-10)
>>> radau.COMPILED_LOOP = False           # the driver's loop over RadauStepper.attempt
>>> slow = dq.integrate(f, np.zeros(2), (0.0, 2.0), dq.Radau(), rtol=1e-8, atol=1e-10)
>>> radau.COMPILED_LOOP = True
>>> fast.stats == slow.stats, bool((fast.ys == slow.ys).all()), fast.stats["njev"] > 0
(True, True, True)
"""

from __future__ import annotations

import math

import numpy as np

from .radau_machine import (F_BASE, F_ERR, F_NEW, FD_COLS, GROW, JAC, STAGES,
                            I_ACCEPTED, I_ACTIVE, I_ADDR, I_AFTER_REJECT, I_AUTONOMOUS, I_CODE, I_F_EXACT,
                            I_FIRST, I_JAC_KEEP_ITER, I_KMAX, I_MAX_STEPS, I_N, I_NEED_JAC, I_NFACTOR,
                            I_NFAILED_SOLVES, I_NLINSOLVE, I_NNEWTON_FAIL, I_NUM_STEPS, I_REC_CAP, I_REC_COUNT,
                            I_RECORD, I_REJECTED, I_SIZE, I_STEADY, I_USER_JAC, F_BIG, F_DIRECTION, F_EPS,
                            F_ERR_PREV, F_EXPONENT, F_FACCON, F_GAMMA, F_H, F_JAC_RATE, F_KEEP_HIGH, F_KEEP_LOW,
                            F_MAX_FACTOR, F_MIN_FACTOR, F_MU_IM, F_MU_RE, F_NEWTON_FACTOR, F_NEWTON_TOL, F_RTOL,
                            F_SAFETY, F_T, F_T_END, F_TEPS, F_THRESHOLD, F_LOST_BELOW, F_GROW, F_FD_START,
                            I_NJEV_FD, I_NFEV_JAC, F_RATE_TARGET, F_RATE_MIN_FACTOR, layout)
from . import radau_machine
from .radau import CollocationPolynomial
from .rosenbrock import user_jacobian
from .loop_callback import (DISPATCH, HAND_BACK, RAISED, SERVED, add_counters, run_served, checked as _checked,
                            finish_row, run_growing, step_records)

__all__ = ["run_radau_loop"]

#: the float state's head entries a solve writes (the order of the tuple ``run_radau_loop`` assigns)
_HEAD = np.array([F_T, F_H, F_ERR_PREV, F_T_END, F_DIRECTION, F_BIG, F_THRESHOLD, F_TEPS, F_RTOL, F_NEWTON_TOL,
                  F_NEWTON_FACTOR, F_JAC_RATE, F_SAFETY, F_MIN_FACTOR, F_MAX_FACTOR, F_KEEP_LOW, F_KEEP_HIGH,
                  F_GAMMA, F_MU_RE, F_MU_IM, F_FACCON, F_EXPONENT, F_EPS, F_LOST_BELOW, F_GROW, F_FD_START,
                  F_RATE_TARGET, F_RATE_MIN_FACTOR])
_TEMPLATES: dict = {}
_COEFFICIENT_NAMES = ("T", "T_inv", "e", "c", "a_last", "dense")


def _template(n: int, params: dict):
    """(layout, float state) of a system of ``n`` unknowns before a solve: zeros with the method's coefficients
    (``params``' T, T_inv, e, c, a_last, dense: the stepper's shared arrays) in place, formed once per ``n`` and
    set of coefficient arrays (the entry keeps them alive, so their ids stay theirs); a solve starts from a
    copy."""
    arrays = tuple(params[name] for name in _COEFFICIENT_NAMES)
    key = (n,) + tuple(map(id, arrays))
    found = _TEMPLATES.get(key)
    if found is None:
        L = layout(n)
        fw = np.zeros(L["size"][0])
        for name, a in zip(_COEFFICIENT_NAMES, arrays):
            start, stop = L[name]
            fw[start:stop] = np.ravel(a)
        found = _TEMPLATES[key] = (L, fw, arrays)
    return found[0], found[1]


def run_radau_loop(stepper, rows, y0, f0, tol, max_steps: int, record: bool, params: dict):
    """The driver's loop for ``stepper`` (a :class:`~deqcore.ode.radau.RadauStepper` on its compiled path,
    not yet started) from the control state ``rows`` (the driver's ``_HostRow``, updated in place), as one
    compiled call (:func:`radau_run`) that calls back into Python for f and J. ``params``: the method's
    heuristic parameters (read from :mod:`deqcore.ode.radau` by the stepper). Returns ``(y, f, steps,
    num_steps)`` as the driver's loop leaves them, or None when the first Jacobian is not a dense array (the
    driver's loop then takes over from the stepper's state, which already holds that Jacobian). An exception
    raised by ``rhs`` or ``jac`` propagates unchanged."""
    ev, n = stepper.ev, stepper.n
    shape = ev.shape
    L, template = _template(n, params)
    fw = template.copy()            # zeros, the method's coefficients in place
    ist = np.zeros(I_SIZE, dtype=np.int64)
    lu_c = np.empty(n * n, dtype=np.complex128)     # the complex LU, column-major, flat (one type for every n)
    piv = np.zeros(2 * n, dtype=np.int32)

    def view(name):
        start, stop = L[name]
        return fw[start:stop]

    y_flat, f_in = view("y"), view("f")
    y_flat[:] = y0.reshape(-1)
    f_in[:] = f0.reshape(-1)
    atol, rtol = tol
    view("atol")[:] = np.broadcast_to(np.asarray(atol, dtype=np.float64), shape).reshape(-1) \
        if type(atol) is not float and np.ndim(atol) else float(atol)
    ist[I_N], ist[I_KMAX], ist[I_JAC_KEEP_ITER] = n, stepper.max_iter, params["jac_keep_iter"]
    ist[I_AUTONOMOUS], ist[I_USER_JAC] = int(ev.autonomous), int(stepper.jac is not None)
    ist[I_STEADY], ist[I_RECORD], ist[I_MAX_STEPS] = int(rows.steady), int(record), max_steps
    ist[I_CODE], ist[I_ACTIVE], ist[I_AFTER_REJECT] = rows.code, int(rows.active), int(rows.after_reject)
    ist[I_NEED_JAC], ist[I_F_EXACT], ist[I_FIRST] = 1, int(stepper._f_exact), 1
    ist[I_ADDR:I_ADDR + 7] = stepper._addresses
    eps = params["eps"]
    fw[_HEAD] = (rows.t, rows.h, rows.err_prev, rows.t_end, rows.direction, rows.big, rows.threshold,
                 params["t_eps"], float(rtol), params["newton_tol"], stepper.newton_factor, stepper.jac_rate,
                 params["safety"], params["min_factor"], params["max_factor"], params["keep_low"],
                 params["keep_high"], params["gamma"], params["mu"].real, params["mu"].imag, stepper.faccon,
                 float(stepper.error_exponent), eps, eps ** 0.875, params["fd_grow"], math.sqrt(eps),
                 params["rate_target"], params["rate_min_factor"])
    rec = np.empty((64 if record else 0, 2 + 5 * n))
    ist[I_REC_CAP] = rec.shape[0]

    rhs, args, autonomous, dtype = ev.rhs, ev.args, ev.autonomous, ev.dtype
    y_in = y_flat.reshape(shape)
    Y0, Y1, Y2 = (y.reshape(shape) for y in view("Y").reshape(3, n))
    F0, F1, F2 = (f.reshape(shape) for f in view("F").reshape(3, n))
    points = {F_ERR: (view("y_err").reshape(shape), view("f_err").reshape(shape)),
              F_NEW: (view("y_new").reshape(shape), view("f_new").reshape(shape)),
              F_BASE: (y_in, f_in.reshape(shape))}
    J_out = view("J").reshape(n, n)
    columns = view("fd_cols")
    YP = view("fd_YP").reshape((n,) + shape)      # row j: the point of column j
    FP = view("fd_FP").reshape((n,) + shape)
    ndarray = np.ndarray
    raised = []
    stats = stepper.stats
    user_jac = stepper.jac

    def f(t, y, out):
        """``out[...] = rhs(t, y, *args)``, counted and checked as the evaluator does."""
        ev.nfev += 1
        value = rhs(0.0 if autonomous else t, y, *args)
        if type(value) is not ndarray or value.dtype is not dtype or value.shape != shape:
            value = _checked(ev, value)
        out[...] = value

    def jacobian(t):
        if user_jac is None:
            return stepper._evaluate_jacobian(t, y_flat, f_in, tol)
        stats["njev"] += 1           # the user's jac, checked as OneSystemJacobian does
        J = user_jac(0.0 if autonomous else t, y_in, *args)
        if type(J) is ndarray and J.dtype is dtype and J.shape == (n, n):
            return J
        J = user_jacobian(ev, lambda *_: J, n, t, y_in)
        return J[0] if type(J) is ndarray else J

    def serve(request, t_a, t_b, t_c):
        try:
            if request == STAGES:          # f written out three times: this is the hot path
                if autonomous:
                    t_a = t_b = t_c = 0.0
                ev.nfev += 1
                value = rhs(t_a, Y0, *args)
                if type(value) is not ndarray or value.dtype is not dtype or value.shape != shape:
                    value = _checked(ev, value)
                F0[...] = value
                ev.nfev += 1
                value = rhs(t_b, Y1, *args)
                if type(value) is not ndarray or value.dtype is not dtype or value.shape != shape:
                    value = _checked(ev, value)
                F1[...] = value
                ev.nfev += 1
                value = rhs(t_c, Y2, *args)
                if type(value) is not ndarray or value.dtype is not dtype or value.shape != shape:
                    value = _checked(ev, value)
                F2[...] = value
            elif request == FD_COLS:        # the columns of a finite-difference Jacobian
                if autonomous:
                    t_a = 0.0
                for j in columns.nonzero()[0].tolist():
                    ev.nfev += 1
                    value = rhs(t_a, YP[j, ...], *args)     # (a view, 0-d states included)
                    if type(value) is not ndarray or value.dtype is not dtype or value.shape != shape:
                        value = _checked(ev, value)
                    FP[j, ...] = value
            elif request == JAC:
                J = jacobian(t_a)
                if type(J) is not ndarray:
                    if ist[I_NUM_STEPS] == 0:       # a sparse user Jacobian: the driver's loop, from here
                        stepper.J, stepper.jac_fresh, stepper.need_jac, stepper.lu = J, True, False, None
                        stepper._jac_finite = bool(np.isfinite(J.data).all())
                        return HAND_BACK
                    J = J.toarray()
                J_out[...] = J
            else:
                y, out = points[request]
                f(t_a, y, out)
            return SERVED
        except BaseException as exc:        # noqa: BLE001 - kept and raised again after the compiled call
            raised.append(exc)
            return RAISED

    rec = run_served(serve, lambda: run_growing(
        lambda rec: radau_machine.radau_run(ist, fw, lu_c, piv, rec, DISPATCH), rec, ist, I_REC_CAP, GROW, raised))
    if rec is None:
        return None
    # the driver's row, the stepper's counters
    finish_row(rows, ev, fw[F_T], fw[F_H], fw[F_ERR_PREV], ist[I_AFTER_REJECT], ist[I_ACTIVE], ist[I_CODE],
               ist[I_ACCEPTED], ist[I_REJECTED], ist[I_NUM_STEPS])
    add_counters(stats, ist, dict(nlinsolve=I_NLINSOLVE, njev=I_NJEV_FD, nfev_jac=I_NFEV_JAC, nfactor=I_NFACTOR,
                                  nfailed_solves=I_NFAILED_SOLVES, nnewton_fail=I_NNEWTON_FAIL))
    count = int(ist[I_REC_COUNT])
    Zs = rec[:count, 2 + 2 * n:].reshape(count, 3, n)
    steps = step_records(rec, count, shape, y0, f0,
                         lambda r, y_start: CollocationPolynomial(y_start.reshape(-1), Zs[r], shape))
    return y_flat.reshape(shape).copy(), f_in.reshape(shape).copy(), steps, int(ist[I_NUM_STEPS])
