"""Step-size control shared by every ODE method: the PI controller's factor (a scalar function compiled into
the Numba control kernels, and the same formula on arrays for the reference kernel) and Hairer's automatic
initial step. The weighted RMS error norm is formed by the fused step kernels (:mod:`deqcore.ode.kernels`).

Proportional–integral control (Gustafsson; Hairer–Wanner II §IV.2): ``h_new = h · clip(0.9 · err^−β₁ ·
err_prev^β₂, 1/5, 10)`` with ``β₁ = 7/(10p)``, ``β₂ = 2/(5p)``, where ``p`` is the exponent of the local error
estimate (error ∝ hᵖ). After a rejection the factor is ``max(1/5, 0.9 · err^−1/p)``, and the step after a
rejection may not grow.

>>> import numpy as np
>>> float(pi_factor_array(np, np.array([1.0]), np.array([1.0]), np.array([False]), 5.0)[0])
0.9
>>> float(pi_factor_array(np, np.array([0.0]), np.array([1.0]), np.array([False]), 5.0)[0])   # capped growth
10.0
"""

from __future__ import annotations

import math
import numpy as np

from ..backend import to_host
from ..results import ReturnCode

__all__ = ["pi_factor", "pi_factor_array", "step_limit", "step_limit_array", "control_step", "make_control_step",
           "initial_step", "initial_step_host"]

SAFETY = 0.9
FACTOR_MIN = 0.2
FACTOR_MAX = 10.0
DIVERGED, DT_TOO_SMALL = int(ReturnCode.DIVERGED), int(ReturnCode.DT_TOO_SMALL)


def pi_factor(err, err_prev, after_reject, exponent):
    """The PI controller's step-size factor for one row (plain Python floats; Numba compiles this function
    into its control kernels). A non-finite error gives the smallest factor.

    >>> pi_factor(1.0, 1.0, False, 5), pi_factor(0.0, 1.0, False, 5), pi_factor(0.0, 1.0, True, 5)
    (0.9, 10.0, 1.0)
    >>> pi_factor(float("nan"), 1.0, False, 5)
    0.2
    """
    e = err if (err > 1e-10 or err != err) else 1e-10
    if e <= 1.0:
        factor = SAFETY * e ** (-(0.7 / exponent)) * err_prev ** (0.4 / exponent)
        return min(max(factor, FACTOR_MIN), 1.0 if after_reject else FACTOR_MAX)
    if not math.isfinite(e):
        return FACTOR_MIN
    return min(max(FACTOR_MIN, SAFETY * e ** (-1.0 / exponent)), 1.0)


def step_limit(good, h, h_next, t, t_end, direction, eps):
    """The next step size of a row at time ``t`` after an attempt of size ``h`` (``good``: accepted) for which
    the controller proposes ``h_next``; 0.0 where the row cannot go on (a rejected step that cannot shrink).
    Plain Python floats (Numba compiles this function into the control kernels and the compiled loops).

    The floor is relative to ``|t|``: ``2·eps·|t|`` (eps that of the float64 time: two to four units in the
    last place of t), with ``min(1, |t_end|)`` in place of ``|t|`` where that is larger, so a span near 0 has
    a floor of its own scale, never an absolute one; it never exceeds an eighth of the rest of the span (but
    stays at least ``eps·|t|``, at least one unit in the last place of t). A proposal below the floor is raised to it (as SciPy does); a rejected step whose successor would not
    be smaller ends the row. The step is then clipped to the rest of the span and rounded to what ``t`` can
    take (``|(t + direction·h) − t|``), so the time advances by exactly the step the method takes.

    >>> step_limit(True, 1e-3, 1e-20, 1.0, 2.0, 1.0, 2.0 ** -52) == 2 * 2.0 ** -52      # raised to the floor
    True
    >>> step_limit(True, 1e-14, 1e-16, 0.0, 1e-12, 1.0, 2.0 ** -52)      # a span near 0: a floor of its scale
    1e-16
    >>> step_limit(False, 2 * 2.0 ** -52, 1e-17, 1.0, 2.0, 1.0, 2.0 ** -52)   # rejected at the floor: the end
    0.0
    """
    rest = abs(t_end - t)
    at = abs(t)
    floor = 2.0 * eps * max(at, min(1.0, abs(t_end)))
    floor = min(floor, max(0.125 * rest, eps * at))
    h_new = h_next if h_next > floor else floor
    h_new = h_new if h_new < rest else rest
    h_new = abs((t + direction * h_new) - t)
    if not good and not h_new < h:
        return 0.0
    return h_new


def step_limit_array(xp, good, h, h_next, t, t_end, direction, eps):
    """:func:`step_limit` on per-row arrays of the namespace ``xp``."""
    rest = xp.abs(t_end - t)
    at = xp.abs(t)
    floor = 2.0 * eps * xp.maximum(at, min(1.0, abs(t_end)))
    floor = xp.minimum(floor, xp.maximum(0.125 * rest, eps * at))
    h_new = xp.where(h_next > floor, h_next, floor)
    h_new = xp.where(h_new < rest, h_new, rest)
    h_new = xp.abs((t + direction * h_new) - t)
    return xp.where(~good & ~(h_new < h), 0.0, h_new)


def make_control_step(pi_factor, step_limit=step_limit):
    """The step control of one row as a scalar function (plain Python floats in, a tuple out), built around
    ``pi_factor`` and ``step_limit``: the Python :func:`pi_factor` and :func:`step_limit` for the host loop of
    an unbatched problem (:data:`control_step`), their Numba compilations for the control kernels, which inline
    the function this returns (closures over compiled functions compile). The one copy of the per-row control
    logic; see ``deqcore.ode.kernels.ode_control_reference`` for what it decides.

    ``control(err_sq, y_absmax, res, threshold, exponent, t, h, err_prev, after_reject, m, t_end, direction,
    steady, big, eps) -> (good, active, code, t, h_next, err_prev, after_reject)`` for a row that was active
    (``code``: 0, or the failure code the row ends with).
    """

    def control(err_sq, y_absmax, res, threshold, exponent, t, h, err_prev, after_reject, m, t_end, direction,
                steady, big, eps):
        err = math.sqrt(err_sq / m)
        good = err <= 1.0
        if good:
            last = h >= abs(t_end - t) * (1.0 - 1e-12)
            t = t_end if last else t + direction * h
            err_prev = max(err, 1e-4)
        h_next = h * pi_factor(err, err_prev, after_reject, exponent)
        active = True
        code = 0
        if good and (t == t_end or (steady and res <= threshold)):
            active = False
        if good and not (y_absmax < big):
            code = DIVERGED
            active = False
        if active:
            limited = step_limit(good, h, h_next, t, t_end, direction, eps)   # never past t_end
            if limited > 0.0:
                h_next = limited
            else:
                code = DT_TOO_SMALL if math.isfinite(err) else DIVERGED
                active = False
        return good, active, code, t, h_next, err_prev, not good

    return control


#: :func:`make_control_step` on the Python :func:`pi_factor`: the host control of an unbatched problem
control_step = make_control_step(pi_factor)


def pi_factor_array(xp, err, err_prev, after_reject, exponent):
    """:func:`pi_factor` on arrays of the namespace ``xp`` (one factor per row; ``exponent`` a number or an
    array); call it under ``errstate(all="ignore")`` (non-finite errors give the smallest factor)."""
    e = xp.maximum(err, 1e-10)
    accepted = SAFETY * e ** (-(0.7 / exponent)) * err_prev ** (0.4 / exponent)
    accepted = xp.minimum(xp.maximum(accepted, FACTOR_MIN), xp.where(after_reject, 1.0, FACTOR_MAX))
    rejected = xp.minimum(xp.maximum(FACTOR_MIN, SAFETY * e ** (-1.0 / exponent)), 1.0)
    rejected = xp.where(xp.isfinite(e), rejected, FACTOR_MIN)
    return xp.where(e <= 1.0, accepted, rejected)


@np.errstate(divide="ignore", invalid="ignore")
def initial_step(xp, f, t0, y0, f0, direction, atol, rtol, error_exponent, batched, span):
    """Hairer–Nørsett–Wanner I §II.4 starting step (costs one f evaluation); returns host ``|h|`` per sample.

    ``f(t, y, h)`` evaluates the right-hand side at ``t + h`` (h a per-sample host array).
    """
    scale = atol + rtol * xp.abs(y0)
    axis = tuple(range(1, y0.ndim)) if batched else None
    n = y0[0].size if batched else y0.size

    def rms(*arrays):
        """RMS(a / scale) per sample of each array, on the host (one transfer for all)."""
        sums = [xp.sum(q * q, axis=axis) for q in (a / scale for a in arrays)]
        return np.sqrt(to_host(xp.stack(sums)).reshape(len(arrays), -1) / n)

    d0, d1 = rms(y0, f0)
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = np.minimum(np.where(small, 1e-6, 0.01 * d0 / np.where(small, 1.0, d1)), span)
    # a non-finite f0 (or y0 scale) gives no h0: the trial point stays a time inside the span, never t0 + NaN
    h0 = np.where(np.isfinite(h0) & (h0 > 0), h0, np.minimum(1e-6, span))
    y1 = y0 + _broadcast(xp, direction * h0, y0, batched) * f0
    f1 = f(t0, y1, direction * h0)
    d2 = rms(f1 - f0)[0] / h0
    dmax = np.maximum(d1, d2)
    h1 = np.where(dmax <= 1e-15, np.maximum(1e-6, h0 * 1e-3),
                  (0.01 / np.where(dmax <= 1e-15, 1.0, dmax)) ** (1.0 / error_exponent))
    h = np.minimum(np.minimum(100.0 * h0, h1), span)
    return np.where(np.isfinite(h) & (h > 0), h, 1e-6)


def _np_min(a, b):
    """``np.minimum`` of two floats (NaN if either is NaN)."""
    return a if (a != a or a <= b) else b


def _np_max(a, b):
    """``np.maximum`` of two floats (NaN if either is NaN)."""
    return a if (a != a or a >= b) else b


_sum = np.add.reduce      # np.sum of an array over all its axes, without np.sum's wrapper


def initial_step_host(f, t0, y0, f0, direction, atol, rtol, error_exponent, span):
    """:func:`initial_step` of one unbatched NumPy state, with its scalar arithmetic on Python floats: the same
    operations in the same order (so the same step, to the last bit), without the small-array overhead.
    ``f(t, y)`` evaluates the right-hand side; returns ``|h|`` as a float.

    >>> import numpy as np
    >>> y0 = np.array([1.0, 2.0]); rhs = lambda t, y: -y
    >>> a = initial_step(np, lambda t, y, dh: rhs(t + dh, y), np.zeros(1), y0, rhs(0.0, y0), 1.0, 1e-6, 1e-3, 5,
    ...                  False, 10.0)
    >>> b = initial_step_host(rhs, 0.0, y0, rhs(0.0, y0), 1.0, 1e-6, 1e-3, 5, 10.0)
    >>> float(a[0]) == b
    True
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = atol + rtol * np.abs(y0)
        n = y0.size
        q = y0 / scale
        d0 = math.sqrt(float(_sum(q * q, axis=None)) / n)
        q = f0 / scale
        d1 = math.sqrt(float(_sum(q * q, axis=None)) / n)
        if d0 < 1e-5 or d1 < 1e-5:
            h0 = _np_min(1e-6, span)
        else:
            h0 = _np_min(0.01 * d0 / d1, span)
        if not (math.isfinite(h0) and h0 > 0):     # f0 non-finite: a trial time inside the span, never NaN
            h0 = _np_min(1e-6, span)
        dh = direction * h0
        f1 = f(t0 + dh, y0 + dh * f0)
        q = (f1 - f0) / scale
        # h0 may be 0 (f0 infinite): NumPy's division gives inf/NaN where Python's would raise
        d2 = float(np.float64(math.sqrt(float(_sum(q * q, axis=None)) / n)) / h0)
        dmax = _np_max(d1, d2)
        if dmax <= 1e-15:
            h1 = _np_max(1e-6, h0 * 1e-3)
        else:       # NumPy's power, as initial_step forms it (its last bit may differ from math.pow)
            h1 = float(np.power(np.array([0.01 / dmax]), 1.0 / error_exponent)[0])
        h = _np_min(_np_min(100.0 * h0, h1), span)
    return h if (math.isfinite(h) and h > 0) else 1e-6


def _broadcast(xp, h, y, batched):
    """Host per-sample step sizes as a scalar (unbatched) or a device array broadcastable against y."""
    if not batched:
        return float(h[0])
    return xp.asarray(h, dtype=y.dtype).reshape((-1,) + (1,) * (y.ndim - 1))
