"""Return codes, the solution record shared by every solver, and the error raised on failure.

>>> import numpy as np
>>> from deqcore.results import ReturnCode, Solution
>>> sol = Solution(value=np.zeros(3), result=ReturnCode.SUCCESS, stats={"num_steps": 1}, residual=0.0)
>>> sol.success
True
>>> ReturnCode.MAX_STEPS.message.startswith("the solver reached max_steps")
True
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ReturnCode", "SolveError", "Solution"]


class ReturnCode(enum.IntEnum):
    """Outcome of a solve. Batched solves hold one code per sample (an int array of these values).

    >>> import numpy as np, deqcore as dq
    >>> dq.ReturnCode(1).name, int(dq.ReturnCode.SUCCESS)
    ('MAX_STEPS', 0)
    >>> dq.ReturnCode.DIVERGED.message.startswith("the iterates became non-finite")
    True
    """

    SUCCESS = 0
    MAX_STEPS = 1
    DIVERGED = 2
    STALLED = 3
    LINEAR_SOLVE_FAILED = 4
    DT_TOO_SMALL = 5
    BREAKDOWN = 6
    NOT_RUN = 7

    @property
    def message(self) -> str:
        """What happened and what to try next."""
        return _MESSAGES[self]


_MESSAGES = {
    ReturnCode.SUCCESS: "converged to the requested tolerance",
    ReturnCode.MAX_STEPS: (
        "the solver reached max_steps before the residual met atol/rtol: raise max_steps, loosen the "
        "tolerances, or try a faster-converging solver (Anderson with a longer history, Broyden, Newton)"
    ),
    ReturnCode.DIVERGED: (
        "the iterates became non-finite or grew without bound: start closer to the solution, add damping "
        "(FixedPointIteration(damping=0.5), Anderson(beta=0.5)), or use a globalised solver (TrustRegion, "
        "NewtonRaphson with a line search) or an ODE steady-state solve"
    ),
    ReturnCode.STALLED: (
        "the residual stopped decreasing before reaching the tolerance: the problem may have no root "
        "near the start point (its iterates may be running off to infinity, where no root lies), or the "
        "tolerance is below what the dtype can resolve (use float64)"
    ),
    ReturnCode.LINEAR_SOLVE_FAILED: (
        "a linear solve failed (singular or ill-conditioned matrix, or GMRES did not converge): use a "
        "globalised solver (TrustRegion), a dense LU instead of GMRES, or raise GMRES's restart/max_steps"
    ),
    ReturnCode.DT_TOO_SMALL: (
        "the step size underflowed: the problem may be stiff (use an implicit method) or blow up in finite "
        "time"
    ),
    ReturnCode.BREAKDOWN: (
        "the Krylov iteration broke down (the operator maps a search direction to zero): the matrix is "
        "probably singular on the residual's subspace"
    ),
    ReturnCode.NOT_RUN: "the solve did not run",
}


class SolveError(RuntimeError):
    """Raised by a solve called with ``throw=True`` that did not succeed.

    ``error.result`` holds the return code(s) and ``error.solution`` the solution with the best iterate.

    >>> import numpy as np, deqcore as dq
    >>> try:
    ...     dq.linear_solve(np.zeros((2, 2)), np.ones(2))
    ... except dq.SolveError as err:
    ...     print(err.result.name, err.solution.success)
    LINEAR_SOLVE_FAILED False
    """

    def __init__(self, message: str, solution: "Solution | None" = None):
        super().__init__(message)
        self.solution = solution
        self.result = None if solution is None else solution.result


def _codes_host(result) -> np.ndarray:
    """Return codes as a host NumPy int array (a one-element array when unbatched)."""
    if isinstance(result, (ReturnCode, int, np.integer)):
        return np.asarray([int(result)])
    if hasattr(result, "get"):  # CuPy
        result = result.get()
    return np.asarray(result).reshape(-1)


def _summary(a) -> str:
    """An array as ``<dtype shape>``; anything else as its repr."""
    if hasattr(a, "shape") and getattr(a, "ndim", 0) > 0:
        return f"<{a.dtype} {tuple(a.shape)}>"
    return repr(a)


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


@dataclass(repr=False)
class Solution:
    """The result of a root-finding, fixed-point, steady-state or linear solve.

    Attributes:
        value: the solution (the best iterate when the solve failed), in the namespace, device and dtype of
            the start point.
        result: a :class:`ReturnCode`, or an int array of shape ``(B,)`` of codes when batched.
        stats: counters such as ``num_steps``, ``nfev``, ``njev``.
        residual: norm of the final residual (an array of shape ``(B,)`` when batched).
        batched: whether the leading axis of ``value`` holds independent problems.
        learned: what the solver learnt that a later solve can reuse (e.g. ``"lu"``: the LU factors of the last
            Jacobian; ``"inverse_jacobian"``: Broyden's low-rank inverse-Jacobian approximation).

    >>> import numpy as np, deqcore as dq
    >>> sol = dq.Solution(value=np.ones((2, 3)), result=np.array([0, 1]), residual=np.array([0.0, 1.0]),
    ...                   batched=True)
    >>> sol.success, sol.codes
    (array([ True, False]), [<ReturnCode.SUCCESS: 0>, <ReturnCode.MAX_STEPS: 1>])
    >>> sol.failure_message().startswith("batched solve failed: 1 of 2 samples MAX_STEPS")
    True
    >>> sol
    Solution(value=<float64 (2, 3)>, result=[SUCCESS x1, MAX_STEPS x1], residual=max 1, stats={})
    """

    value: Any
    result: Any
    stats: dict = field(default_factory=dict)
    residual: Any = None
    batched: bool = False
    learned: dict = field(default_factory=dict, repr=False)

    @property
    def success(self):
        """True where the solve converged (a bool array of shape ``(B,)`` when batched)."""
        if self.batched:
            return self.result == int(ReturnCode.SUCCESS)
        return int(self.result) == ReturnCode.SUCCESS

    @property
    def codes(self) -> list:
        """The return codes as a list of :class:`ReturnCode` members (one per sample when batched)."""
        return [ReturnCode(int(c)) for c in _codes_host(self.result)]

    def failure_message(self) -> str | None:
        """A one-paragraph description of what failed, or None when every problem succeeded."""
        codes = _codes_host(self.result)
        failed = codes[codes != ReturnCode.SUCCESS]
        if failed.size == 0:
            return None
        if not self.batched:
            return f"solve failed with {ReturnCode(int(failed[0])).name}: {ReturnCode(int(failed[0])).message}"
        parts = []
        for code in np.unique(failed):
            rc = ReturnCode(int(code))
            parts.append(f"{int((failed == code).sum())} of {codes.size} samples {rc.name} ({rc.message})")
        return "batched solve failed: " + "; ".join(parts)

    def __repr__(self) -> str:
        """A summary: arrays by dtype and shape, codes counted, the largest residual (never whole arrays)."""
        codes = _codes_host(self.result)
        if self.batched:
            names = ", ".join(f"{ReturnCode(int(c)).name} x{int((codes == c).sum())}" for c in np.unique(codes))
            result = f"[{names}]"
            residual = f"max {float(np.max(_host(self.residual))):.2g}" if codes.size and self.residual is not None \
                else "-"
        else:
            result = ReturnCode(int(codes[0])).name
            residual = "-" if self.residual is None else f"{float(self.residual):.2g}"
        return (f"{type(self).__name__}(value={_summary(self.value)}, result={result}, residual={residual}, "
                f"stats={self.stats})")

    def raise_if_failed(self) -> "Solution":
        """Raise :class:`SolveError` when any problem failed; return ``self`` otherwise."""
        message = self.failure_message()
        if message is not None:
            raise SolveError(message, self)
        return self
