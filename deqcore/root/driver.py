"""The one driver loop every root solver runs in: per-sample norms, termination, best iterate, return codes.

A solver is a frozen dataclass with ``init(problem, y, f) -> state`` and ``step(problem, state) -> (state,
failed)`` (see :mod:`deqcore.root.base`); the state carries at least ``y`` (the current iterate, (B, n)) and
``f`` (its residual F(y)). The driver owns everything else: the per-sample tolerance, convergence, the best
iterate (lowest residual) per sample, freezing of finished samples, DIVERGED on non-finite iterates or
exploding residuals, STALLED when the best residual has not improved for ``patience`` steps, MAX_STEPS, and the
codes the solver reports through ``failed``.

The test, per sample, is fixed at the start (see :meth:`RootProblem.tolerance`), so an iterate running off to
infinity never meets it; and the value returned for a SUCCESS is the very iterate that met it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..results import ReturnCode, Solution
from ..backend import get_kernel, registered_kernels
from . import driver_kernels, step_kernels  # noqa: F401  (register driver_update and the fused driver steps)

__all__ = ["run", "RootLoopResult", "DIVERGENCE_FACTOR", "CHECK_EVERY_DEVICE", "PATIENCE_CAP", "COMPACT_BELOW"]

#: a residual this many times larger than the initial one counts as divergence
DIVERGENCE_FACTOR = 1e8
#: steps between "all done?" checks on a GPU (each check waits for the device; measured by benchmarks/bench_gpu.py)
CHECK_EVERY_DEVICE = 4
#: the default patience is max_steps // 4, at least 25 and at most this (so a huge max_steps cannot keep a
#: sample that no longer improves running for ever)
PATIENCE_CAP = 1000
#: active-set compaction: the loop drops finished rows when at most this fraction of its rows is still running
#: (so the gathers happen at most log2(B) times)
COMPACT_BELOW = 0.5


@dataclass
class RootLoopResult:
    """What :func:`run` returns, per sample (B rows): ``value`` (the converged iterate for SUCCESS, else the
    lowest-residual one), ``codes`` (int ReturnCodes), ``residual`` (max|F(value)|), and for the whole batch
    ``num_steps`` and the solver's final ``state``."""

    value: Any
    codes: Any
    residual: Any
    num_steps: int
    state: Any


def _is_rows(value, batch) -> bool:
    return hasattr(value, "shape") and value.ndim >= 1 and value.shape[0] == batch


def _gather_state(state, local, batch):
    """The solver state on the rows ``local`` (every array field holds the batch on its leading axis)."""
    return dataclasses.replace(state, **{field.name: getattr(state, field.name)[local]
                                         for field in dataclasses.fields(state)
                                         if _is_rows(getattr(state, field.name), batch)})


def _scatter_state(full, part, rows, batch):
    """Write ``part`` (the state on the full state's rows ``rows``) back into ``full``; shared scalars are taken."""
    for field in dataclasses.fields(full):
        value = getattr(part, field.name)
        if _is_rows(getattr(full, field.name), batch):
            getattr(full, field.name)[rows] = value
        else:
            setattr(full, field.name, value)


def run(problem, solver, y0, *, atol, rtol, max_steps, patience=None, f0=None, check_every=None,
        compact=True, start=None) -> RootLoopResult:
    """Iterate ``solver`` on ``problem`` from y0 (B, n).

    ``f0``: F(y0) when the caller already evaluated it (its evaluation counted in ``problem.nfev``). ``start``:
    the per-sample test ``(tol, cap, y_limit)`` = ``problem.tolerance(y0, f0, atol, rtol)`` when the caller formed
    it together with ``f0`` (:meth:`RootProblem.start`; read only, used only with ``f0``).
    ``patience``: steps without a new lowest residual before a sample is STALLED (default: max_steps // 4,
    within [25, :data:`PATIENCE_CAP`]).
    ``check_every``: steps between the host's "all samples done?" checks, the loop's only device-to-host sync
    (every step on NumPy, where it is free; see :data:`CHECK_EVERY_DEVICE` on a GPU). Samples finish on the
    device either way; at most ``check_every − 1`` extra steps run after the last one finished.
    On NumPy, a solver with a fused driver step (``solver.fused_kernel``: Anderson, FixedPointIteration) runs
    each iteration as one compiled call (:mod:`deqcore.root.step_kernels`: the residual, this bookkeeping and the
    step) that also counts the running rows, so the check is every step there and ``check_every`` is not used;
    Anderson's runs all its steps in one compiled loop that calls the problem's evaluation back
    (``solver.fused_loop``), returning to Python only to compact.
    ``compact``: drop finished rows from the loop (f evaluations, solver work and bookkeeping) at the host checks
    once at most :data:`COMPACT_BELOW` of the rows still run — where the problem's rows are independent
    (``problem.can_restrict``) and the solver's state is all per-row arrays (``solver.compactable``). The
    finished rows' results and solver state are kept as they were when they finished."""
    xp = problem.xp
    batch = problem.batch
    patience = min(max(25, max_steps // 4), PATIENCE_CAP) if patience is None else min(int(patience), 2 ** 62)
    if check_every is None:
        check_every = 1 if xp is np else CHECK_EVERY_DEVICE
    f = problem.F(y0) if f0 is None else f0
    tol, cap, y_limit = problem.tolerance(y0, f, atol, rtol) if start is None or f0 is None else start
    rtol = float(rtol)
    compact = compact and problem.can_restrict and getattr(solver, "compactable", False)
    fused = _fused_kernel(solver, xp)
    if fused is not None:
        return _run_fused(problem, solver, fused, y0, f, tol, rtol, cap, y_limit, patience, max_steps, compact)
    update = get_kernel("driver_update", xp)
    # The start point goes through the same bookkeeping as every step (no divergence limit yet): it sets the
    # best residual, and finishes samples that start converged (SUCCESS) or non-finite (DIVERGED).
    best_y, best_res = y0.copy(), xp.full(batch, xp.inf, dtype=y0.dtype)
    since_best = xp.zeros(batch, dtype=np.int64)
    codes = xp.full(batch, int(ReturnCode.MAX_STEPS), dtype=np.int64)
    done = xp.zeros(batch, dtype=bool)
    update(f, y0, best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, best_res.copy(), patience)
    limit = (DIVERGENCE_FACTOR * xp.maximum(best_res, 1e-300)).astype(best_res.dtype)
    state = solver.init(problem, y0, f)
    full, rows, current = None, None, problem        # full-batch arrays and the rows the loop runs on
    steps = 0
    while steps < max_steps and not bool(done.all()):
        for _ in range(min(check_every, max_steps - steps)):
            state, failed = solver.step(current, state)
            steps += 1
            update(state.f, state.y, best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, limit,
                   patience)
            if failed is not None:
                reported = ~done & (failed != 0)
                xp.copyto(codes, failed, where=reported)
                done |= reported
        if compact and steps < max_steps:
            live = xp.nonzero(~done)[0]
            if 0 < live.shape[0] <= COMPACT_BELOW * done.shape[0]:
                if full is None:
                    full, rows = (best_y, best_res, codes, state), xp.arange(batch)
                else:
                    _scatter(full, (best_y, best_res, codes, state), rows, batch)
                state = _gather_state(state, live, done.shape[0])
                rows = rows[live]
                best_y, best_res, since_best, codes, done, tol, cap, y_limit, limit = (
                    a[live] for a in (best_y, best_res, since_best, codes, done, tol, cap, y_limit, limit))
                current = problem.restrict(rows)
    if full is not None:
        _scatter(full, (best_y, best_res, codes, state), rows, batch)
        best_y, best_res, codes, state = full
    return RootLoopResult(best_y, codes, best_res, steps, state)


def _fused_kernel(solver, xp):
    """The solver's fused driver step (bookkeeping and step in one compiled call) where it runs: NumPy arrays and
    the kernel's Numba CPU version (``DEQCORE_KERNELS=reference`` or ``numba_cuda`` keep the unfused loop and
    those kernels); else None."""
    name = getattr(solver, "fused_kernel", None)
    if name is None or xp is not np:
        return None
    key = (name, os.environ.get("DEQCORE_KERNELS"))     # the lookup depends on the kernel choice alone
    if key not in _FUSED:
        kernel = get_kernel(name, xp)
        _FUSED[key] = None if kernel is registered_kernels()[name].reference else kernel
    return _FUSED[key]


_FUSED: dict = {}   # (kernel name, DEQCORE_KERNELS) -> the fused step or None


def _run_fused(problem, solver, kernel, y0, f0, tol, rtol, cap, y_limit, patience, max_steps, compact):
    """The loop of :func:`run` with one compiled call per step: ``solver.fused_step(kernel, state, book)`` binds
    the solver's state and the driver's bookkeeping arrays (``book``: driver_update's arguments after y) and
    returns ``fused(out, is_map, step)``, which takes the problem's raw evaluation at the current iterate, does
    the bookkeeping and the solver's step, and returns how many rows still run (the host check, free on the CPU:
    every step). Same codes, counts and results as the unfused loop; finished rows are no longer stepped."""
    batch = problem.batch
    looped = getattr(solver, "fused_loop", None) if hasattr(kernel, "prepare_loop") else None
    init = getattr(solver, "init_fused", solver.init)   # (the fused steps zero a finishing row's unwritten slots)
    state = init(problem, y0, f0)
    state.f = np.empty_like(y0)                       # the residual buffer the fused step writes
    if looped is not None:
        # the compiled loop starts the bookkeeping itself (best_res = limit = inf, since_best = 0, codes =
        # MAX_STEPS, done = False) and gives y0 to the rows the start did not improve: no initial values here
        book = [np.empty_like(y0), np.empty(batch, y0.dtype), np.empty(batch, np.int64), np.empty(batch, np.int64),
                np.empty(batch, bool), tol, rtol, cap, y_limit, np.empty(batch, y0.dtype), patience]
        return _run_looped(problem, looped, kernel, state, book, f0, max_steps, compact)
    best_y, best_res = y0.copy(), np.full(batch, np.inf, dtype=y0.dtype)
    since_best = np.zeros(batch, dtype=np.int64)
    codes = np.full(batch, int(ReturnCode.MAX_STEPS), dtype=np.int64)
    done = np.zeros(batch, dtype=bool)
    # the start point's bookkeeping (no divergence limit yet), then the first step
    book = [best_y, best_res, since_best, codes, done, tol, rtol, cap, y_limit, np.full(batch, np.inf, y0.dtype),
            patience]
    fused = solver.fused_step(kernel, state, book)      # bound again whenever book or state are replaced
    live = fused(f0, False, max_steps > 0)
    limit = book[9]                                     # the divergence limit from here on, set in place
    np.maximum(best_res, 1e-300, out=limit)
    np.multiply(limit, DIVERGENCE_FACTOR, out=limit)
    full, rows, current = None, None, problem
    steps = 0
    while live and steps < max_steps:
        out, is_map = current.evaluate(state.y)
        steps += 1
        live = fused(out, is_map, steps < max_steps)
        if compact and steps < max_steps and 0 < live <= COMPACT_BELOW * book[4].shape[0]:
            full, rows, state, book, current = _compact(problem, full, rows, state, book, batch)
            fused = solver.fused_step(kernel, state, book)
    best_y, best_res, codes = book[0], book[1], book[3]
    if full is not None:
        _scatter(full, (best_y, best_res, codes, state), rows, batch)
        best_y, best_res, codes, state = full
    return RootLoopResult(best_y, codes, best_res, steps, state)


def _compact(problem, full, rows, state, book, batch):
    """Keeps the running rows only: the finished rows' results go to ``full`` (the whole batch's bookkeeping and
    state, made on the first compaction), and the state, bookkeeping and problem are restricted to the rows
    still running. Returns (full, rows, state, book, problem restricted)."""
    running = np.nonzero(~book[4])[0]
    if full is None:
        full, rows = (book[0], book[1], book[3], state), np.arange(batch)
    else:
        _scatter(full, (book[0], book[1], book[3], state), rows, batch)
    state = _gather_state(state, running, book[4].shape[0])
    rows = rows[running]
    book = [a[running] if i not in (6, 10) else a for i, a in enumerate(book)]
    return full, rows, state, book, problem.restrict(rows)


def _run_looped(problem, looped, kernel, state, book, f0, max_steps, compact):
    """:func:`_run_fused` in compiled loops that call the problem's evaluation back (``solver.fused_loop(kernel,
    state, book)``, see :func:`deqcore.root.step_kernels_numba._prepare_anderson_loop`): the start point's
    bookkeeping and the steps in one compiled call per solve instead of one per step, returning to Python only to
    compact the running rows. The same arithmetic, in the same order, as the loop of :func:`_run_fused`."""
    batch = problem.batch
    full, rows, current = None, None, problem
    loop = looped(kernel, state, book, limit_floor=1e-300, limit_factor=DIVERGENCE_FACTOR)
    evaluate, is_map = problem.uncounted()          # (the loop's evaluations are counted after each call)
    state.y, state.k, steps, live = loop(evaluate, is_map, state.y, 0, 0, max_steps,
                                         int(COMPACT_BELOW * batch) if compact else -1, start=f0,
                                         conformed=problem.conforming)
    problem.count(steps)
    while True:
        if compact and steps < max_steps and 0 < live <= COMPACT_BELOW * book[4].shape[0]:
            full, rows, state, book, current = _compact(problem, full, rows, state, book, batch)
            loop = looped(kernel, state, book)
        if not live or steps >= max_steps:
            break
        before = steps
        evaluate, is_map = current.uncounted()
        state.y, state.k, steps, live = loop(evaluate, is_map, state.y, state.k, steps, max_steps,
                                             int(COMPACT_BELOW * book[4].shape[0]) if compact else -1,
                                             conformed=current.conforming)
        current.count(steps - before)
    best_y, best_res, codes = book[0], book[1], book[3]
    if full is not None:
        _scatter(full, (best_y, best_res, codes, state), rows, batch)
        best_y, best_res, codes, state = full
    return RootLoopResult(best_y, codes, best_res, steps, state)


def _scatter(full, part, rows, batch):
    """Write the loop's arrays on ``rows`` back into the full-batch ones."""
    for whole, piece in zip(full[:3], part[:3]):
        whole[rows] = piece
    _scatter_state(full[3], part[3], rows, batch)


def to_solution(problem, out: RootLoopResult, unflatten, batched, learned=None) -> Solution:
    """Package the driver's output as a :class:`~deqcore.results.Solution` in the user's shapes."""
    stats = {"num_steps": out.num_steps, "nfev": problem.nfev, "njev": problem.njev,
             "row_evaluations": problem.row_evaluations}
    if batched:
        result, residual = out.codes, out.residual
    else:
        result, residual = ReturnCode(int(out.codes[0])), float(out.residual[0])
    return Solution(value=unflatten(out.value), result=result, stats=stats, residual=residual, batched=batched,
                    learned={} if learned is None else learned)
