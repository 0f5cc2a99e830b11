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
from typing import Any

import numpy as np

from .._checks import check_positive_int, check_tolerance
from ..backend import get_kernel
from .base import IterateState, RootSolver
from . import broyden_kernels  # noqa: F401  (registers broyden_dots and broyden_update)

__all__ = ["Broyden", "LimitedMemoryBroyden", "BroydenState"]

#: the ring's slots at the start of a solve; a larger ``memory`` (or ``threshold``) grows it as the steps fill it
#: (to at most twice the steps taken: ``memory=10**9`` allocates what the solve uses, not 10**9 slots)
INITIAL_SLOTS = 256


@dataclass
class BroydenState(IterateState):
    """Broyden's state besides the iterate ``y`` and ``f`` = F(y): the stored pairs ``U``, ``V`` (B, slots, n)
    (slots ≤ ``memory``, grown as the steps need them) with F's inverse Jacobian ≈ −I + Σ uᵢ vᵢᵀ, ``count`` (B,)
    pairs stored per sample, ``k`` steps taken, the next step ``s`` and the next iterate ``y_next`` = y + s."""

    U: Any = None
    V: Any = None
    count: Any = None
    k: int = 0
    s: Any = None
    y_next: Any = None


class _LowRankBroyden(RootSolver):
    """Shared mechanics; subclasses choose what happens when memory is full and on stagnation."""

    _limited = False

    def _capacity(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def compactable(self) -> bool:
        """A ring that may grow during the solve cannot be scattered back into the one the driver kept for the
        finished rows: the driver then runs all rows (the same results)."""
        return self._capacity() <= INITIAL_SLOTS

    def _reset_factor(self) -> float:
        return np.inf

    def init(self, problem, y, f):
        """H = −I: the first step s = −H f = f is a plain fixed-point step.

        U and V are two halves of one allocation: the C allocator then reuses the same memory solve after
        solve, where two separate arrays of a few MiB each get fresh pages every time (measured: their page
        faults cost more than all the Broyden arithmetic of a short solve). The ring starts with
        :data:`INITIAL_SLOTS` slots at most; :meth:`step` grows it when the steps fill it."""
        xp, m, (batch, n) = problem.xp, min(self._capacity(), INITIAL_SLOTS), y.shape
        ring = xp.zeros((2, batch, m, n), dtype=y.dtype)
        return BroydenState(y, f, U=ring[0], V=ring[1], count=xp.zeros(batch, dtype=np.int64), k=0, s=f,
                            y_next=y + f)

    def step(self, problem, state: BroydenState):
        """y ← y + s with s = −H F(y), then the good-Broyden update H ← H + (s − H d) sᵀH / (sᵀH d), s = Δy,
        d = ΔF, and the next step −H F(y) for the new H.

        One fused kernel call, two passes over the stored pairs (see :mod:`deqcore.root.broyden_kernels`): the
        dot products vᵢ·F(y) and uᵢ·s, then H F(y) and Hᵀ s, the update, the ring store (or restart) and the
        next step and iterate. Every per-sample decision stays on the device."""
        y, s = state.y_next, state.s
        f = problem.F(y)
        if state.k >= state.U.shape[1] and state.U.shape[1] < self._capacity():
            self._grow(problem.xp, state)
        kernel = get_kernel("broyden_step", problem.xp)
        state.y_next, state.s, state.U, state.V, state.count = kernel(
            state.U, state.V, y, f, state.f, s, state.count, state.k, self._limited, self._reset_factor())
        state.y, state.f, state.k = y, f, state.k + 1
        return state, None

    def _grow(self, xp, state):
        """Twice the slots (at most the capacity), the stored pairs kept in theirs: step k writes slot k and
        ``count`` ≤ k, so while k < slots the ring holds exactly what a ring of the full capacity would, and the
        kernels read only the filled slots (the same arithmetic, bit for bit)."""
        batch, m, n = state.U.shape
        ring = xp.zeros((2, batch, min(self._capacity(), max(2 * m, state.k + 1)), n), dtype=state.U.dtype)
        ring[0, :, :m], ring[1, :, :m] = state.U, state.V
        state.U, state.V = ring[0], ring[1]

    def learned(self, state) -> dict:
        """``inverse_jacobian``: (U, V) with F's inverse Jacobian ≈ −I + Σ uᵢ vᵢᵀ per sample."""
        return {"inverse_jacobian": (state.U, state.V)}


@dataclass(frozen=True)
class Broyden(_LowRankBroyden):
    """Good Broyden with a ring of the last ``memory`` rank-one updates (bounded memory: O(memory·n) per
    sample, and no more slots than the solve's steps fill beyond the first 256). The default memory is chosen
    from ``benchmarks/bench_root.py`` (see ARCHITECTURE.md, "Constants set by measurement").

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


@dataclass(frozen=True)
class LimitedMemoryBroyden(_LowRankBroyden):
    """Good Broyden that restarts from H = −I when ``threshold`` updates are stored, and for a sample whose
    residual grew by more than ``reset_factor`` in one step (its model has gone bad). The defaults are chosen
    from ``benchmarks/bench_root.py`` (see ARCHITECTURE.md, "Constants set by measurement").

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

    _limited = True

    def _capacity(self):
        return self.threshold

    def _reset_factor(self):
        return self.reset_factor
