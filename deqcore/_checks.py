"""Argument validation shared by every entry point: clear errors naming the argument."""

from __future__ import annotations

import numbers
import math

__all__ = ["check_tolerance", "check_positive_int", "check_callable", "check_probability", "check_choice"]


def check_tolerance(value, name: str) -> float:
    """A finite, non-negative real number.

    >>> check_tolerance(1e-6, "atol")
    1e-06
    >>> check_tolerance(-1.0, "rtol")
    Traceback (most recent call last):
    ...
    ValueError: rtol must be a finite number >= 0, got -1.0
    """
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
