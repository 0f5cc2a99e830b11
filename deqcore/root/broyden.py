"""Broyden's "good" method in inverse, low-rank form, with bounded memory.

The inverse Jacobian of F is approximated as H = −I + Σᵢ uᵢ vᵢᵀ (−I is exact when the map G has a zero
Jacobian, so the first step is one plain fixed-point step). Each step y ← y − H F(y) and a Sherman–Morrison
update that makes H map the last change of F onto the last change of y. Memory holds at most ``memory``
pairs per sample: :class:`Broyden` forgets the oldest pair; :class:`LimitedMemoryBroyden` starts afresh when
its ``threshold`` is reached or when the residual grows (a reset on stagnation).

>>> import numpy as np, deqcore as dq
>>> sol = dq.root_find(lambda y: np.tanh(y) - 0.5 * y - 0.1, np.zeros(3), dq.Broyden(), atol=1e-12)
>>> bool(np.allclose(np.tanh(sol.value) - 0.5 * sol.value, 0.1))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import check_positive_int, check_tolerance
from .base import RootSolver, SolverState

__all__ = ["Broyden", "LimitedMemoryBroyden"]


def _bdot(a, b):
    """Row-wise inner products of (B, n) arrays."""
    return (a * b).sum(axis=1)


class _LowRankBroyden(RootSolver):
    """Shared mechanics; subclasses choose what happens when memory is full and on stagnation."""

    def _capacity(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def init(self, problem, y, f):
        xp, m, (batch, n) = problem.xp, self._capacity(), y.shape
        return SolverState(y, f, U=xp.zeros((batch, m, n), dtype=y.dtype), V=xp.zeros((batch, m, n), dtype=y.dtype),
                           count=xp.zeros(batch, dtype=np.int64), k=0, Hf=-f)

    @staticmethod
    def _apply(xp, U, V, x):
        """H x = −x + Σ uᵢ (vᵢ·x)."""
        return -x + xp.matmul(xp.matmul(V, x[:, :, None])[:, :, 0][:, None, :], U)[:, 0]

    def step(self, problem, state):
        """y ← y − H F(y), then the good-Broyden update H ← H + (s − H d) sᵀH / (sᵀH d), s = Δy, d = ΔF.

        Two passes over the stored pairs per step: H F(y_new) (which also gives H d = H F(y_new) + s, as
        H F(y) = −s) and Hᵀ s; H F for the next step is then updated by the new pair alone."""
        xp = problem.xp
        top = min(state.k, self._capacity())            # slots beyond ``top`` are still empty
        U, V = state.U[:, :top], state.V[:, :top]
        s = -state.Hf
        y = state.y + s
        f = problem.F(y)
        d = f - state.f
        Hf = self._apply(xp, U, V, f)
        Hd = Hf + s
        v = self._apply(xp, V, U, s)                     # Hᵀ s: the roles of U and V swap
        denom = _bdot(v, d)
        tiny = float(np.finfo(problem.dtype).tiny)
        scale = xp.maximum(xp.sqrt(_bdot(s, s) * _bdot(d, d)), tiny)
        usable = xp.isfinite(denom) & (xp.abs(denom) > 1e-12 * scale) & xp.isfinite(f).all(axis=1)
        u = xp.where(usable[:, None], (s - Hd) / xp.where(usable, denom, 1.0)[:, None], 0)
        v = xp.where(usable[:, None], v, 0)
        growth = xp.sqrt(_bdot(f, f) / xp.maximum(_bdot(state.f, state.f), tiny))
        state.Hf = self._store(xp, state, u, v, usable, growth, Hf + u * _bdot(v, f)[:, None], f)
        state.y, state.f, state.k = y, f, state.k + 1
        return state

    def learned(self, state) -> dict:
        """``inverse_jacobian``: (U, V) with F's inverse Jacobian ≈ −I + Σ uᵢ vᵢᵀ per sample."""
        return {"inverse_jacobian": (state.U, state.V)}


@dataclass(frozen=True)
class Broyden(_LowRankBroyden):
    """Good Broyden with a ring of the last ``memory`` rank-one updates (bounded memory: O(memory·n) per
    sample, never O(max_steps)). Measured on the hard DEQ map (``benchmarks/bench_root.py``): a memory of 30
    loses samples once the ring wraps; 60–100 converge every sample.

    >>> import numpy as np, deqcore as dq
    >>> sol = dq.root_find(lambda y: y ** 3 + y - np.array([2.0, 10.0]), np.ones(2), dq.Broyden(), atol=1e-10)
    >>> bool(np.allclose(sol.value, [1.0, 2.0])), sorted(sol.learned)
    (True, ['inverse_jacobian'])
    """

    memory: int = 100

    def __post_init__(self):
        check_positive_int(self.memory, "memory")

    def _capacity(self):
        return self.memory

    def _store(self, xp, state, u, v, usable, growth, Hf, f):
        """Overwrite the oldest pair; H F loses that pair's term. Returns H F for the new H."""
        slot = state.k % self.memory
        if state.k >= self.memory:
            Hf = Hf - state.U[:, slot] * _bdot(state.V[:, slot], f)[:, None]
        state.U[:, slot] = u
        state.V[:, slot] = v
        return Hf


@dataclass(frozen=True)
class LimitedMemoryBroyden(_LowRankBroyden):
    """Good Broyden that restarts from H = −I when ``threshold`` updates are stored, and for a sample whose
    residual grew by more than ``reset_factor`` in one step (its model has gone bad). Measured on the hard DEQ
    map: threshold 10 or a reset at 2× growth lose samples; 30 with resets only on blow-ups converges all.

    >>> import numpy as np, deqcore as dq
    >>> fn = lambda y: y ** 3 + y - np.array([2.0, 10.0])                     # roots 1 and 2
    >>> sol = dq.root_find(fn, np.ones(2), dq.LimitedMemoryBroyden(threshold=10), atol=1e-10)
    >>> bool(np.allclose(sol.value, [1.0, 2.0]))
    True
    """

    threshold: int = 30
    reset_factor: float = 1e3

    def __post_init__(self):
        check_positive_int(self.threshold, "threshold")
        check_tolerance(self.reset_factor, "reset_factor")

    def _capacity(self):
        return self.threshold

    def _store(self, xp, state, u, v, usable, growth, Hf, f):
        """Append the pair, or restart a sample from H = −I (storing nothing). Returns H F for the new H."""
        reset = (state.count >= self.threshold) | (growth > self.reset_factor)
        slot = xp.minimum(state.count, self.threshold - 1)
        rows = xp.arange(state.U.shape[0])
        keep = ~reset[:, None]
        state.U[rows, slot] = xp.where(keep, u, 0)
        state.V[rows, slot] = xp.where(keep, v, 0)
        state.count = xp.where(reset, 0, state.count + usable.astype(np.int64))
        if bool(reset.any()):  # one small host check per step; the full-memory clear is rare
            state.U = xp.where(reset[:, None, None], 0, state.U)
            state.V = xp.where(reset[:, None, None], 0, state.V)
            return xp.where(keep, Hf, -f)
        return Hf
