"""What every root solver shares: the state every solver's state extends, and the solver protocol.

A solver is a frozen dataclass of settings with two methods:

- ``init(problem, y, f) -> state``: a dataclass extending :class:`IterateState` (the current iterate ``y`` and
  its residual ``f`` = F(y), both (B, n)), its own fields declared in one place;
- ``step(problem, state) -> (state, failed)``: one iteration; ``failed`` is None, or an int array (B,) of
  :class:`~deqcore.ReturnCode` values for samples the solver itself cannot continue (0 where it has nothing to
  report). The driver owns what happens next: it records the code and finishes those samples.

Kernel handles are not state: a solver fetches them from the registry (``backend.get_kernel``) when it steps.
A solver whose state fields are all per-row arrays (batch on the leading axis) or shared scalars sets
``compactable = True``: the driver may then run it on the still-running rows only (active-set compaction).
Optionally, ``fused_kernel`` (a registered kernel's name) and ``fused_step(kernel, state, book)`` let the NumPy
loop run the driver's bookkeeping and the step in one compiled call (see :mod:`deqcore.root.step_kernels`), and
``fused_loop(kernel, state, book)`` all the steps in one compiled loop that calls the evaluation back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["IterateState", "RootSolver"]


@dataclass
class IterateState:
    """The current iterate ``y`` and its residual ``f`` = F(y), each (B, n)."""

    y: Any
    f: Any


class RootSolver:
    """Base of the root-finding and fixed-point solvers (frozen dataclasses of settings).

    Subclasses implement ``init(problem, y, f) -> state`` and ``step(problem, state) -> (state, failed)``
    (see the module docstring) and may override ``learned(state) -> dict`` to hand what they learnt to later
    solves (adjoints).
    """

    #: the state is all per-row arrays and shared scalars: the driver may gather it to the running rows
    compactable = False

    def init(self, problem, y, f) -> IterateState:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, problem, state) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def learned(self, state) -> dict:
        return {}
