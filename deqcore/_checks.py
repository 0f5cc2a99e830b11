"""Argument validation shared by every entry point: clear errors naming the argument."""

from __future__ import annotations

import numbers
import math

import numpy as np

__all__ = ["check_tolerance", "check_positive_int", "check_callable", "check_probability", "check_choice",
           "check_bool", "check_solver_dtype", "check_returned_array", "SOLVER_DTYPES"]

#: the floating dtypes the solvers and their kernels support
SOLVER_DTYPES = ("float32", "float64")
_SOLVER_DTYPE_SET = frozenset(np.dtype(name) for name in SOLVER_DTYPES)


def check_tolerance(value, name: str) -> float:
    """A finite, non-negative real number.

    >>> check_tolerance(1e-6, "atol")
    1e-06
    >>> check_tolerance(-1.0, "rtol")
    Traceback (most recent call last):
    ...
    ValueError: rtol must be a finite number >= 0, got -1.0
    """
    if type(value) is float and 0.0 <= value < math.inf:     # the usual case, without the ABC checks
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum``.

    >>> check_positive_int(3, "max_steps")
    3
    >>> check_positive_int(0, "max_steps")
    Traceback (most recent call last):
    ...
    ValueError: max_steps must be an integer >= 1, got 0
    """
    if type(value) is int and value >= minimum:             # the usual case, without the ABC checks
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_probability(value, name: str, *, open_low: bool = True) -> float:
    """A real number in (0, 1] (or [0, 1] with ``open_low=False``)."""
    value = check_tolerance(value, name)
    if value > 1 or (open_low and value == 0):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


def check_callable(value, name: str):
    """A callable."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value


def check_choice(value, name: str, choices):
    """One of ``choices``; the error lists them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value


def check_bool(value, name: str) -> bool:
    """A Python or NumPy bool (not a string, not a number).

    >>> check_bool(True, "throw")
    True
    >>> import numpy as np
    >>> check_bool(np.True_, "throw")
    True
    >>> check_bool("False", "throw")
    Traceback (most recent call last):
    ...
    TypeError: throw must be True or False, got str
    """
    if value is True or value is False or isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__}")


def check_solver_dtype(x, name: str):
    """``x`` (an array already known to be floating) holds float32 or float64: the precisions the solvers and
    their kernels support (float16 is too coarse, longdouble/float128 has no kernels).

    >>> import numpy as np
    >>> check_solver_dtype(np.zeros(2, np.longdouble), "y0")
    Traceback (most recent call last):
    ...
    TypeError: y0 has dtype float128; deqcore solves in float32 or float64: pass y0.astype(np.float64)
    """
    if x.dtype not in _SOLVER_DTYPE_SET:              # a hashed lookup (str(dtype) costs several microseconds)
        raise TypeError(f"{name} has dtype {x.dtype}; deqcore solves in float32 or float64: pass "
                        f"{name}.astype(np.float64)")
    return x


def check_returned_array(out, name: str, shape, dtype, array_type, *, shape_of: str = "y0's"):
    """What a user callable ``name`` returned: an ``array_type`` of ``shape`` (described as ``shape_of`` shape)
    and of y0's ``dtype``; attribute reads only, cheap enough for every call. Errors name the callable.

    >>> import numpy as np
    >>> check_returned_array(np.zeros(2, np.float32), "fn", (2,), np.dtype(np.float64), np.ndarray)
    Traceback (most recent call last):
    ...
    TypeError: fn must return arrays of y0's dtype float64; a call returned float32 (cast inside fn, or pass y0 as float32)
    >>> check_returned_array(np.float64(1.0), "fn", (), np.dtype(np.float64), np.ndarray)   # 0-d arithmetic
    array(1.)
    """
    if isinstance(out, np.generic) and array_type is np.ndarray:
        out = np.asarray(out)   # NumPy turns a 0-d array's arithmetic into a scalar: take it as the 0-d array
    if not isinstance(out, array_type):
        raise TypeError(f"{name} must return an array of the same kind as y0 ({array_type.__module__}."
                        f"{array_type.__name__}); a call returned {type(out).__name__}")
    if out.dtype != dtype:
        fix = f"cast inside {name}" + (f", or pass y0 as {out.dtype}" if str(out.dtype) in SOLVER_DTYPES else "")
        raise TypeError(f"{name} must return arrays of y0's dtype {dtype}; a call returned {out.dtype} ({fix})")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must return arrays of {shape_of} shape {tuple(shape)}; a call returned "
                         f"{tuple(out.shape)}")
    if type(out) is not array_type:     # a subclass (np.matrix, a masked array): its values, as the plain array
        out = out.view(array_type)
    return out
