"""Finite-difference derivatives: moved to :mod:`deqcore.linalg.finite_diff` (so the root solvers below the ODE
layer share them); this module re-exports its names."""

from ..linalg.finite_diff import (FiniteDiffJacobian, column_groups, increments, jvp_step,  # noqa: F401
                                  normalize_sparsity, time_increment)

__all__ = ["FiniteDiffJacobian", "column_groups", "increments", "jvp_step", "time_increment",
           "normalize_sparsity"]
