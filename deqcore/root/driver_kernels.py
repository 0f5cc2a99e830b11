"""The fused kernel of the driver loop.

``driver_update(f, y, best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit, patience)``
is the whole per-step bookkeeping of the driver (start point included) in one pass per live row: the residual
and iterate norms (max-norms; a row holding NaN gives +inf, see ``row_norms_reference``), the best iterate
(copied into ``best_y`` where the residual improved or the row converged), the steps since the last
improvement, and the termination test (converged, diverged, stalled) with its return code; rows already done
are not read. It replaces about fifteen array operations (each a pass over memory, and on a GPU a launch). The
CPU versions reduce on the floats' bit patterns, which vectorises; all versions share the scalar helpers.

>>> import numpy as np
>>> row_norms_reference(np.array([[1.0, -3.0], [np.nan, 0.0]]), np.array([[2.0, 0.0], [0.0, -5.0]]))
(array([ 3., inf]), array([2., 5.]))
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace, register_kernel
from ..results import ReturnCode

__all__ = ["row_norms_reference", "driver_update_reference", "start_tolerance_reference", "start_point_reference",
           "all_finite_reference", "SUCCESS", "DIVERGED", "STALLED"]

SUCCESS, DIVERGED, STALLED = (int(c) for c in (ReturnCode.SUCCESS, ReturnCode.DIVERGED, ReturnCode.STALLED))


def row_norms_reference(f, y):
    """(max|f|, max|y|) per row, NaN as +inf."""
    xp = get_namespace(f, y)
    nf, ny = xp.abs(f).max(axis=1), xp.abs(y).max(axis=1)
    return xp.where(xp.isnan(nf), xp.inf, nf), xp.where(xp.isnan(ny), xp.inf, ny)


def driver_update_reference(f, y, best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit,
                            patience):
    """Reference implementation; updates ``best_y``, ``best_res``, ``since_best``, ``codes`` and ``done`` in place
    and returns them.

    A live row whose iterate holds NaN or infinity, or grows to ``y_limit`` or beyond, diverges; otherwise it
    converges when max|f| ≤ tol + rtol·min(max|y|, cap) (per-row ``tol`` and ``cap`` fixed for the solve: the
    relative part can never exceed rtol·cap, however far an iterate runs), diverges when max|f| is not below
    its ``limit`` (non-finite included), and stalls after ``patience`` steps without a lower residual. A
    converged row's iterate is always copied into ``best_y``: the value returned for a SUCCESS is the iterate
    that passed the test.

    >>> import numpy as np
    >>> f, y = np.array([[1e-9], [1.0], [0.0]]), np.array([[1.0], [2.0], [np.inf]])
    >>> best_y, best_res, since = np.zeros((3, 1)), np.full(3, np.inf), np.zeros(3, np.int64)
    >>> codes, done, tol = np.zeros(3, np.int64), np.zeros(3, bool), np.full(3, 1e-6)
    >>> cap, y_limit, limit = np.zeros(3), np.full(3, np.inf), np.full(3, 1e8)
    >>> out = driver_update_reference(f, y, best_y, best_res, since, codes, done, tol, 0.0, cap, y_limit, limit, 25)
    >>> out[0].tolist(), out[3].tolist(), out[4].tolist()     # row 0 converged, row 2's iterate is infinite
    ([[1.0], [2.0], [0.0]], [0, 0, 2], [True, False, True])
    """
    xp = get_namespace(f)
    res, y_norm = row_norms_reference(f, y)
    live = ~done
    bounded = y_norm < y_limit
    threshold = tol.astype(np.float64) + rtol * xp.minimum(y_norm, cap).astype(np.float64)   # as the Numba versions
    converged = bounded & (res <= threshold)
    improved = live & bounded & ((res < best_res) | converged)
    xp.copyto(best_y, y, where=improved[:, None])
    xp.copyto(best_res, res, where=improved)
    xp.copyto(since_best, xp.where(improved, 0, since_best + 1), where=live)
    exploded = ~bounded | ~(res < limit)
    stalled = since_best >= patience
    finished = live & (converged | exploded | stalled)
    outcome = xp.where(converged, SUCCESS, xp.where(exploded, DIVERGED, STALLED))
    xp.copyto(codes, outcome, where=finished)
    done |= finished
    return best_y, best_res, since_best, codes, done


def driver_example(rng, dtype, size="small"):
    """Rows that converge, improve, stall, diverge (NaN and growth) and rows already done."""
    batch, n = (12, 45) if size == "small" else (4096, 256)
    scale = 10.0 ** rng.integers(-9, 2, size=(batch, 1))
    f = (scale * rng.standard_normal((batch, n))).astype(dtype)
    f[1, 3] = np.nan
    y = rng.standard_normal((batch, n)).astype(dtype)
    best_y = rng.standard_normal((batch, n)).astype(dtype)
    best_res = (10.0 ** rng.integers(-10, 2, size=batch)).astype(dtype)
    since_best = rng.integers(0, 30, size=batch).astype(np.int64)
    codes = np.zeros(batch, dtype=np.int64)
    done = rng.random(batch) < 0.25
    y[2, 0] = np.inf                                                    # a non-finite iterate: DIVERGED
    y_limit = np.full(batch, np.inf, dtype=dtype)
    y_limit[4] = 0.5 * np.abs(y[4]).max()                               # a runaway iterate: DIVERGED
    done[2:5] = False
    limit = (10.0 ** rng.integers(-3, 8, size=batch)).astype(dtype)
    tol = (10.0 ** rng.integers(-9, 1, size=batch)).astype(dtype)
    cap = (10.0 ** rng.integers(-3, 3, size=batch)).astype(dtype)
    tol[3] = 10.0 * np.abs(f[3]).max()                                  # converges without improving on best_res
    best_res[3] = 0.5 * tol[3]
    return f, y, best_y, best_res, since_best, codes, done, tol, 1e-3, cap, y_limit, limit, 25


def driver_traffic(f, y, best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit, patience):
    """Read f and y, write best_y (its worst case: every row improves), and the per-row vectors."""
    per_row = sum(a.dtype.itemsize for a in (best_res, since_best, codes, done, tol, cap, y_limit, limit))
    return 3 * f.nbytes + 2 * per_row * f.shape[0]


_DRIVER_SIG = ("void({t}[:, :], {t}[:, :], {t}[:, :], {t}[:], int64[:], int64[:], boolean[:], {t}[:], float64, {t}[:], "
               "{t}[:], {t}[:], int64)")
register_kernel(
    "driver_update",
    reference=driver_update_reference,
    numba_cpu="deqcore.root.driver_kernels_numba:driver_update_numba_cpu",
    numba_cuda="deqcore.root.driver_kernels_numba:driver_update_numba_cuda",
    cuda_ptx_targets=[("deqcore.root.driver_kernels_numba:driver_update_cuda_kernel", _DRIVER_SIG)],
    example="deqcore.root.driver_kernels:driver_example",
    traffic="deqcore.root.driver_kernels:driver_traffic",
)


def start_tolerance_reference(y0, f0, atol, relative_to_iterate, eps):
    """The per-sample test fixed at the start point (see :meth:`deqcore.root.RootProblem.tolerance`):
    ``(tol, cap, y_limit)`` in y0's dtype. tol = atol; relative to the iterate, cap = s0 = max(max|y0|,
    max|y0 + f0|) and y_limit = s0/√eps (inf where s0 = 0); relative to the residual, cap = max|f0| and
    y_limit = inf. A non-finite scale counts as 0.

    >>> import numpy as np
    >>> tol, cap, y_limit = start_tolerance_reference(np.array([[1.0, -3.0]]), np.array([[-0.5, 1.5]]), 1e-6,
    ...                                               True, 2.0 ** -52)
    >>> tol.tolist(), cap.tolist(), y_limit.tolist()
    ([1e-06], [3.0], [201326592.0])
    """
    xp = get_namespace(y0)
    dtype, batch = y0.dtype, y0.shape[0]

    def finite(a):
        return xp.where(xp.isfinite(a), a, 0).astype(dtype)

    tol = xp.full(batch, atol, dtype=dtype)
    if not relative_to_iterate:
        return tol, finite(xp.abs(f0).max(axis=1)), xp.full(batch, xp.inf, dtype=dtype)
    work = xp.abs(y0)
    s0 = work.max(axis=1)
    xp.add(y0, f0, out=work)                                  # G(y0), as y0 + F(y0)
    xp.abs(work, out=work)
    s0 = finite(xp.maximum(s0, work.max(axis=1), out=s0))
    return tol, s0, xp.where(s0 > 0, s0 / np.sqrt(eps), xp.inf).astype(dtype)


def tolerance_example(rng, dtype, size="small"):
    """Rows of every kind: regular, one holding NaN in y0, one with an infinite residual, one all zero."""
    batch, n = (6, 9) if size == "small" else (1024, 256)
    y0 = rng.standard_normal((batch, n)).astype(dtype)
    f0 = (0.3 * rng.standard_normal((batch, n))).astype(dtype)
    y0[1, 4] = np.nan
    f0[2, 0] = np.inf
    y0[3] = f0[3] = 0
    return y0, f0, 1e-6, True, float(np.finfo(dtype).eps)


register_kernel(
    "start_tolerance",
    reference=start_tolerance_reference,
    numba_cpu="deqcore.root.driver_kernels_numba:start_tolerance_numba_cpu",
    example="deqcore.root.driver_kernels:tolerance_example",
)


def start_point_reference(y0, raw0, is_map, atol, relative_to_iterate, eps):
    """The start point's residual and test in one: ``(f0, tol, cap, y_limit)`` with f0 = raw0 − y0 when ``raw0``
    is a fixed-point map's evaluation G(y0) (``is_map``), else f0 = raw0, and (tol, cap, y_limit) from
    :func:`start_tolerance_reference` on (y0, f0).

    >>> import numpy as np
    >>> f0, tol, cap, y_limit = start_point_reference(np.array([[1.0, -3.0]]), np.array([[0.5, -1.5]]), True,
    ...                                               1e-6, True, 2.0 ** -52)
    >>> f0.tolist(), cap.tolist()
    ([[-0.5, 1.5]], [3.0])
    """
    f0 = raw0 - y0 if is_map else raw0.copy()
    return (f0,) + start_tolerance_reference(y0, f0, atol, relative_to_iterate, eps)


def start_point_example(rng, dtype, size="small"):
    """:func:`tolerance_example`'s rows, the start's evaluation given as a fixed-point map's G(y0) = y0 + f0."""
    y0, f0, atol, relative, eps = tolerance_example(rng, dtype, size)
    return y0, (y0 + f0).astype(dtype), True, atol, relative, eps


register_kernel(
    "start_point",
    reference=start_point_reference,
    numba_cpu="deqcore.root.driver_kernels_numba:start_point_numba_cpu",
    example="deqcore.root.driver_kernels:start_point_example",
)


def all_finite_reference(x):
    """True when ``x`` holds no NaN or infinity.

    >>> import numpy as np
    >>> all_finite_reference(np.array([1.0, -0.0])), all_finite_reference(np.array([1.0, -np.inf]))
    (True, False)
    """
    return bool(get_namespace(x).isfinite(x).all())


register_kernel(
    "all_finite",
    reference=all_finite_reference,
    numba_cpu="deqcore.root.driver_kernels_numba:all_finite_numba_cpu",
)
