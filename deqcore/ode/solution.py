"""The result of :func:`~deqcore.ode.integrate`: saved times and states, return code, counters, and a dense
output ``sol(t)`` (Tsit5's own 4th-order interpolant, Radau's collocation polynomial, the continuous
extensions of Rodas4 and Rodas5P; cubic Hermite for the other methods)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..results import ReturnCode, SolveError
from .driver import StepRecord
from .messages import ode_failure_message
from .tableaus import ButcherTableau

__all__ = ["ODESolution", "ODEProblem"]


@dataclass(frozen=True)
class ODEProblem:
    """What was solved (kept so that adjoints can re-evaluate the right-hand side and recompute steps)."""

    rhs: Callable
    args: tuple
    t0: float
    t1: float
    solver: Any
    atol: float
    rtol: float
    max_steps: int


@dataclass
class ODESolution:
    """Solution of an initial value problem.

    It follows :class:`~deqcore.results.Solution`'s contract: ``value`` (the state reached), ``result``,
    ``success``, ``stats``, ``residual`` and ``raise_if_failed()`` (a :class:`~deqcore.results.SolveError`
    carrying this solution).

    Attributes:
        ts: host NumPy array of the saved times (``saveat``, or every accepted step point starting at t0).
        ys: states at ``ts``, stacked on a new leading axis (namespace and dtype of ``y0``); without
            ``saveat``, ``ys[-1]`` is the state at ``t1``.
        result: a :class:`~deqcore.results.ReturnCode`.
        stats: ``nfev``, ``num_steps`` (attempted), ``accepted``, ``rejected`` (plus ``njev``, ``nlinsolve``
            for implicit methods).
        problem: the :class:`ODEProblem` solved.
        steps: the accepted steps (dense output and adjoints use them). Dense output finds a time's step by
            bisection, O(log steps).

    >>> import numpy as np, deqcore as dq
    >>> sol = dq.integrate(lambda t, y: -y, np.array([1.0]), (0.0, 2.0), atol=1e-10, rtol=1e-10)
    >>> round(float(sol(0.5)[0]), 8), sol(np.array([0.5, 1.5])).shape        # exp(-0.5) = 0.6065306597...
    (0.60653066, (2, 1))
    >>> sol.success, sol.t_final
    (True, 2.0)
    """

    ts: np.ndarray
    ys: Any = field(repr=False)
    result: ReturnCode
    stats: dict
    problem: ODEProblem
    steps: list = field(default_factory=list, repr=False)

    @property
    def success(self) -> bool:
        return self.result == ReturnCode.SUCCESS

    @property
    def t_final(self) -> float:
        """The time the integration reached (``t1`` on success)."""
        return self.steps[-1].t + self.steps[-1].h if self.steps else self.problem.t0

    @property
    def y_final(self):
        """The state at :attr:`t_final` (an array of its own, made on first access: writing into it leaves
        the dense output and the adjoints' records untouched)."""
        if self._final is None:
            self._final = (self.steps[-1].y1 if self.steps else self._y0).copy()
        return self._final

    @property
    def value(self):
        """The state at :attr:`t_final` (as ``Solution.value`` of a steady-state solve)."""
        return self.y_final

    @property
    def residual(self) -> float:
        """``max|dy/dt|`` at :attr:`t_final` (as ``Solution.residual`` of a steady-state solve)."""
        if self.steps:
            return float(abs(self.steps[-1].f1).max())
        return float("nan") if self._f_start is None else float(abs(self._f_start).max())   # no step accepted

    def __call__(self, t):
        """Dense output at a time or a 1-D array of times inside the integrated span (stacked on axis 0)."""
        scalar = np.ndim(t) == 0
        raw = np.asarray(t.get() if hasattr(t, "get") else t)
        if raw.dtype.kind not in "iuf":       # (a string or a bool would convert to a time silently)
            raise TypeError(f"t must be a real time or a 1-D array of real times, got dtype {raw.dtype}")
        times = np.atleast_1d(raw.astype(float))
        if times.ndim != 1 or not np.all(np.isfinite(times)):
            raise ValueError("t must be a finite time or a 1-D array of finite times")
        if times.size == 0:
            return self._stack([self._y0])[:0]
        t0, t_fin = self.problem.t0, self.t_final
        lo, hi = min(t0, t_fin), max(t0, t_fin)
        if np.any((times < lo) | (times > hi)):
            raise ValueError(f"t must lie in the integrated span [{lo}, {hi}], got "
                             f"{times.min()}..{times.max()}")
        if not self.steps:
            values = [self._y0 for _ in times]
        else:
            direction, ends = self._step_ends()
            index = np.minimum(np.searchsorted(ends, direction * times, side="left"), len(self.steps) - 1)
            values = [interpolate(self.steps[i], tau, self._tableau) for i, tau in zip(index, times)]
        if not scalar:
            return self._stack(values)
        value = values[0]
        if isinstance(value, np.generic):       # a 0-d state: 0-d
            return np.asarray(value)
        # at a step's end the interpolant gives the stored state itself, which a caller writing into the result
        # would change for every later call and for the adjoints: copied there (only there: GaussAdjoint calls
        # this once per evaluation of its rhs)
        step = self.steps[index[0]] if self.steps else None
        stored = value is self._y0 or (step is not None and (value is step.y0 or value is step.y1))
        return value.copy() if stored else value

    def _step_ends(self):
        """(direction, direction · end time of every step), built once: a dense-output call costs
        O(log steps), not O(steps)."""
        if self._ends is None or self._ends[1].size != len(self.steps):
            direction = 1.0 if self.t_final >= self.problem.t0 else -1.0
            self._ends = (direction, direction * np.array([s.t + s.h for s in self.steps]))
        return self._ends

    def __repr__(self) -> str:
        return (f"ODESolution(result={self.result.name}, t=[{self.problem.t0}, {self.t_final}], "
                f"saved={len(self.ts)}, steps={len(self.steps)}, stats={self.stats})")

    # set by integrate(); not part of the constructor signature used by adjoints
    _y0: Any = field(default=None, repr=False)
    _tableau: ButcherTableau | None = field(default=None, repr=False)
    _stack: Callable = field(default=None, repr=False)
    _ends: Any = field(default=None, repr=False)
    _final: Any = field(default=None, repr=False)
    _f_start: Any = field(default=None, repr=False)       # dy/dt at t0 (the residual when no step was accepted)

    def failure_message(self) -> str | None:
        """What failed and what to try (ODE advice), or None on success."""
        return ode_failure_message(np.array([int(self.result)]), False, f" at t = {self.t_final}")

    def raise_if_failed(self) -> "ODESolution":
        """Raise :class:`~deqcore.results.SolveError` (carrying this solution) unless the solve succeeded."""
        message = self.failure_message()
        if message is not None:
            raise SolveError(message, self)
        return self


def interpolate(step: StepRecord, t: float, tableau: ButcherTableau | None = None):
    """State at time ``t`` inside an accepted step (the method's own interpolant when it has one)."""
    theta = (t - step.t) / step.h
    if theta == 0.0:
        return step.y0
    if theta == 1.0:
        return step.y1
    if callable(step.stages):          # a method's own polynomial over the step (Radau's, Rodas4's, Rodas5P's)
        return step.stages(theta)
    if tableau is not None and tableau.interp is not None and step.stages is not None:
        weights = tableau.interpolation_weights(theta) * step.h
        out = step.y0
        for w, k in zip(weights, step.stages):
            out = out + float(w) * k
        return out
    return hermite(step, theta)


def hermite(step: StepRecord, theta: float):
    """Cubic Hermite interpolation from both ends' states and derivatives (weights as Python floats, so a
    float32 state stays float32)."""
    theta, h = float(theta), float(step.h)
    h00 = (1.0 + 2.0 * theta) * (1.0 - theta) ** 2
    h10 = theta * (1.0 - theta) ** 2
    h01 = theta * theta * (3.0 - 2.0 * theta)
    h11 = theta * theta * (theta - 1.0)
    return h00 * step.y0 + h01 * step.y1 + (h * h10) * step.f0 + (h * h11) * step.f1
