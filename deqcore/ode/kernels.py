"""Fused kernels of the ODE step: stage inputs, the new state with its scaled error, and per-sample control.

Every array is seen as rows: ``(R, m)`` with one row per sample of a batched problem (``R = 1`` otherwise);
per-row step sizes are float64 arrays ``(R,)``. Error sums are the squared scaled error
``Σ (err / (atol + rtol·max(|y|, |y_new|)))²`` of each row (the caller takes ``sqrt(sum / m)``, the RMS norm),
computed in the pass that forms the error, so the error itself is never stored.

- ``rk_stage(y, ks, a, h)``: ``y + h·Σ_j a_j k_j`` (one Runge–Kutta stage input; ``ks`` is ``(S, R, m)``).
- ``rk_combine_error(y, ks, b, e, h, y_new, compute_new, atol, rtol) -> (y_new, err_sq, y_absmax)``: the
  new state ``y + h·Σ b_j k_j`` (written into ``y_new`` when ``compute_new``; an FSAL method passes its last
  stage input instead), the error ``h·Σ e_j k_j`` reduced to its per-row sum, and ``max|y_new|`` per row.
- ``adams_predict(y, f0, f1, f2, h, h1, h2)`` and ``adams_correct_error(...)``: the same for the
  variable-step Adams methods in divided-difference form (see :mod:`deqcore.ode.adams`).
- ``ode_control(...)``: the step control of every row (RMS norm, accept/reject, PI factor, end of the span,
  steady-state test, divergence and step-size failure), with a two-number summary for the host. It is the
  only copy of that logic: unbatched problems run it on one host row, batched ones on the device.

Maxima propagate NaN (as ``xp.max`` does), so a row holding NaN is never accepted or converged.

>>> import numpy as np
>>> y, ks = np.ones((1, 2)), np.array([[[1.0, 2.0]], [[3.0, 4.0]]])
>>> rk_stage_reference(y, ks, np.array([0.5, 0.5]), np.array([0.1]))
array([[1.2, 1.3]])
>>> y_new, err_sq, y_max = rk_combine_error_reference(y, ks, np.array([0.5, 0.5]), np.array([1.0, -1.0]),
...                                                   np.array([0.1]), np.empty((1, 2)), True, 1.0, 0.0)
>>> y_new, err_sq.round(6), y_max
(array([[1.2, 1.3]]), array([0.08]), array([1.3]))
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace, register_kernel
from ..results import ReturnCode
from .controller import pi_factor_array, step_limit_array

__all__ = ["rk_stage_reference", "rk_combine_error_reference", "adams_predict_reference",
           "adams_correct_error_reference", "ode_control_reference"]

DIVERGED, DT_TOO_SMALL = int(ReturnCode.DIVERGED), int(ReturnCode.DT_TOO_SMALL)


def _col(xp, h, dtype):
    return xp.asarray(h, dtype=dtype)[:, None]


def _error_sums(xp, y, y_new, err, atol, rtol):
    scale = atol + rtol * xp.maximum(xp.abs(y), xp.abs(y_new))
    q = (err / scale).astype(xp.float64)
    return xp.sum(q * q, axis=1), xp.max(xp.abs(y_new), axis=1).astype(xp.float64)


def rk_stage_reference(y, ks, a, h):
    """Reference: ``y + h[:, None] · Σ_j a_j ks[j]`` over the first ``len(a)`` stages."""
    xp = get_namespace(y)
    acc = xp.tensordot(xp.asarray(a, dtype=y.dtype), ks[:a.shape[0]], axes=1)
    return y + _col(xp, h, y.dtype) * acc


def rk_combine_error_reference(y, ks, b, e, h, y_new, compute_new, atol, rtol):
    """Reference: new state (when ``compute_new``), per-row squared scaled error sums and ``max|y_new|``."""
    xp = get_namespace(y)
    hh = _col(xp, h, y.dtype)
    if compute_new:
        y_new[...] = y + hh * xp.tensordot(xp.asarray(b, dtype=y.dtype), ks[:b.shape[0]], axes=1)
    err = hh * xp.tensordot(xp.asarray(e, dtype=y.dtype), ks[:e.shape[0]], axes=1)
    err_sq, y_absmax = _error_sums(xp, y, y_new, err, atol, rtol)
    return y_new, err_sq, y_absmax


def _adams_differences(xp, f0, f1, f2, h, h1, h2):
    d1 = (f0 - f1) / h1
    d2 = (d1 - (f1 - f2) / h2) / (h1 + h2)
    w2 = h * h * (h / 3.0 + h1 / 2.0)  # ∫_0^h s (s + h₁) ds
    return d1, d2, w2


def adams_predict_reference(y, f0, f1, f2, h, h1, h2):
    """Reference: the Adams–Bashforth 3 prediction from the last three derivatives and step sizes."""
    xp = get_namespace(y)
    h, h1, h2 = (_col(xp, v, y.dtype) for v in (h, h1, h2))
    d1, d2, w2 = _adams_differences(xp, f0, f1, f2, h, h1, h2)
    return y + h * (f0 + (0.5 * h) * d1) + w2 * d2


def adams_correct_error_reference(y, y_pred, f_pred, f0, f1, f2, h, h1, h2, y_new, corrector, atol, rtol):
    """Reference: the Moulton correction (written into ``y_new`` when ``corrector``; else ``y_new`` is the
    prediction), the error sums of the next Newton term and ``max|y_new|``."""
    xp = get_namespace(y)
    h, h1, h2 = (_col(xp, v, y.dtype) for v in (h, h1, h2))
    d1, d2, w2 = _adams_differences(xp, f0, f1, f2, h, h1, h2)
    e2 = ((f_pred - f0) / h - d1) / (h + h1)
    e3 = (e2 - d2) / (h + h1 + h2)
    if corrector:
        y_new[...] = y_pred + w2 * (e2 - d2)
        # twice AM4 − AM3 (∫_0^h (s − h) s (s + h₁) ds): in PECE mode the new state also carries the
        # predictor's error through the corrector's h·β₀·∂f/∂y, which the Milne term does not see
        w3 = -h * h * h * (h / 6.0 + h1 / 3.0)
    else:
        p, q = h1, h1 + h2  # ∫_0^h s (s + h₁)(s + h₁ + h₂) ds
        w3 = h * h * (h * h / 4.0 + (p + q) * h / 3.0 + p * q / 2.0)
    err_sq, y_absmax = _error_sums(xp, y, y_new, w3 * e3, atol, rtol)
    return y_new, err_sq, y_absmax


def ode_control_reference(err_sq, y_absmax, res, threshold, exponent, t, h, h_next, err_prev, after_reject,
                          active, codes, accepted, rejected, nfev_rows, ok, summary, m, t_end, direction, steady,
                          big, eps, nfev):
    """Reference: the step control of every row after an attempt (all per-row arrays ``(R,)``).

    ``err_sq`` are the squared scaled error sums over the ``m`` elements of a row, ``y_absmax`` = max|y_new|,
    ``res`` = max|f(y_new)| (read when ``steady``), ``threshold`` the steady-state test's bound and
    ``exponent`` the power of h the row's local error scales with. For each active row: RMS error
    ``sqrt(err_sq / m)``; accept when ≤ 1 (advance ``t`` by ``direction·h``, landing exactly on ``t_end``,
    and remember the error); ``h_next = h · factor`` (PI controller), limited by
    :func:`~deqcore.ode.controller.step_limit` (at least its floor, at most the rest of the span
    ``|t_end − t|``, on t's float64 grid); count the attempt; then finish the row
    when it reached ``t_end`` or (``steady``) ``res ≤ threshold`` (SUCCESS), when an accepted state is not
    below ``big`` (DIVERGED), or when a rejected step cannot shrink below the floor (DT_TOO_SMALL,
    or DIVERGED for a non-finite error). ``ok`` receives the accepted rows, ``summary`` the number of
    accepted and of still active rows. Inactive rows keep ``h``.
    """
    xp = get_namespace(err_sq)
    err = xp.sqrt(err_sq / m)
    last = h >= xp.abs(t_end - t) * (1.0 - 1e-12)
    good = active & (err <= 1.0)
    xp.copyto(t, xp.where(last, t_end, t + direction * h), where=good)
    xp.copyto(err_prev, xp.maximum(err, 1e-4), where=good)
    factor = pi_factor_array(xp, err, err_prev, after_reject, exponent)
    xp.copyto(h_next, xp.where(active, h * factor, h))
    bad = active & ~good
    xp.copyto(after_reject, bad)
    accepted += good
    rejected += bad
    xp.copyto(nfev_rows, nfev, where=active)
    done = good & (t == t_end)
    if steady:
        done |= good & (res <= threshold)
    blown = good & ~(y_absmax < big)
    xp.copyto(codes, DIVERGED, where=blown)
    still = active & ~done & ~blown
    limited = step_limit_array(xp, good, h, h_next, t, t_end, direction, eps)   # never past t_end
    tiny = still & ~(limited > 0.0)
    xp.copyto(codes, xp.where(xp.isfinite(err), DT_TOO_SMALL, DIVERGED), where=tiny)
    xp.copyto(active, still & ~tiny)
    xp.copyto(h_next, limited, where=active)
    xp.copyto(ok, good)
    summary[0] = good.sum()
    summary[1] = active.sum()
    return t, h_next, err_prev, after_reject, active, codes, accepted, rejected, nfev_rows, ok, summary


# ---- examples (tests and the GPU bandwidth benchmark) and memory traffic ---------------------------------

def _sizes(size):
    return (3, 45) if size == "small" else (1024, 256)


def stage_example(rng, dtype, size="small"):
    rows, m = _sizes(size)
    ks = rng.standard_normal((7, rows, m)).astype(dtype)
    ks[5] = np.nan                          # a slot past len(a) is never read
    h = 10.0 ** rng.uniform(-3, 0, rows)
    return rng.standard_normal((rows, m)).astype(dtype), ks, rng.standard_normal(4), h


def stage_traffic(y, ks, a, h):
    return (2 + a.shape[0]) * y.nbytes + h.nbytes


def combine_example(rng, dtype, size="small"):
    """Tsit5's weights; row 1 holds a NaN stage (its sums are NaN), row 2 an infinite state."""
    from .tableaus import TSIT5

    rows, m = _sizes(size)
    ks = rng.standard_normal((7, rows, m)).astype(dtype)
    ks[3, 1, 4] = np.nan
    y = rng.standard_normal((rows, m)).astype(dtype)
    y[2, 0] = np.inf
    h = 10.0 ** rng.uniform(-3, 0, rows)
    return y, ks, TSIT5.b.copy(), TSIT5.b_err.copy(), h, np.zeros_like(y), True, 1e-6, 1e-3


def combine_traffic(y, ks, b, e, h, y_new, compute_new, atol, rtol):
    reads = (2 + len(e)) * y.nbytes + (0 if compute_new else y.nbytes) + h.nbytes
    return reads + (y.nbytes if compute_new else 0) + 2 * 8 * y.shape[0]


def _adams_rows(rng, dtype, size):
    rows, m = _sizes(size)
    arrays = [rng.standard_normal((rows, m)).astype(dtype) for _ in range(4)]
    h, h1, h2 = (10.0 ** rng.uniform(-2, 0, rows) for _ in range(3))
    return arrays, h, h1, h2


def predict_example(rng, dtype, size="small"):
    (y, f0, f1, f2), h, h1, h2 = _adams_rows(rng, dtype, size)
    return y, f0, f1, f2, h, h1, h2


def predict_traffic(y, f0, f1, f2, h, h1, h2):
    return 5 * y.nbytes + 3 * h.nbytes


def correct_example(rng, dtype, size="small"):
    (y, f0, f1, f2), h, h1, h2 = _adams_rows(rng, dtype, size)
    y_pred = y + (h[:, None] * f0).astype(dtype)
    f_pred = rng.standard_normal(y.shape).astype(dtype)
    f_pred[1, 2] = np.nan
    return y, y_pred, f_pred, f0, f1, f2, h, h1, h2, np.empty_like(y), True, 1e-6, 1e-3


def correct_traffic(y, y_pred, f_pred, f0, f1, f2, h, h1, h2, y_new, corrector, atol, rtol):
    return (7 if corrector else 6) * y.nbytes + 3 * h.nbytes + 2 * 8 * y.shape[0]


def control_example(rng, dtype, size="small"):
    """Rows that are accepted, rejected, converge, blow up, hit a NaN error, shrink to nothing or are idle."""
    rows, m = (12, 9) if size == "small" else (65536, 256)   # the control reads per-row numbers only
    res = 10.0 ** rng.integers(-9, 1, rows).astype(float)
    res[3] = np.nan
    err_sq = m * (10.0 ** rng.uniform(-4, 1, rows)) ** 2
    err_sq[5] = np.nan
    y_absmax = 10.0 ** rng.uniform(-1, 1, rows)
    y_absmax[7] = np.inf
    exponent = rng.choice([3.0, 4.0, 5.0], rows)
    t = rng.uniform(0, 10, rows)
    h = 10.0 ** rng.uniform(-3, 0, rows)
    h[9] = 1e-17
    after_reject = rng.random(rows) < 0.3
    active = rng.random(rows) < 0.8
    active[[5, 7, 9]] = True
    codes = np.zeros(rows, dtype=np.int64)
    counts = [rng.integers(0, 5, rows).astype(np.int64) for _ in range(3)]
    return (err_sq, y_absmax, res, np.full(rows, 1e-6), exponent, t, h, np.zeros(rows),
            rng.uniform(1e-4, 1, rows), after_reject, active, codes, *counts, np.zeros(rows, dtype=bool),
            np.zeros(2, dtype=np.int64), m, np.inf, 1.0, True, 1e150, float(np.finfo(np.float64).eps), 17)


def control_traffic(err_sq, *state_and_scalars):
    per_row = sum(a.dtype.itemsize for a in state_and_scalars[:15] if hasattr(a, "dtype"))
    return (err_sq.itemsize + per_row) * err_sq.shape[0]


# ---- registration ------------------------------------------------------------------------------------------

_MOD = "deqcore.ode.kernels_numba"


def _ptx(kernel, signature):
    return [(f"{_MOD}:{kernel}", signature)]


register_kernel(
    "rk_stage",
    reference=rk_stage_reference,
    numba_cpu=f"{_MOD}:rk_stage_numba_cpu",
    numba_cuda=f"{_MOD}:rk_stage_numba_cuda",
    cuda_ptx_targets=_ptx("rk_stage_cuda_kernel",
                          "void({t}[:, :], {t}[:, :, :], float64[:], float64[:], {t}[:, :])"),
    example="deqcore.ode.kernels:stage_example",
    traffic="deqcore.ode.kernels:stage_traffic",
)
register_kernel(
    "rk_combine_error",
    reference=rk_combine_error_reference,
    numba_cpu=f"{_MOD}:rk_combine_error_numba_cpu",
    numba_cuda=f"{_MOD}:rk_combine_error_numba_cuda",
    cuda_ptx_targets=_ptx("rk_combine_error_cuda_kernel",
                          "void({t}[:, :], {t}[:, :, :], float64[:], float64[:], float64[:], {t}[:, :], "
                          "boolean, float64, float64, float64[:, :], float64[:, :])"),
    example="deqcore.ode.kernels:combine_example",
    traffic="deqcore.ode.kernels:combine_traffic",
)
register_kernel(
    "adams_predict",
    reference=adams_predict_reference,
    numba_cpu=f"{_MOD}:adams_predict_numba_cpu",
    numba_cuda=f"{_MOD}:adams_predict_numba_cuda",
    cuda_ptx_targets=_ptx("adams_predict_cuda_kernel",
                          "void({t}[:, :], {t}[:, :], {t}[:, :], {t}[:, :], float64[:], float64[:], "
                          "float64[:], {t}[:, :])"),
    example="deqcore.ode.kernels:predict_example",
    traffic="deqcore.ode.kernels:predict_traffic",
)
register_kernel(
    "adams_correct_error",
    reference=adams_correct_error_reference,
    numba_cpu=f"{_MOD}:adams_correct_error_numba_cpu",
    numba_cuda=f"{_MOD}:adams_correct_error_numba_cuda",
    cuda_ptx_targets=_ptx("adams_correct_error_cuda_kernel",
                          "void({t}[:, :], {t}[:, :], {t}[:, :], {t}[:, :], {t}[:, :], {t}[:, :], "
                          "float64[:], float64[:], float64[:], {t}[:, :], boolean, float64, float64, "
                          "float64[:, :], float64[:, :])"),
    example="deqcore.ode.kernels:correct_example",
    traffic="deqcore.ode.kernels:correct_traffic",
)
register_kernel(
    "ode_control",
    reference=ode_control_reference,
    numba_cpu=f"{_MOD}:ode_control_numba_cpu",
    numba_cuda=f"{_MOD}:ode_control_numba_cuda",
    cuda_ptx_targets=_ptx("ode_control_cuda_kernel",
                          "void(float64[:], float64[:], float64[:], float64[:], float64[:], float64[:], "
                          "float64[:], float64[:], float64[:], boolean[:], boolean[:], int64[:], int64[:], "
                          "int64[:], int64[:], boolean[:], int64[:], int64, float64, float64, boolean, "
                          "float64, float64, int64)"),
    example="deqcore.ode.kernels:control_example",
    traffic="deqcore.ode.kernels:control_traffic",
)
