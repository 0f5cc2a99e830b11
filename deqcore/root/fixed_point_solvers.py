"""Solvers that iterate the fixed-point map G(y) = y + F(y): plain (damped) iteration and Anderson mixing.

>>> import numpy as np, deqcore as dq
>>> sol = dq.fixed_point(np.cos, np.zeros(1), dq.Anderson(), atol=1e-12, rtol=0.0)
>>> round(float(sol.value[0]), 10)                   # the Dottie number
0.7390851332
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import check_positive_int, check_probability, check_tolerance
from .base import RootSolver, SolverState

__all__ = ["FixedPointIteration", "Anderson"]


@dataclass(frozen=True)
class FixedPointIteration(RootSolver):
    """y ← (1 − damping)·y + damping·G(y). Converges for contractive maps; the baseline every other solver
    should beat. ``damping`` < 1 stabilises maps whose Jacobian has eigenvalues near −1."""

    damping: float = 1.0

    def __post_init__(self):
        check_probability(self.damping, "damping")

    def init(self, problem, y, f):
        return SolverState(y, f)

    def step(self, problem, state):
        y = state.y + self.damping * state.f
        _, f = problem.G(y)
        state.y, state.f = y, f
        return state


@dataclass(frozen=True)
class Anderson(RootSolver):
    """Anderson acceleration, type II (Walker & Ni 2011), batched with one small least-squares per sample.

    Keeps the last ``history_size`` iterates yᵢ and residuals fᵢ = G(yᵢ) − yᵢ; picks weights α (Σα = 1)
    minimising ‖Σ αᵢ fᵢ‖ and steps to Σ αᵢ (yᵢ + beta·fᵢ). The ridge added to the residuals' Gram matrix is
    ``ridge`` times its mean diagonal (never an absolute constant, which would slow convergence at tight
    tolerances), and at least a few ulps of the dtype; a sample whose small system still fails takes a plain
    damped step instead.

    Defaults from measurement on the hard DEQ map (spectral radius 1.5, batch 64, width 256,
    ``benchmarks/bench_root.py``): a history of 5 stalls there, 10–30 converge, 10 costs least per step.
    """

    history_size: int = 10
    beta: float = 1.0
    ridge: float = 1e-8

    def __post_init__(self):
        check_positive_int(self.history_size, "history_size")
        check_tolerance(self.beta, "beta")
        if self.beta == 0:
            raise ValueError("beta must be > 0")
        check_tolerance(self.ridge, "ridge")

    def init(self, problem, y, f):
        xp, m, (batch, n) = problem.xp, self.history_size, y.shape
        dtype = y.dtype
        return SolverState(y, f, k=0, Y=xp.zeros((batch, m, n), dtype=dtype), F=xp.zeros((batch, m, n), dtype=dtype),
                           H=xp.zeros((batch, m, m), dtype=dtype))

    def step(self, problem, state):
        xp = problem.xp
        m = self.history_size
        slot = state.k % m
        count = min(state.k + 1, m)
        state.Y[:, slot] = state.y
        state.F[:, slot] = state.f
        column = xp.matmul(state.F, state.f[:, :, None])[:, :, 0]         # ⟨f_i, f_new⟩ for every slot
        state.H[:, slot, :] = column
        state.H[:, :, slot] = column
        alpha = self._weights(xp, state.H[:, :count, :count], slot, problem.dtype)
        Y, F = state.Y[:, :count], state.F[:, :count]
        y = xp.matmul(alpha[:, None, :], Y)[:, 0] + self.beta * xp.matmul(alpha[:, None, :], F)[:, 0]
        _, f = problem.G(y)
        state.y, state.f, state.k = y, f, state.k + 1
        return state

    def _weights(self, xp, gram, slot, dtype):
        """α = (H + λI)⁻¹1 / 1ᵀ(H + λI)⁻¹1 per sample, falling back to the newest iterate alone."""
        batch, count, _ = gram.shape
        finfo = np.finfo(dtype)
        trace = xp.trace(gram, axis1=1, axis2=2) / count
        lam = max(self.ridge, 10 * float(finfo.eps)) * trace + float(np.sqrt(finfo.tiny))
        system = gram + lam[:, None, None] * xp.eye(count, dtype=dtype)
        ones = xp.ones((batch, count, 1), dtype=dtype)
        fallback = xp.zeros((batch, count), dtype=dtype)
        fallback[:, slot] = 1
        try:
            w = xp.linalg.solve(system, ones)[:, :, 0]
        except np.linalg.LinAlgError:
            return fallback
        total = w.sum(axis=1, keepdims=True)
        ok = xp.isfinite(total) & (xp.abs(total) > 0)
        alpha = w / xp.where(ok, total, 1)
        good = ok[:, 0] & xp.isfinite(alpha).all(axis=1)
        return xp.where(good[:, None], alpha, fallback)
