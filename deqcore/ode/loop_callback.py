"""What the compiled step loops of one small dense float64 system share (:mod:`deqcore.ode.radau_loop`,
:mod:`deqcore.ode.bdf_loop`): the ctypes callback by which compiled code asks Python for f or J
(:data:`CALLBACK`, :func:`call_back`), the driver's step control compiled (:func:`control`), the evaluator's
control with a stepper's own step-size proposal (:func:`control_with_proposal`), compiled, the evaluator's
checks of a result that is not already a float64 array of the state's shape (:func:`checked`), and the
driver's row written back and its step records built at the end (:func:`finish_row`, :func:`step_records`),
and the increments and perturbed points of a finite-difference Jacobian (:func:`fd_increments`,
:func:`fd_perturbed`).

A compiled loop calls ``call_back(address, request, t_a, t_b, t_c)``; the Python function behind ``address``
serves the request (evaluates f or J into the loop's buffers) and answers :data:`SERVED`, :data:`RAISED`
(an exception was kept, to be raised again unchanged once the compiled call returned) or :data:`HAND_BACK`
(the driver's own loop takes over). The loops call the process's one callback, :data:`DISPATCH`, which
passes each request to the function :func:`run_served` installed for the calling thread: making a ctypes
callback per solve would cost its creation and, through ``ctypes.cast``, a reference cycle per solve (the
garbage collector's time).

>>> seen = []
>>> served = CALLBACK(lambda request, t_a, t_b, t_c: seen.append((request, t_a)) or SERVED)
>>> ask(callback_address(served), 3, 0.5), seen
(0, [(3, 0.5)])
>>> run_served(lambda request, t_a, t_b, t_c: seen.append((request, t_a)) or RAISED,
...            lambda: ask(DISPATCH, 4, 1.5)), seen[-1]            # the process's one callback
(1, (4, 1.5))
"""

from __future__ import annotations

import ctypes
import math
import threading

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..backend.numba_tools import CACHE, numba
from ..results import ReturnCode
from .controller import make_control_step, pi_factor, step_limit
from .driver import StepRecord

__all__ = ["CALLBACK", "SERVED", "RAISED", "HAND_BACK", "DISPATCH", "callback_address", "run_served",
           "call_back", "control", "run_growing", "add_counters", "control_with_proposal", "checked",
           "finish_row", "step_records", "fd_increments", "fd_perturbed", "ask"]

#: the callback's signature: (request, t_a, t_b, t_c) -> SERVED, RAISED or HAND_BACK
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_double, ctypes.c_double, ctypes.c_double)
SERVED, RAISED, HAND_BACK = 0, 1, 2


def callback_address(callback) -> int:
    """The address of the C function of a :data:`CALLBACK` object (read from its buffer: ``ctypes.cast``
    would tie the object into a reference cycle that only the garbage collector frees)."""
    return ctypes.c_void_p.from_address(ctypes.addressof(callback)).value


class _Serving(threading.local):
    serve = None


_SERVING = _Serving()


def _dispatch(request, t_a, t_b, t_c):
    return _SERVING.serve(request, t_a, t_b, t_c)


_DISPATCH = CALLBACK(_dispatch)
#: the address of the one callback a compiled loop can call for the whole process: it passes each request to
#: the function :func:`run_served` installed for the calling thread (no ctypes callback made per solve)
DISPATCH = callback_address(_DISPATCH)


def run_served(serve, run):
    """``run()`` with ``serve(request, t_a, t_b, t_c)`` answering the requests sent to :data:`DISPATCH` from
    this thread; the previous server is restored afterwards (a solve inside a right-hand side nests)."""
    previous = _SERVING.serve
    _SERVING.serve = serve
    try:
        return run()
    finally:
        _SERVING.serve = previous

#: the driver's step control of one row (:func:`~deqcore.ode.controller.make_control_step`), compiled
_step_limit = numba.njit(step_limit)
control = numba.njit(make_control_step(numba.njit(pi_factor), _step_limit))

_DIVERGED, _DT_TOO_SMALL = int(ReturnCode.DIVERGED), int(ReturnCode.DT_TOO_SMALL)


@numba.njit
def control_with_proposal(err_sq, y_absmax, res, threshold, exponent, t, h, err_prev, after_reject, m, t_end,
                          direction, steady, big, eps, h_next, trial_code):
    """The driver's control of its one host row (``_HostRow.control``) after an attempt whose stepper
    proposes the next step size ``h_next`` (it replaces the PI controller's, limited as the controller's by
    :func:`~deqcore.ode.controller.step_limit`) and, for a failed attempt, the code ``trial_code`` (0: none) reported instead of DIVERGED or
    DT_TOO_SMALL. Returns :func:`control`'s tuple."""
    good, active, code, t_new, h_ctrl, err_prev, after_reject = control(
        err_sq, y_absmax, res, threshold, exponent, t, h, err_prev, after_reject, m, t_end, direction, steady, big,
        eps)
    if active:
        limited = _step_limit(good, h, abs(h_next), t_new, t_end, direction, eps)
        if limited > 0.0:
            h_ctrl = limited
        else:
            code = _DT_TOO_SMALL if math.isfinite(err_sq) else _DIVERGED
            active = False
    if not active and trial_code != 0 and (code == _DIVERGED or code == _DT_TOO_SMALL):
        code = trial_code
    return good, active, code, t_new, h_ctrl, err_prev, after_reject


@intrinsic
def call_back(typingctx, address, request, t_a, t_b, t_c):
    """Call the C function at ``address`` (an integer: a ctypes :data:`CALLBACK`) with ``(request, t_a, t_b,
    t_c)``, returning its int64."""
    sig = types.int64(address, request, t_a, t_b, t_c)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64), ir.DoubleType(), ir.DoubleType(), ir.DoubleType()])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(fn, list(args[1:]))
    return sig, codegen


@numba.njit(cache=CACHE)
def ask(address, request, t):
    """One request through the callback at ``address`` (what the compiled loops do; for tests)."""
    return call_back(address, request, t, 0.0, 0.0)


_TINY = float(np.finfo(np.float64).tiny)


@numba.njit
def fd_increments(y, threshold, factor, h):
    """:func:`deqcore.linalg.finite_diff.increments` of one system: ``factor · max(|y|, threshold)`` with the
    sign of y, rounded so that ``(y + h) − y == h`` (the same operations, element by element; a scale at
    most float64's smallest normal number is 1)."""
    for q in range(y.shape[0]):
        a = abs(y[q])
        s = a if (a != a or a >= threshold[q]) else threshold[q]
        s = 1.0 if s <= _TINY else s
        v = factor[q] * (s if y[q] >= 0 else -s)
        h[q] = (y[q] + v) - y[q]


@numba.njit
def fd_perturbed(y, h, cols, YP):
    """Row j of ``YP`` = y with h_j added to component j, for the columns flagged in ``cols``."""
    n = y.shape[0]
    for j in range(n):
        if cols[j] != 0.0:
            for q in range(n):
                YP[j, q] = y[q]
            YP[j, j] = y[j] + h[j]


def checked(ev, out):
    """``out`` as the :class:`~deqcore.ode.base.Evaluator` accepts it (its checks and messages), for results
    that are not already a float64 array of the state's shape."""
    shape = getattr(out, "shape", None)
    if shape is None or tuple(shape) != ev.shape:
        raise ValueError(f"rhs must return an array of shape {ev.shape} (the shape of y0), got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    kind, size = np.dtype(out.dtype).kind, np.dtype(out.dtype).itemsize
    if kind != "f" or size < np.dtype(ev.dtype).itemsize:
        raise TypeError(f"rhs must return a real floating array of y0's dtype {np.dtype(ev.dtype)}, "
                        f"got {np.dtype(out.dtype)}")
    return out



def run_growing(run, rec, ist, cap_index, grow, raised):
    """Call a compiled loop, ``run(rec)`` (its status), until it finishes: on ``grow`` its record ``rec`` is
    full and is doubled (capacity at ``ist[cap_index]``) before the call resumes where it stopped; an
    exception kept by the callback is raised again. Returns the record, or None when the callback handed the
    solve back to the driver's loop."""
    while True:
        status = run(rec)
        if status == grow:
            bigger = np.empty((2 * rec.shape[0], rec.shape[1]))
            bigger[:rec.shape[0]] = rec
            rec = bigger
            ist[cap_index] = rec.shape[0]
            continue
        if status == -RAISED:
            raise raised[0]
        return None if status == -HAND_BACK else rec


def add_counters(stats, ist, indices):
    """Add a compiled loop's counters ``ist[index]`` to the solve's ``stats`` (``indices``: name -> index)."""
    for name, index in indices.items():
        stats[name] += int(ist[index])

def finish_row(rows, ev, t, h, err_prev, after_reject, active, code, accepted, rejected, num_steps):
    """Write a compiled loop's final row state into the driver's ``rows`` (``_HostRow``)."""
    rows.t, rows.h, rows.err_prev = float(t), float(h), float(err_prev)
    rows.after_reject, rows.active, rows.code = bool(after_reject), bool(active), int(code)
    rows.accepted, rows.rejected = int(accepted), int(rejected)
    if num_steps:
        rows.nfev = ev.nfev


def step_records(rec, count, shape, y0, f0, stages=None):
    """The driver's :class:`~deqcore.ode.driver.StepRecord` list from the first ``count`` rows of a compiled
    loop's record, ``[t, t_end, y1 (n), f1 (n), ...]`` (each step starts where the previous one ended, the
    first at ``y0``, ``f0``); ``stages(r, y_start)``: the stages of record ``r`` (None: no stages)."""
    n = math.prod(shape)
    Y1s = rec[:count, 2:2 + n].reshape((count,) + tuple(shape))
    F1s = rec[:count, 2 + n:2 + 2 * n].reshape((count,) + tuple(shape))
    starts, ends = rec[:count, 0].tolist(), rec[:count, 1].tolist()
    steps = []
    y_prev, f_prev = y0, f0
    for r in range(count):
        y1, f1 = Y1s[r, ...], F1s[r, ...]          # views (0-d arrays for a 0-d state)
        steps.append(StepRecord(starts[r], ends[r] - starts[r], y_prev, y1, f_prev, f1,
                                None if stages is None else stages(r, y_prev)))
        y_prev, f_prev = y1, f1
    return steps
