"""Array namespaces (NumPy on the CPU, CuPy on NVIDIA GPUs), dtype and device helpers.

CuPy is imported only when an input already is a CuPy array, so deqcore never needs a GPU to import.

>>> import numpy as np
>>> get_namespace(np.ones(3)) is np
True
>>> float_dtype(np.arange(3)).name
'float64'
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = [
    "get_namespace",
    "is_cupy_array",
    "is_cupy_namespace",
    "float_dtype",
    "check_float_array",
    "check_finite",
    "to_host",
    "to_namespace",
    "synchronize",
    "cupy_available",
]


def is_cupy_array(x) -> bool:
    """True when ``x`` is a CuPy array (without importing CuPy)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def is_cupy_namespace(xp) -> bool:
    """True when ``xp`` is the cupy module."""
    return getattr(xp, "__name__", "") == "cupy"


def get_namespace(*arrays):
    """numpy or cupy, from the arrays given (scalars and None are ignored).

    Mixing NumPy and CuPy arrays raises ``TypeError``: deqcore never moves data between devices silently.

    >>> import numpy as np, deqcore as dq
    >>> dq.get_namespace(np.ones(2), None, 3.0) is np        # scalars and None are skipped
    True
    >>> dq.get_namespace() is np                              # nothing to go by: NumPy
    True
    """
    found = None
    for a in arrays:
        if a is None or np.isscalar(a):
            continue
        if is_cupy_array(a):
            import cupy

            xp = cupy
        elif isinstance(a, (np.ndarray, np.generic)):
            xp = np
        else:
            continue
        if found is None:
            found = xp
        elif found is not xp:
            raise TypeError("arrays live on different backends (NumPy and CuPy); move them to one device first")
    return np if found is None else found


def float_dtype(x, default=np.float64):
    """The floating dtype an array computes in: its own when floating, else ``default``."""
    dt = np.dtype(getattr(x, "dtype", default))
    if dt.kind in "fc":
        return dt
    return np.dtype(default)


def check_float_array(x, name: str, *, allow_complex: bool = False):
    """Reject non-arrays and integer/bool dtypes with a message naming the argument; return the namespace."""
    if not (isinstance(x, (np.ndarray, np.generic)) or is_cupy_array(x)):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")
    kinds = "fc" if allow_complex else "f"
    if x.dtype.kind not in kinds:
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64), got {x.dtype}; convert it with "
            f"{name}.astype(float)"
        )
    if x.dtype.itemsize < 4:
        raise TypeError(f"{name} has dtype {x.dtype}; deqcore solves in float32 or float64")
    return get_namespace(x)


def check_finite(x, name: str) -> None:
    """Raise ``ValueError`` when ``x`` holds NaN or infinity."""
    xp = get_namespace(x)
    if not bool(xp.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinity")


def to_host(x):
    """A NumPy array from a NumPy or CuPy array (a copy from the device for CuPy)."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def to_namespace(x, xp):
    """Move ``x`` to the namespace ``xp`` (numpy or cupy)."""
    if xp is np:
        return to_host(x)
    return xp.asarray(x)


def synchronize(xp) -> None:
    """Wait for queued device work (a no-op on NumPy); use it when timing."""
    if is_cupy_namespace(xp):
        xp.cuda.get_current_stream().synchronize()


def cupy_available() -> bool:
    """True when CuPy imports and sees a CUDA device."""
    try:
        import cupy
    except Exception:
        return False
    try:
        return bool(cupy.is_available())
    except Exception:
        return False
