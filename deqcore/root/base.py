"""What every root solver shares: its mutable iteration state and the settings checks."""

from __future__ import annotations

__all__ = ["SolverState", "RootSolver"]


class SolverState:
    """The iteration state: ``y`` and ``f`` = F(y) of shape (B, n), ``failed`` (None or per-sample ReturnCodes
    the solver reports, 0 where it has nothing to say) and solver-specific fields."""

    def __init__(self, y, f, **fields):
        self.y = y
        self.f = f
        self.failed = None
        self.__dict__.update(fields)


class RootSolver:
    """Base of the root-finding and fixed-point solvers (frozen dataclasses of settings).

    Subclasses implement ``init(problem, y, f) -> SolverState`` and ``step(problem, state) -> SolverState``
    and may override ``learned(state) -> dict`` to hand what they learnt to later solves (adjoints).
    """

    def init(self, problem, y, f):  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, problem, state):  # pragma: no cover - abstract
        raise NotImplementedError

    def learned(self, state) -> dict:
        return {}
