"""Numba CPU versions of the fused driver steps (loaded lazily through the kernel registry)."""

from __future__ import annotations

import numpy as np

from ..backend.numba_tools import CACHE, numba
from .anderson_kernels_numba import cpu_scratch, step_rows
from .driver_kernels_numba import _BITS, NO_CODE, driver_decision

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


anderson_driver_step_numba_cpu.prepare = _prepare_anderson
plain_driver_step_numba_cpu.prepare = _prepare_plain
