"""Solvers that iterate the fixed-point map G(y) = y + F(y): plain (damped) iteration and Anderson mixing.

>>> import numpy as np, deqcore as dq
>>> sol = dq.fixed_point(np.cos, np.zeros(1), dq.Anderson(), atol=1e-12, rtol=0.0)
>>> round(float(sol.value[0]), 10)                   # the Dottie number
0.7390851332
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .._checks import check_positive_int, check_probability, check_tolerance
from ..backend import get_kernel
from .anderson_kernels import HISTORY_CAP  # (importing it registers anderson_step)
from .base import IterateState, RootSolver

__all__ = ["FixedPointIteration", "Anderson", "AndersonState"]

@lru_cache(maxsize=None)
def _limits(dtype) -> tuple:
    """(eps, tiny) of ``dtype``: np.finfo is a slow lookup, paid once per dtype. (The floor added to Anderson's
    ridge is tiny, not √tiny: the Gram matrix of residuals of size 1e-10 in float32 is about 1e-20, and a floor of
    √tiny ≈ 1e-19 swamped it, turning the mixing into an average of the history.)"""
    finfo = np.finfo(dtype)
    return float(finfo.eps), float(finfo.tiny)


@dataclass
class AndersonState(IterateState):
    """Anderson's state besides ``y`` and ``f``: the ring of mapped iterates ``G`` and residuals ``F``
    (B, history_size, n), their Gram matrix ``H`` (B, history_size, history_size), the step count ``k`` (slot
    k % history_size is written next), and the ridge factor and floor for the dtype."""

    G: Any = None
    F: Any = None
    H: Any = None
    k: int = 0
    ridge: float = 0.0
    floor: float = 0.0


@dataclass(frozen=True)
class FixedPointIteration(RootSolver):
    """y ← (1 − damping)·y + damping·G(y). Converges for contractive maps; the baseline every other solver
    should beat. ``damping`` < 1 stabilises maps whose Jacobian has eigenvalues near −1.

    >>> import numpy as np, deqcore as dq
    >>> sol = dq.fixed_point(np.cos, np.zeros(1), dq.FixedPointIteration(damping=0.5), atol=1e-10, rtol=0.0)
    >>> round(float(sol.value[0]), 8)                    # the Dottie number, cos(y) = y
    0.73908513
    """

    damping: float = 1.0
    compactable = True
    #: the driver's fused step on the CPU (see :mod:`deqcore.root.step_kernels`)
    fused_kernel = "plain_driver_step"

    def __post_init__(self):
        check_probability(self.damping, "damping")

    def init(self, problem, y, f) -> IterateState:
        return IterateState(y, f)

    def step(self, problem, state: IterateState):
        y = state.y + state.f if self.damping == 1.0 else state.y + self.damping * state.f   # (1·f is f)
        _, f = problem.G(y)
        state.y, state.f = y, f
        return state, None

    def fused_step(self, kernel, state, book):
        """``fused(out, is_map, step) -> live``: the driver's bookkeeping on the raw evaluation ``out`` at
        ``state.y`` and, if ``step``, this step, in one call of ``kernel`` (``plain_driver_step``, with ``state``
        and the driver's ``book`` bound); returns the rows still running."""
        prepare = getattr(kernel, "prepare", None)
        if prepare is None:
            def call(out, is_map, y, step):
                return kernel(out, is_map, y, state.f, *book, self.damping, step)[:2]
        else:
            call = prepare(state.f, book, self.damping)

        def fused(out, is_map, step):
            state.y, live = call(out, is_map, state.y, step)
            return live

        return fused


@dataclass(frozen=True)
class Anderson(RootSolver):
    """Anderson acceleration, type II (Walker & Ni 2011), batched with one small least-squares per sample.

    Keeps the last ``history_size`` iterates yᵢ and residuals fᵢ = G(yᵢ) − yᵢ; picks weights α (Σα = 1)
    minimising ‖Σ αᵢ fᵢ‖ and steps to Σ αᵢ (yᵢ + beta·fᵢ). The ridge added to the residuals' Gram matrix is
    ``ridge`` times its mean diagonal (never an absolute constant, which would slow convergence at tight
    tolerances), and at least a few ulps of the dtype; a sample whose small system still fails takes a plain
    damped step instead. Each iteration is one fused kernel (``anderson_step``: ring update, Gram column,
    small solve and mixing in one pass per sample; on the CPU fused with the driver's bookkeeping,
    ``anderson_driver_step``); ``history_size`` is at most 32, the slots its GPU version holds in shared memory.

    Defaults from measurement (``benchmarks/bench_root.py``, batch 64, width 256, tolerance 1e-6, per-sample
    stopping): on the hard DEQ map (spectral radius 1.5) histories 5 / 10 / 20 need 147 / 122 / 96
    f-evaluations, on the easy map 15 / 14 / 23; each slot adds work per step, so 10 is the balance (re-measured
    with the step's cost at tolerance 1e-5: ``benchmarks/results/overhead.md``).

    >>> import numpy as np, deqcore as dq
    >>> W, b = np.array([[0.5, 0.2], [0.1, 0.3]]), np.array([1.0, 2.0])
    >>> sol = dq.fixed_point(lambda y: W @ y + b, np.zeros(2), dq.Anderson(history_size=5), atol=1e-10)
    >>> bool(np.allclose(sol.value, np.linalg.solve(np.eye(2) - W, b)))     # y = W y + b
    True
    """

    history_size: int = 10
    beta: float = 1.0
    ridge: float = 1e-8
    compactable = True
    #: the driver's fused step on the CPU (see :mod:`deqcore.root.step_kernels`)
    fused_kernel = "anderson_driver_step"

    def __post_init__(self):
        check_positive_int(self.history_size, "history_size")
        if self.history_size > HISTORY_CAP:
            raise ValueError(f"history_size must be <= {HISTORY_CAP} (the fused GPU step holds each sample's "
                             f"small system in shared memory; 10 to 30 is the useful range), "
                             f"got {self.history_size}")
        check_tolerance(self.beta, "beta")
        if self.beta == 0:
            raise ValueError("beta must be > 0")
        check_tolerance(self.ridge, "ridge")

    def init(self, problem, y, f, *, zeroed=None) -> AndersonState:
        """The state at the start point. Only slots below count are read and every row writes slot k at step k,
        so the rings need no zeroing (a pass over B·m·n elements twice); learned() hands over the written slots
        only. With compaction a finished row stops writing: those rings start zeroed (``zeroed=None``: when
        ``problem.can_restrict``), except in the CPU's fused steps (:meth:`init_fused`)."""
        xp, m, (batch, n) = problem.xp, self.history_size, y.shape
        eps, floor = _limits(problem.dtype)
        ridge = max(self.ridge, 10 * eps)
        make = xp.zeros if (problem.can_restrict if zeroed is None else zeroed) else xp.empty
        G, F = make((batch, m, n), dtype=y.dtype), make((batch, m, n), dtype=y.dtype)
        return AndersonState(y, f, G=G, F=F, H=xp.zeros((batch, m, m), dtype=y.dtype), k=0, ridge=ridge, floor=floor)

    def init_fused(self, problem, y, f) -> AndersonState:
        """:meth:`init` for the driver's fused CPU steps (``anderson_driver_step``, the compiled loop), which zero
        the unwritten slots of a row as it finishes: the rings start unzeroed even with compaction (freshly
        zeroed memory costs a page fault per 4 KB on first touch)."""
        return self.init(problem, y, f, zeroed=False)

    def step(self, problem, state: AndersonState):
        """One fused kernel stores (y + beta·f, f) in the ring, adds ⟨fᵢ, f⟩ to the Gram matrix, solves for
        the weights and mixes; only the ``count`` slots filled so far are read."""
        m, k = self.history_size, state.k
        fused_step = get_kernel("anderson_step", problem.xp)
        y, state.G, state.F, state.H = fused_step(state.G, state.F, state.H, state.y, state.f, k % m, min(k + 1, m),
                                                  self.beta, state.ridge, state.floor)
        _, f = problem.G(y)
        state.y, state.f, state.k = y, f, state.k + 1
        return state, None

    def fused_step(self, kernel, state, book):
        """``fused(out, is_map, step) -> live``: the driver's bookkeeping on the raw evaluation ``out`` at
        ``state.y`` and, if ``step``, this step, in one call of ``kernel`` (``anderson_driver_step``, with
        ``state`` and the driver's ``book`` bound); returns the rows still running."""
        m, beta = self.history_size, self.beta
        prepare = getattr(kernel, "prepare", None)
        if prepare is None:
            def call(out, is_map, y, slot, count, filled, step):
                return kernel(out, is_map, y, state.f, *book, state.G, state.F, state.H, slot, count, filled, beta,
                              state.ridge, state.floor, step)[:2]
        else:
            call = prepare(state.f, book, state.G, state.F, state.H, beta, state.ridge, state.floor)

        def fused(out, is_map, step):
            k = state.k
            y_new, live = call(out, is_map, state.y, k % m, k + 1 if k < m else m, k if k < m else m, step)
            if y_new is not state.y:
                state.y, state.k = y_new, k + 1
            return live

        return fused

    def fused_loop(self, kernel, state, book, **limits):
        """``loop(evaluate, is_map, y, k, steps, max_steps, stop_live) -> (y, k, steps, live)``: the fused steps in
        one compiled loop calling ``evaluate`` back (``kernel.prepare_loop``, with ``state``'s ring and the
        driver's ``book`` bound; see :func:`deqcore.root.driver._run_looped`; asked only of kernels that have
        one)."""
        return kernel.prepare_loop(state.f, book, state.G, state.F, state.H, self.beta, state.ridge,
                                   state.floor, **limits)

    def learned(self, state) -> dict:
        """``anderson_history``: ``(G, F, count)``: the filled part of the ring, mapped iterates yᵢ + beta·fᵢ and
        residuals fᵢ (B, count, n), ``count`` = min(steps, history_size) slots (views of the solver's ring, no copy;
        the slots a solve never reached are not handed over, so none is zeroed). On the CPU, or with
        ``compact=True``, a sample that finished early filled only the slots of the steps it ran; its others are
        zero."""
        count = min(state.k, self.history_size)
        if count < self.history_size:
            return {"anderson_history": (state.G[:, :count], state.F[:, :count], count)}
        return {"anderson_history": (state.G, state.F, count)}
