"""Fused driver steps: the driver's bookkeeping and a solver's step in one call per iteration.

Each kernel takes ``out``, the problem's raw evaluation at the current iterate ``y`` (the fixed-point map G(y)
when ``is_map``, else the residual F(y)), writes the residual f = G(y) − y (or F(y)) into the buffer ``f``,
runs the driver's bookkeeping on (f, y) exactly as ``driver_update`` does (norms, best iterate, codes, ``done``),
and then, when ``step`` is true and at least one row is still running, the solver's step from (y, f):

- ``anderson_driver_step(out, is_map, y, f, <bookkeeping>, G, F, H, slot, count, filled, beta, ridge, floor,
  step)``: the step of ``anderson_step`` on the rows still running; a finished row keeps its iterate and its
  ring (no more traffic for it), and a row finishing now gets its slots from ``filled`` (the slots written so
  far, min(k, m) after k steps) on zeroed, so its ring holds its own history only;
- ``plain_driver_step(out, is_map, y, f, <bookkeeping>, damping, step)``: y_new = y + damping·f (y + f for
  damping 1, as :class:`~deqcore.root.FixedPointIteration` computes it).

``<bookkeeping>`` is ``driver_update``'s arguments after ``y``: best_y, best_res, since_best, codes, done, tol,
rtol, cap, y_limit, limit, patience. Both return ``(y_new, live, f, best_y, best_res, since_best, codes, done,
...)``: the new iterate (``y`` itself when no step was taken), the number of rows still running (the loop's
"all done?" test, with no extra pass), and the arrays updated in place.

The references compose the reference kernels (the ground truth); the Numba CPU versions run the same
arithmetic in one compiled call, so the unfused loop's per-step array operations, allocations and dispatches
are gone; Anderson's Numba CPU version also runs whole solves in one compiled loop that asks Python for each
evaluation through a callback (``anderson_driver_step_numba_cpu.prepare_loop``). On a GPU the driver keeps the
unfused CUDA kernels.

>>> import numpy as np
>>> y, g = np.array([[1.0, 2.0]]), np.array([[1.5, 1.0]])
>>> book = (y.copy(), np.full(1, np.inf), np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, bool),
...         np.full(1, 1e-6), 0.0, np.zeros(1), np.full(1, np.inf), np.full(1, np.inf), 25)
>>> out = plain_driver_step_reference(g, True, y, np.empty_like(y), *book, 0.5, True)
>>> out[0], int(out[1]), out[2]                  # y + 0.5·(G(y) − y), one row running, f = G(y) − y
(array([[1.25, 1.5 ]]), 1, array([[ 0.5, -1. ]]))
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace, register_kernel
from .anderson_kernels import anderson_step_reference
from .driver_kernels import driver_example, driver_update_reference

__all__ = ["anderson_driver_step_reference", "plain_driver_step_reference"]


def _residual_and_update(out, is_map, y, f, book):
    xp = get_namespace(y)
    with np.errstate(invalid="ignore", over="ignore"):     # non-finite rows end DIVERGED
        if is_map:
            xp.subtract(out, y, out=f)
        else:
            f[...] = out
        driver_update_reference(f, y, *book)
    done = book[4]
    return int(done.shape[0] - xp.count_nonzero(done))


def anderson_driver_step_reference(out, is_map, y, f, best_y, best_res, since_best, codes, done, tol, rtol, cap,
                                   y_limit, limit, patience, G, F, H, slot, count, filled, beta, ridge, floor, step):
    """Reference: the residual, ``driver_update_reference``; rows that have just finished get their ring slots
    from ``filled`` on zeroed; if stepping, ``anderson_step_reference`` on the running rows (finished rows keep
    their iterate)."""
    xp = get_namespace(y)
    was_done = done.copy()
    book = (best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit, patience)
    live = _residual_and_update(out, is_map, y, f, book)
    finished = xp.nonzero(done & ~was_done)[0]
    G[finished, filled:] = 0
    F[finished, filled:] = 0
    y_new = y
    if step and live:
        running = xp.nonzero(~done)[0]
        y_new = y.copy()
        with np.errstate(invalid="ignore", over="ignore"):
            y_run, G_run, F_run, H_run = anderson_step_reference(G[running], F[running], H[running], y[running],
                                                                 f[running], slot, count, beta, ridge, floor)
        y_new[running], G[running], F[running], H[running] = y_run, G_run, F_run, H_run
    return (y_new, np.int64(live), f, best_y, best_res, since_best, codes, done, G, F, H)


def plain_driver_step_reference(out, is_map, y, f, best_y, best_res, since_best, codes, done, tol, rtol, cap,
                                y_limit, limit, patience, damping, step):
    """Reference: the residual, ``driver_update_reference``, then y + damping·f if stepping."""
    book = (best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit, patience)
    live = _residual_and_update(out, is_map, y, f, book)
    y_new = y
    if step and live:
        with np.errstate(invalid="ignore", over="ignore"):
            y_new = y + f if damping == 1.0 else y + damping * f
    return (y_new, np.int64(live), f, best_y, best_res, since_best, codes, done)


def _book_example(rng, dtype):
    f, y, *book = driver_example(rng, dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        out = (y + f).astype(dtype)      # G(y), so f = G(y) − y is about the driver example's residual
    return out, y, f, book


def anderson_example(rng, dtype, size="small"):
    """The driver example's rows (converging, diverging, stalling, done) with a ring filling its 4th slot."""
    out, y, _, book = _book_example(rng, dtype)
    batch, n = y.shape
    m, count = 6, 4
    G = rng.standard_normal((batch, m, n)).astype(dtype)
    F = rng.standard_normal((batch, m, n)).astype(dtype)
    G[:, count:] = F[:, count:] = np.nan
    H = F @ F.transpose(0, 2, 1)
    H = (0.5 * (H + H.transpose(0, 2, 1))).astype(dtype)
    floor = float(np.sqrt(np.finfo(dtype).tiny))
    return (out, True, y, np.empty_like(y), *book, G, F, H, count - 1, count, count - 1, 1.0, 1e-8, floor, True)


def plain_example(rng, dtype, size="small"):
    """The driver example's rows, the map's output given as F(y), a damped step."""
    _, y, f, book = _book_example(rng, dtype)
    return (f, False, y, np.empty_like(y), *book, 0.75, True)


register_kernel(
    "anderson_driver_step",
    reference=anderson_driver_step_reference,
    numba_cpu="deqcore.root.step_kernels_numba:anderson_driver_step_numba_cpu",
    example="deqcore.root.step_kernels:anderson_example",
)
register_kernel(
    "plain_driver_step",
    reference=plain_driver_step_reference,
    numba_cpu="deqcore.root.step_kernels_numba:plain_driver_step_numba_cpu",
    example="deqcore.root.step_kernels:plain_example",
)
