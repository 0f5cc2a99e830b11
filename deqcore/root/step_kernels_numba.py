"""Numba CPU versions of the fused driver steps (loaded lazily through the kernel registry)."""

from __future__ import annotations

import numpy as np

from numba import types
from numba.extending import intrinsic

from ..backend.numba_tools import CACHE, numba
from ..ode.loop_callback import DISPATCH, RAISED, SERVED, call_back, run_served
from .anderson_kernels_numba import cpu_scratch, step_rows
from .driver_kernels_numba import _BITS, NO_CODE, driver_decision
from ..results import ReturnCode

_MAX_STEPS = int(ReturnCode.MAX_STEPS)

__all__ = ["anderson_driver_step_numba_cpu", "plain_driver_step_numba_cpu"]


@numba.njit(inline="always")
def _residual_and_update(out, is_map, y, f, f_bits, y_bits, magnitude, inf_bits, norm_bits, norms, best_y,
                         best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit, patience):
    """Row by row: f = out − y (or out), then for a running row its norms on the floats' bit patterns (as
    ``driver_update`` computes them: NaN as +inf) and the driver's decision. Returns the rows still running."""
    batch, n = y.shape
    live = 0
    for i in range(batch):
        if is_map:
            for j in range(n):
                f[i, j] = out[i, j] - y[i, j]
        else:
            for j in range(n):
                f[i, j] = out[i, j]
        if done[i]:
            continue
        mf = f_bits[i, 0] & magnitude
        my = y_bits[i, 0] & magnitude
        for j in range(1, n):
            a = f_bits[i, j] & magnitude
            b = y_bits[i, j] & magnitude
            mf = a if a > mf else mf
            my = b if b > my else my
        norm_bits[0] = inf_bits if mf > inf_bits else mf
        norm_bits[1] = inf_bits if my > inf_bits else my
        res = norms[0]
        improved, since, code = driver_decision(res, norms[1], best_res[i], since_best[i], tol[i], rtol, cap[i],
                                                y_limit[i], limit[i], patience)
        since_best[i] = since
        if improved:
            best_res[i] = res
            for j in range(n):
                best_y[i, j] = y[i, j]
        if code != NO_CODE:
            codes[i] = code
            done[i] = True
        else:
            live += 1
    return live


@numba.njit(cache=CACHE)
def _anderson_driver(out, is_map, y, f, f_bits, y_bits, magnitude, inf_bits, norm_bits, norms, best_y, best_res,
                     since_best, codes, done, tol, rtol, cap, y_limit, limit, patience, G, F, H, slot, count, filled,
                     beta, ridge, floor, step, y_new, was_done, rows, W, V):
    """The update, then: a row that has just finished gets its ring slots from ``filled`` on zeroed (never
    written), a running row takes the Anderson step, a finished row keeps its iterate (y_new = y)."""
    batch, n = y.shape
    for i in range(batch):
        was_done[i] = done[i]
    live = _residual_and_update(out, is_map, y, f, f_bits, y_bits, magnitude, inf_bits, norm_bits, norms, best_y,
                                best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit, patience)
    nrows = 0
    for i in range(batch):
        if not done[i]:
            rows[nrows] = i
            nrows += 1
        elif not was_done[i]:
            for s in range(filled, G.shape[1]):
                for j in range(n):
                    G[i, s, j] = 0
                    F[i, s, j] = 0
    if step and live > 0:
        for i in range(batch):
            if done[i]:
                for j in range(n):
                    y_new[i, j] = y[i, j]
        step_rows(G, F, H, y, f, slot, count, beta, ridge, floor, y_new, rows, nrows, W, V)
    return live


@numba.njit(cache=CACHE)
def _plain_driver(out, is_map, y, f, f_bits, y_bits, magnitude, inf_bits, norm_bits, norms, best_y, best_res,
                  since_best, codes, done, tol, rtol, cap, y_limit, limit, patience, damping, step, y_new):
    live = _residual_and_update(out, is_map, y, f, f_bits, y_bits, magnitude, inf_bits, norm_bits, norms, best_y,
                                best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit, patience)
    if step and live > 0:
        batch, n = y.shape
        if damping == 1.0:
            for i in range(batch):
                for j in range(n):
                    y_new[i, j] = y[i, j] + f[i, j]
        else:
            for i in range(batch):
                for j in range(n):
                    y_new[i, j] = y[i, j] + damping * f[i, j]
    return live


def _common(out, y, f):
    """Contiguous inputs, the bit views and the norm scratch."""
    itype, magnitude, inf_bits = _BITS[y.dtype]
    out, y = np.ascontiguousarray(out), np.ascontiguousarray(y)
    norm_bits = np.empty(2, dtype=itype)
    return out, y, (f.view(itype), y.view(itype), magnitude, inf_bits, norm_bits, norm_bits.view(y.dtype))


def anderson_driver_step_numba_cpu(out, is_map, y, f, best_y, best_res, since_best, codes, done, tol, rtol, cap,
                                   y_limit, limit, patience, G, F, H, slot, count, filled, beta, ridge, floor, step):
    """One compiled call: the residual and the driver's bookkeeping row by row, then the fused Anderson step
    (``anderson_step``'s CPU loop) of the running rows from the same y and f."""
    out, y, bits = _common(out, y, f)
    y_new = np.empty_like(y) if step else y
    batch = y.shape[0]
    live = _anderson_driver(out, bool(is_map), y, f, *bits, best_y, best_res, since_best, codes, done, tol,
                            float(rtol), cap, y_limit, limit, int(patience), G, F, H, int(slot), int(count),
                            int(filled), G.dtype.type(beta), float(ridge), float(floor), bool(step), y_new,
                            np.empty(batch, dtype=np.bool_), np.empty(batch, dtype=np.int64),
                            *cpu_scratch(G.shape[1], batch))
    return (y_new if live else y), np.int64(live), f, best_y, best_res, since_best, codes, done, G, F, H


def plain_driver_step_numba_cpu(out, is_map, y, f, best_y, best_res, since_best, codes, done, tol, rtol, cap,
                                y_limit, limit, patience, damping, step):
    """One compiled call: the residual and the driver's bookkeeping row by row, then y + damping·f (damping in
    the arrays' dtype, as NumPy computes it)."""
    out, y, bits = _common(out, y, f)
    y_new = np.empty_like(y) if step else y
    live = _plain_driver(out, bool(is_map), y, f, *bits, best_y, best_res, since_best, codes, done, tol,
                         float(rtol), cap, y_limit, limit, int(patience), y.dtype.type(damping), bool(step), y_new)
    return (y_new if live else y), np.int64(live), f, best_y, best_res, since_best, codes, done


def _prepare_anderson(f, book, G, F, H, beta, ridge, floor):
    """``step(out, is_map, y, slot, count, filled, step) -> (y_new, live)``: :func:`anderson_driver_step_numba_cpu`
    with what stays fixed during a solve (the bookkeeping arrays, the ring, the bit views, the scratch rows, the
    scalars) bound once, so a step converts and checks only what changes (the loop calls it once per
    f-evaluation; measured in place, after f has evicted the interpreter's data, each Python operation costs
    several times its cost in a warm loop)."""
    best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit, patience = book
    itype, magnitude, inf_bits = _BITS[f.dtype]
    norm_bits = np.empty(2, dtype=itype)
    fixed_a = (f, f.view(itype))
    fixed_b = (magnitude, inf_bits, norm_bits, norm_bits.view(f.dtype), best_y, best_res, since_best, codes, done,
               tol, float(rtol), cap, y_limit, limit, int(patience), G, F, H)
    fixed_c = (G.dtype.type(beta), float(ridge), float(floor))
    batch = f.shape[0]
    was_done, rows = np.empty(batch, dtype=np.bool_), np.empty(batch, dtype=np.int64)
    fixed_d = (was_done, rows, *cpu_scratch(G.shape[1], batch))
    kernel, empty_like, contiguous = _anderson_driver, np.empty_like, np.ascontiguousarray

    def step(out, is_map, y, slot, count, filled, step):
        if not out.flags.c_contiguous:
            out = contiguous(out)
        if not y.flags.c_contiguous:
            y = contiguous(y)
        y_new = empty_like(y) if step else y
        live = kernel(out, is_map, y, *fixed_a, y.view(itype), *fixed_b, slot, count, filled, *fixed_c, step, y_new,
                      *fixed_d)
        return (y_new if live else y), live

    return step


def _prepare_plain(f, book, damping):
    """As :func:`_prepare_anderson`, for :func:`plain_driver_step_numba_cpu`: ``step(out, is_map, y, step)``."""
    best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit, patience = book
    itype, magnitude, inf_bits = _BITS[f.dtype]
    norm_bits = np.empty(2, dtype=itype)
    fixed_a = (f, f.view(itype))
    fixed_b = (magnitude, inf_bits, norm_bits, norm_bits.view(f.dtype), best_y, best_res, since_best, codes, done,
               tol, float(rtol), cap, y_limit, limit, int(patience), f.dtype.type(damping))
    kernel, empty_like, contiguous = _plain_driver, np.empty_like, np.ascontiguousarray

    def step(out, is_map, y, step):
        if not out.flags.c_contiguous:
            out = contiguous(out)
        if not y.flags.c_contiguous:
            y = contiguous(y)
        y_new = empty_like(y) if step else y
        live = kernel(out, is_map, y, *fixed_a, y.view(itype), *fixed_b, step, y_new)
        return (y_new if live else y), live

    return step


@intrinsic
def _array_at(typingctx, address, like):
    """A pointer to ``like``'s dtype at the integer ``address`` (for ``numba.carray``: an array the caller owns)."""
    pointer = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))
    return pointer(address, like), codegen


@numba.njit
def _addresses(out, y, y_new, where):
    """Store the data addresses of ``out``, ``y`` and ``y_new`` in ``where`` (a Python-side lookup,
    ``a.ctypes.data``, costs microseconds each)."""
    where[0] = out.ctypes.data
    where[1] = y.ctypes.data
    where[2] = y_new.ctypes.data


@numba.njit(cache=CACHE)
def _anderson_loop(address, is_map, f, f_bits, magnitude, inf_bits, norm_bits, norms, best_y, best_res,
                   since_best, codes, done, tol, rtol, cap, y_limit, limit, patience, G, F, H, m, beta, ridge, floor,
                   limit_floor, limit_factor, was_done, rows, W, V, where, k, steps, max_steps, stop_live, first):
    """Steps of the fused loop, compiled, from ``k`` Anderson steps and ``steps`` evaluations; returns ``(status,
    k, steps, stepped, live)`` (``stepped``: the last pass wrote a new iterate).

    With ``first`` set, the first pass is the start point's: its residual F(y0) (not the map) and the iterate are
    already at ``where[0]`` and ``where[1]``, no evaluation is counted, the bookkeeping starts from best_res =
    limit = +inf, since_best = 0, codes = MAX_STEPS, done = False (set here: the arrays may start uninitialised),
    and after its bookkeeping the divergence limit is set, ``limit = max(best_res, limit_floor)·limit_factor`` in
    the arrays' dtype (as the NumPy loop computes it), and the rows whose start did not count as an improvement
    (best_res still +inf) get y0 as their best iterate (``best_y`` may start uninitialised: no copy of y0 per
    solve). Every other pass asks the callback at ``address`` for the raw evaluation at the current iterate
    (request 1 when the previous pass wrote a new iterate, else 0); the callback leaves in ``where`` the addresses
    of the evaluation [0], of the iterate [1] and of a fresh array for the next iterate [2] (arrays it keeps
    alive), and the pass is :func:`_anderson_driver` on them. It returns when no row runs, at max_steps or when a
    step leaves 0 < live ≤ stop_live rows running (the caller compacts them), with status 0, or −RAISED when the
    callback kept an exception."""
    stepped, live = 0, 1
    shape = f.shape
    status = 0
    if first:                                   # the bookkeeping's start (the caller allocates it uninitialised)
        for i in range(best_res.shape[0]):
            best_res[i] = np.inf
            since_best[i] = 0
            codes[i] = _MAX_STEPS
            done[i] = False
            limit[i] = np.inf
    while live > 0 and (first or steps < max_steps):
        if not first:
            if call_back(address, stepped, 0.0, 0.0, 0.0) != SERVED:
                status = -RAISED
                break
            steps += 1
        out = numba.carray(_array_at(where[0], f), shape)
        y = numba.carray(_array_at(where[1], f), shape)
        y_bits = numba.carray(_array_at(where[1], norm_bits), shape)
        y_new = numba.carray(_array_at(where[2], f), shape)
        step = steps < max_steps
        slot = k % m
        count = k + 1 if k < m else m
        filled = k if k < m else m
        mapped = is_map and not first
        live = _anderson_driver(out, mapped, y, f, f_bits, y_bits, magnitude, inf_bits, norm_bits,
                                norms, best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit,
                                patience, G, F, H, slot, count, filled, beta, ridge, floor, step, y_new, was_done,
                                rows, W, V)
        stepped = 1 if (live > 0 and step) else 0
        k += stepped
        if first:
            for i in range(limit.shape[0]):
                limit[i] = max(best_res[i], limit_floor) * limit_factor
                if best_res[i] == np.inf:          # a start that did not count as an improvement (non-finite):
                    for j in range(shape[1]):      # its best iterate is the start itself
                        best_y[i, j] = y[i, j]
            first = False
        elif step and 0 < live <= stop_live:
            break
    return status, k, steps, stepped, live


def _prepare_anderson_loop(f, book, G, F, H, beta, ridge, floor, limit_floor=1e-300, limit_factor=1e8):
    """``run(evaluate, is_map, y, k, steps, max_steps, stop_live, start=None, conformed=False) -> (y, k, steps,
    live)``: the driver's passes from the iterate ``y`` (after ``k`` Anderson steps and ``steps`` evaluations) in
    one compiled call, :func:`_anderson_loop`, which asks Python for the raw evaluation ``evaluate(y) -> out`` (the
    map's G(y) with ``is_map``, else F(y); uncounted: the caller counts the evaluations from ``steps``; ``conformed``:
    ``out`` is known to be a C-contiguous array of y's dtype and shape, else it is checked) through the process's
    one callback (``deqcore.ode.loop_callback.DISPATCH``) and reads ``out`` where it lies. ``start``: F(y) at the
    start point, whose bookkeeping (with the limit in ``book`` still +inf) comes first and sets the divergence
    limit from ``limit_floor`` and ``limit_factor`` (the bookkeeping arrays in ``book`` need no initial values:
    the start pass sets them). As in the loop of Python calls, every iterate is a fresh
    array and each evaluation is read in place (no copies). Returns when no row runs, at ``max_steps``, or when
    a step leaves 0 < live ≤ ``stop_live`` rows running (compaction; −1: never); an exception raised by
    ``evaluate`` is raised again unchanged. What stays fixed during a solve is bound once, as in
    :func:`_prepare_anderson`."""
    best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit, patience = book
    dtype, shape = f.dtype, f.shape
    itype, magnitude, inf_bits = _BITS[dtype]
    batch = shape[0]
    norm_bits = np.empty(2, dtype=itype)
    where = np.zeros(3, dtype=np.int64)
    fixed = (f, f.view(itype), magnitude, inf_bits, norm_bits, norm_bits.view(dtype), best_y, best_res, since_best,
             codes, done, tol, float(rtol), cap, y_limit, limit, int(patience), G, F, H, G.shape[1],
             G.dtype.type(beta), float(ridge), float(floor), dtype.type(limit_floor), dtype.type(limit_factor),
             np.empty(batch, dtype=np.bool_), np.empty(batch, dtype=np.int64), *cpu_scratch(G.shape[1], batch),
             where)
    kernel, empty_like, addresses, conforming = _anderson_loop, np.empty_like, _addresses, _conforming
    ndarray = np.ndarray
    raised = [None]

    def run(evaluate, is_map, y, k, steps, max_steps, stop_live, start=None, conformed=False):
        if not y.flags.c_contiguous:
            y = np.ascontiguousarray(y)
        held = [y, empty_like(y), None]     # the iterate, the next one, the evaluation: alive while the loop reads

        def serve(request, t_a, t_b, t_c):
            try:
                if request:
                    held[0] = held[1]
                raw = evaluate(held[0])
                if not conformed or type(raw) is not ndarray:    # (a subclass is read as a plain array)
                    raw = conforming(raw, dtype, shape)
                held[2], held[1] = raw, empty_like(held[0])
                addresses(raw, held[0], held[1], where)
                return SERVED
            except BaseException as error:     # kept, raised again once the compiled call has returned
                raised[0] = error
                return RAISED

        if start is not None:
            held[2] = start = conforming(start, dtype, shape)
            addresses(start, y, held[1], where)
        status, k, steps, stepped, live = run_served(serve, lambda: kernel(
            DISPATCH, bool(is_map), *fixed, k, steps, min(max_steps, 2 ** 62), stop_live, start is not None))
        if status == -RAISED:
            error, raised[0] = raised[0], None
            raise error
        return held[1] if stepped else held[0], k, steps, live

    return run


def _conforming(raw, dtype, shape):
    """An evaluation as the compiled loop reads it: a C-contiguous array of the iterate's dtype and shape."""
    if type(raw) is np.ndarray and raw.dtype == dtype and raw.shape == shape and raw.flags.c_contiguous:
        return raw
    if getattr(raw, "shape", None) != shape or getattr(raw, "dtype", None) != dtype:
        raise ValueError(f"the problem's evaluation must return an array of shape {shape} and dtype {dtype}, got "
                         f"{getattr(raw, 'shape', type(raw).__name__)} {getattr(raw, 'dtype', '')}")
    return np.ascontiguousarray(raw)


anderson_driver_step_numba_cpu.prepare = _prepare_anderson
anderson_driver_step_numba_cpu.prepare_loop = _prepare_anderson_loop
plain_driver_step_numba_cpu.prepare = _prepare_plain
