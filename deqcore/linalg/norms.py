"""Euclidean row norms that neither overflow nor underflow.

``sqrt(sum(v * v))`` overflows once entries pass √max (1.8e19 in float32, 1.3e154 in float64) and loses
everything below √tiny: a problem posed at such a scale would see infinite or zero norms. :func:`row_norms` keeps
the plain sums where they are safe (bit for bit) and sums the other rows again, scaled by a power of 2.

>>> import numpy as np
>>> row_norms(np, np.array([[3.0, 4.0], [3e200, 4e200], [3e-200, 4e-200]]))
array([5.e+000, 5.e+200, 5.e-200])
"""

from __future__ import annotations

import numpy as np

__all__ = ["row_norms"]

#: per dtype, the sums of squares [low, high] taken as they are: none of their terms overflowed, and those that
#: underflowed are far below the sum's last bit
_SAFE_SQUARES = {np.dtype(t): (float(np.finfo(t).tiny / np.finfo(t).eps), float(np.finfo(t).max))
                 for t in (np.float32, np.float64)}


def row_norms(xp, v):
    """Euclidean norms of the rows of ``v`` (B, n); a row whose sum of squares overflows or underflows is summed
    again scaled by a power of 2, the others keep the plain sums. A row holding NaN gives NaN, one holding
    infinity (and no NaN) infinity. On NumPy the rescaling pass runs only when a row needs it; on a GPU it
    always runs (no host synchronisation)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        squares = xp.sum(v * v, axis=-1)
        low, high = _SAFE_SQUARES.get(v.dtype) or _SAFE_SQUARES[np.dtype(np.float64)]
        off = ~((squares >= low) & (squares <= high))          # (NaN too: it stays NaN)
        if xp is np and not off.any():
            return np.sqrt(squares)
        return xp.where(off, _scaled_norms(xp, v), xp.sqrt(squares))


def _scaled_norms(xp, v):
    """Row norms of ``v`` summed with each row's largest entry scaled to [1/2, 1) by a power of 2."""
    largest = xp.max(xp.abs(v), axis=-1)
    largest = xp.where(xp.isfinite(largest), largest, xp.zeros((), dtype=largest.dtype))
    _, exponent = xp.frexp(largest)
    scale = xp.ldexp(xp.ones((), dtype=v.dtype), -exponent.astype(np.int32))
    scaled = v * scale[..., None]
    return xp.sqrt(xp.sum(scaled * scaled, axis=-1)) / scale
