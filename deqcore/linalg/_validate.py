"""Argument checks shared by the linear solvers (errors name the argument)."""

from __future__ import annotations

import numpy as np

from ..backend import check_finite, check_float_array


def check_square(A, name: str = "A"):
    """A floating ``(n, n)`` matrix or ``(B, n, n)`` stack; returns the namespace."""
    xp = check_float_array(A, name)
    if A.ndim not in (2, 3) or A.shape[-1] != A.shape[-2] or A.shape[-1] < 1:
        raise ValueError(f"{name} must be a square matrix (n, n) or a stack (B, n, n), got shape {A.shape}")
    return xp


def check_rhs(b, n: int, batch_size, *, name: str = "b", finite: bool = True):
    """A floating right-hand side of shape ``(n,)`` or ``(B, n)`` (``B = batch_size`` when that is set)."""
    xp = check_float_array(b, name)
    if b.ndim not in (1, 2) or b.shape[-1] != n:
        raise ValueError(f"{name} must have shape ({n},) or (B, {n}), got {tuple(b.shape)}")
    if batch_size is not None and (b.ndim != 2 or b.shape[0] != batch_size):
        raise ValueError(
            f"{name} must have shape ({batch_size}, {n}) to match the {batch_size} systems, "
            f"got {tuple(b.shape)}"
        )
    if finite:
        check_finite(b, name)
    return xp


def check_bool(value, name: str) -> bool:
    """A Python or NumPy bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)
