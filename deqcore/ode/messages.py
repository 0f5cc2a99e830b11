"""What an ODE failure means and what to try next: the ODE entry points' own messages for the return codes
(the generic ones in :mod:`deqcore.results` speak of root solvers).

>>> from deqcore.results import ReturnCode
>>> ode_message(ReturnCode.DT_TOO_SMALL).startswith("the step size fell below")
True
>>> import numpy as np
>>> ode_failure_message(np.array([0, 1, 1]), batched=True).startswith("steady state failed: 2 of 3 samples")
True
"""

from __future__ import annotations

import numpy as np

from ..results import ReturnCode

__all__ = ["ode_message", "ode_failure_message"]

_MESSAGES = {
    ReturnCode.SUCCESS: "reached t1 (or the steady-state test) within the tolerances",
    ReturnCode.MAX_STEPS: (
        "max_steps steps were attempted before reaching t1 (a steady state: before max|f(u)| fell to "
        "atol + rtol·max|f(u0)|): raise max_steps or loosen atol/rtol; a stiff problem (many rejected or tiny "
        "steps) needs a stiff method: dq.BDF() (unbatched) or dq.Rodas5P(); a steady state that is never reached (oscillation, slow drift, growth "
        "without bound) does not exist from this start"
    ),
    ReturnCode.DIVERGED: (
        "the state became non-finite or overflowed: the solution may blow up in finite time, the right-hand "
        "side may return NaN/inf there, or the explicit method is unstable on a stiff problem (use "
        "dq.BDF() or dq.Rodas5P(), or tighter tolerances)"
    ),
    ReturnCode.DT_TOO_SMALL: (
        "the step size fell below the resolution of t: the solution probably blows up in finite time near "
        "the time reached, or the right-hand side is discontinuous or stiff there (for a stiff problem use dq.BDF() or dq.Rodas5P())"
    ),
    ReturnCode.LINEAR_SOLVE_FAILED: (
        "a linear solve inside an implicit step failed (a singular or non-finite matrix): pass an analytic "
        "jac, tighten the tolerances, or check the right-hand side for NaN/inf"
    ),
}


def ode_message(code) -> str:
    """The advice for one return code of an ODE solve."""
    code = ReturnCode(int(code))
    return _MESSAGES.get(code, code.message)


def ode_failure_message(codes, batched: bool, where: str = "") -> str | None:
    """One paragraph on what failed (``codes`` a host int array), or None when everything succeeded."""
    codes = np.asarray(codes).reshape(-1)
    failed = codes[codes != int(ReturnCode.SUCCESS)]
    if failed.size == 0:
        return None
    if not batched:
        code = ReturnCode(int(failed[0]))
        return f"{'integration' if where else 'steady state'} failed with {code.name}{where}: {ode_message(code)}"
    parts = [f"{int((failed == c).sum())} of {codes.size} samples {ReturnCode(int(c)).name} "
             f"({ode_message(c)})" for c in np.unique(failed)]
    return "steady state failed: " + "; ".join(parts)
