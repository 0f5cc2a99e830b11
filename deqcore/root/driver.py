"""The one driver loop every root solver runs in: per-sample norms, termination, best iterate, return codes.

A solver is a frozen dataclass with ``init(problem, y, f) -> state`` and ``step(problem, state) -> state``;
the state carries at least ``y`` (the current iterate, (B, n)), ``f`` (its residual F(y)) and ``failed``
(None, or an int array of per-sample ReturnCodes the solver wants to report, 0 where it has nothing to say).
The driver owns everything else: convergence (max|F| ≤ atol + rtol·max|y| per sample), the best iterate
(lowest residual) per sample, freezing of finished samples, DIVERGED on non-finite or exploding residuals,
STALLED when the best residual has not improved for ``patience`` steps, and MAX_STEPS.
"""

from __future__ import annotations

import numpy as np

from ..results import ReturnCode, Solution
from ..backend import get_kernel
from . import kernels  # noqa: F401  (registers driver_update)

__all__ = ["run", "DIVERGENCE_FACTOR", "CHECK_EVERY_DEVICE"]

#: a residual this many times larger than the initial one counts as divergence
DIVERGENCE_FACTOR = 1e8
#: steps between "all done?" checks on a GPU (each check waits for the device; measured by benchmarks/bench_gpu.py)
CHECK_EVERY_DEVICE = 4


def run(problem, solver, y0, *, atol, rtol, max_steps, patience=None, f0=None, check_every=None) -> tuple:
    """Iterate ``solver`` on ``problem`` from y0 (B, n). Returns ``(best_y, codes, best_res, num_steps, state)``.

    ``f0``: F(y0) when the caller already evaluated it (its evaluation counted in ``problem.nfev``).
    ``check_every``: steps between the host's "all samples done?" checks, the loop's only device-to-host sync
    (every step on NumPy, where it is free; see :data:`CHECK_EVERY_DEVICE` on a GPU). Samples finish on the
    device either way; at most ``check_every − 1`` extra steps run after the last one finished."""
    xp = problem.xp
    batch = problem.batch
    patience = max(25, max_steps // 4) if patience is None else patience
    if check_every is None:
        check_every = 1 if xp is np else CHECK_EVERY_DEVICE
    update = get_kernel("driver_update", xp)
    f = problem.F(y0) if f0 is None else f0
    # The start point goes through the same bookkeeping as every step (no divergence limit yet): it sets the
    # best residual, and finishes samples that start converged (SUCCESS) or non-finite (DIVERGED).
    best_y, best_res = y0.copy(), xp.full(batch, xp.inf, dtype=y0.dtype)
    since_best = xp.zeros(batch, dtype=np.int64)
    codes = xp.full(batch, int(ReturnCode.MAX_STEPS), dtype=np.int64)
    done = xp.zeros(batch, dtype=bool)
    update(f, y0, best_y, best_res, since_best, codes, done, atol, rtol, best_res.copy(), patience)
    limit = (DIVERGENCE_FACTOR * xp.maximum(best_res, 1e-300)).astype(best_res.dtype)
    state = solver.init(problem, y0, f)
    steps = 0
    while steps < max_steps and not bool(done.all()):
        for _ in range(min(check_every, max_steps - steps)):
            state = solver.step(problem, state)
            steps += 1
            update(state.f, state.y, best_y, best_res, since_best, codes, done, atol, rtol, limit, patience)
            if state.failed is not None:
                reported = ~done & (state.failed != 0)
                xp.copyto(codes, state.failed, where=reported)
                done |= reported
    return best_y, codes, best_res, steps, state


def to_solution(problem, best_y, codes, best_res, steps, unflatten, batched, learned=None) -> Solution:
    """Package the driver's output as a :class:`~deqcore.results.Solution` in the user's shapes."""
    stats = {"num_steps": steps, "nfev": problem.nfev, "njev": problem.njev}
    if batched:
        result, residual = codes, best_res
    else:
        result, residual = ReturnCode(int(codes[0])), float(best_res[0])
    return Solution(value=unflatten(best_y), result=result, stats=stats, residual=residual, batched=batched,
                    learned={} if learned is None else learned)
