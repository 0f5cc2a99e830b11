"""The entry points: :func:`root_find` (fn(y) = 0) and :func:`fixed_point` (fn(y) = y).

Both validate their arguments (errors name the argument), flatten the problem to (B, n) — B independent
systems when ``batched=True``, else one system of any shape — and run the solver in the one driver loop.

Convergence is per sample, on the max-norm of the residual, against a threshold fixed at the start point:

- ``root_find``: max|fn(y)| ≤ atol + rtol·min(max|y|, max|fn(y0)|);
- ``fixed_point``: max|fn(y) − y| ≤ atol + rtol·min(max|y|, s0), s0 = max(max|y0|, max|fn(y0)|); an iterate
  growing past s0/√eps has run away (DIVERGED: fn(y) − y would round to zero there).

atol is absolute; rtol is relative to the iterate's size (SciML's abstol/reltol map onto atol/rtol), capped at
a scale fixed at the start (for root_find the start's residual, SciPy's ``f_rtol``). ``rtol=0`` leaves atol
alone. The threshold never grows past its value at the start, so iterates
running off to infinity are never accepted (they end DIVERGED, STALLED or MAX_STEPS), and a SUCCESS sample's
``sol.value`` is the very iterate that met the test: ``fn`` evaluated there passes it (``sol.residual`` is its
max|residual|). Fixed-point solvers (Anderson, FixedPointIteration) also work in
root_find: they iterate y ← y + fn(y), which converges where fn behaves like G(y) − y for a contractive G.
Root finders work in fixed_point on the residual fn(y) − y.

What the solver learnt is in ``sol.learned`` (``"lu"``: Newton's last LU factors; ``"inverse_jacobian"``:
Broyden's low-rank inverse Jacobian; ``"anderson_history"``: Anderson's ring), for an adjoint solve to reuse; the
low-level entry without validation is ``deqcore.root.run`` on a ``deqcore.root.RootProblem`` (see the package
docstring).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .._checks import (check_bool, check_callable, check_positive_int, check_returned_array, check_solver_dtype,
                       check_tolerance)
from ..backend import check_float_array, default_kernel, get_namespace
from ..results import ReturnCode, Solution
from .base import RootSolver
from .broyden import LimitedMemoryBroyden
from .driver import RootLoopResult, run, to_solution
from .fixed_point_solvers import Anderson
from .newton import DENSE_LIMIT, NewtonRaphson, TrustRegion
from .problem import flat_problem

__all__ = ["root_find", "fixed_point", "default_solvers"]


_NUMPY_DTYPES = frozenset((np.dtype(np.float32), np.dtype(np.float64)))


def _check_common(fn, y0, solver, args, atol, rtol, max_steps, batched, throw, compact, finite=False):
    """The arguments' checks (errors name the argument) and fn(y0, *args), checked; ``finite``: the caller has
    already checked that y0 holds finite numbers (one pass over y0 less)."""
    check_callable(fn, "fn")
    if type(y0) is np.ndarray and y0.dtype in _NUMPY_DTYPES:      # the usual case: a float32/float64 NumPy array
        xp = np
    else:
        if isinstance(y0, np.generic):
            raise TypeError(f"y0 must be a NumPy or CuPy array, got the scalar {type(y0).__name__}: pass "
                            f"np.asarray(y0).reshape(1)")
        xp = check_float_array(y0, "y0")
        check_solver_dtype(y0, "y0")
    if not finite and not default_kernel("all_finite", xp)(y0):   # one compiled pass on NumPy, no temporary
        raise ValueError("y0 contains NaN or infinity")
    if solver is not None and not isinstance(solver, RootSolver):
        raise TypeError("solver must be a deqcore root solver (dq.Anderson(), dq.Broyden(), dq.NewtonRaphson(), "
                        f"dq.TrustRegion(), ...), got {type(solver).__name__}")
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple of extra arguments for fn, got {type(args).__name__}")
    check_tolerance(atol, "atol")
    check_tolerance(rtol, "rtol")
    check_positive_int(max_steps, "max_steps")
    check_bool(batched, "batched")
    check_bool(throw, "throw")
    if check_bool(compact, "compact") and not batched:
        raise ValueError("compact=True needs batched=True (it drops finished samples of a batch)")
    if batched and (y0.ndim < 2 or y0.shape[0] == 0):
        raise ValueError(f"batched=True needs y0 of shape (B, ...) with B >= 1 and a system per sample; got "
                         f"{y0.shape}")
    if y0.size == 0:
        raise ValueError("y0 is empty")
    if compact:
        for i, a in enumerate(args):
            if not (isinstance(a, xp.ndarray) and a.ndim >= 1 and a.shape[0] == y0.shape[0]):
                raise ValueError(f"compact=True needs every element of args to be a per-sample array with the batch "
                                 f"({y0.shape[0]}) on its leading axis; args[{i}] is not (capture shared arrays in "
                                 f"fn instead)")
    return check_returned_array(fn(y0, *args), "fn", y0.shape, y0.dtype, xp.ndarray)


def default_solvers(n: int, has_jac: bool):
    """What ``root_find(solver=None)`` tries, in turn, on the samples still unsolved: Newton with a line search
    (dense for small systems, Newton–Krylov for large), a dogleg trust region (small systems), then limited-
    memory Broyden and Anderson (cheap, derivative-free).

    >>> [type(s).__name__ for s in default_solvers(10, False)]
    ['NewtonRaphson', 'TrustRegion', 'LimitedMemoryBroyden', 'Anderson']
    """
    small = has_jac or n <= DENSE_LIMIT
    first = [NewtonRaphson(), TrustRegion()] if small else [NewtonRaphson()]
    return first + [LimitedMemoryBroyden(), Anderson()]


def _solve(fn, y0, fy0, solver, *, args, jac, atol, rtol, max_steps, batched, throw, mode, compact,
           conforming=False, jac0=None):
    """Solve from y0, reusing fy0 = fn(y0) (and jac0 = jac(y0)) that the argument checks evaluated (no second
    evaluation; the first Jacobian asked for at y0 is jac0, counted in njev); ``conforming`` as in
    :func:`~deqcore.root.problem.flat_problem`."""
    problem, y2d, unflatten = flat_problem(fn, y0, args, batched, mode=mode, jac=jac, compact=compact, first=fy0,
                                           conforming=conforming, first_jac=jac0)
    f0, start = fy0.reshape(y2d.shape), None
    if mode == "root":      # (fn may return one buffer it overwrites on every call: the solvers keep F(y0))
        f0 = f0.copy()
    if mode == "fixed_point":    # F(y0) = fn(y0) − y0 and the per-sample test in one pass
        f0, start = problem.start(y2d, f0, atol)
    problem.nfev += 1
    problem.row_evaluations += problem.batch
    with np.errstate(all="ignore"):  # non-finite values are reported through return codes
        if solver is not None:
            out = run(problem, solver, y2d, atol=atol, rtol=rtol, max_steps=max_steps, f0=f0, start=start)
            learned = solver.learned(out.state)
        else:
            out, learned = _polyalgorithm(problem, y2d, f0, atol, rtol, max_steps, start), {}
    sol = to_solution(problem, out, unflatten, batched, learned)
    if throw:
        sol.raise_if_failed()
    return sol


def _polyalgorithm(problem, y2d, f0, atol, rtol, max_steps, start=None) -> RootLoopResult:
    """Run the default solvers in turn, each on the samples the previous ones left unsolved (from y0). A sample
    keeps the first SUCCESS, else the lowest-residual outcome (its value and code together)."""
    xp = problem.xp
    best = y2d.copy()
    codes = xp.full(problem.batch, int(ReturnCode.NOT_RUN), dtype=np.int64)
    res = xp.full(problem.batch, xp.inf, dtype=y2d.dtype)
    steps = 0
    for solver in default_solvers(problem.n, problem.has_jac):
        problem.forget_increments()
        out = run(problem, solver, y2d, atol=atol, rtol=rtol, max_steps=max_steps, f0=f0, start=start)
        steps += out.num_steps
        # the first outcome always counts (a non-finite residual compares below nothing, and must not leave NOT_RUN)
        improve = (codes != int(ReturnCode.SUCCESS)) & ((out.codes == int(ReturnCode.SUCCESS)) | (out.residual < res)
                                                       | (codes == int(ReturnCode.NOT_RUN)))
        best = xp.where(improve[:, None], out.value, best)
        res = xp.where(improve, out.residual, res)
        codes = xp.where(improve, out.codes, codes)
        if bool((codes == int(ReturnCode.SUCCESS)).all()):
            break
    return RootLoopResult(best, codes, res, steps, None)


def _warn_unused_jac(solver) -> None:
    """A solver that never calls ``jac`` says so instead of ignoring it (as SciPy's solve_ivp does)."""
    from ..linalg import GMRES

    krylov = isinstance(solver, NewtonRaphson) and isinstance(solver.linear_solver, GMRES)
    if solver is not None and (krylov or not isinstance(solver, (NewtonRaphson, TrustRegion))):
        import warnings

        name = "NewtonRaphson(linear_solver=dq.GMRES(...)) (matrix-free)" if krylov else f"{type(solver).__name__}()"
        warnings.warn(f"jac is ignored by {name}: only dq.NewtonRaphson() with its dense LU, dq.TrustRegion() and "
                      "the default (solver=None) use a Jacobian", UserWarning, stacklevel=3)


def root_find(fn: Callable[..., Any], y0: Any, solver: RootSolver | None = None, *, args: tuple = (),
              jac: Callable[..., Any] | None = None, atol: float = 1e-6, rtol: float = 1e-6, max_steps: int = 100,
              batched: bool = False, throw: bool = True, compact: bool = False) -> Solution:
    """Solve fn(y, *args) = 0 from y0.

    Args:
        fn: ``fn(y, *args)`` returning an array shaped like y; it must not write into y (the solver's own
            iterate, and on the first call y0 itself: a fn doing ``y *= 0.5`` moves the iterate and fakes a root).
        y0: start point (float32/float64 NumPy or CuPy array).
        solver: a root solver; None tries robust methods in turn (see :func:`default_solvers`).
        jac: optional ``jac(y, *args)`` returning the Jacobian, shape (n, n) — or (B, n, n) when batched — in
            y0's dtype.
        atol, rtol: the per-sample test max|fn(y)| ≤ atol + rtol·min(max|y|, max|fn(y0)|): atol is absolute,
            rtol relative to the iterate's size (SciML's abstol/reltol) but capped at the start's residual
            (SciPy's ``f_rtol``), so runaway iterates are never accepted.
        max_steps: iteration limit (SciML's maxiters); any positive integer.
        batched: the leading axis holds independent systems (per-sample convergence and return codes).
        throw: raise :class:`~deqcore.SolveError` when a system fails (else check ``sol.result``).
        compact: with ``batched=True``, declares fn's rows independent and every element of ``args`` per-sample
            (batch on its leading axis; capture shared arrays in fn): finished samples are then dropped from the
            evaluations (fn is called on the running rows only, with the matching rows of ``args``) where the
            solver allows it (Anderson, Broyden, LimitedMemoryBroyden, FixedPointIteration).
            ``sol.stats["row_evaluations"]`` counts the rows evaluated (nfev × B without compaction).

    Every call of ``fn`` (and ``jac``) is checked to return an array of y0's kind, shape and dtype; float32 and
    float64 are supported. A SUCCESS sample's ``sol.value`` is the iterate that passed the test.

    >>> import numpy as np, deqcore as dq
    >>> sol = dq.root_find(lambda y: y ** 2 - np.array([4.0, 9.0]), np.ones(2))
    >>> sol.value, sol.success
    (array([2., 3.]), True)
    >>> dq.root_find(lambda y: np.arctan(y) - 2.0, np.zeros(1), throw=False).success     # no root: never SUCCESS
    False
    """
    fy0 = _check_common(fn, y0, solver, args, atol, rtol, max_steps, batched, throw, compact)
    jac0 = None
    if jac is not None:
        check_callable(jac, "jac")
        n = y0[0].size if batched else y0.size
        expected = ((y0.shape[0], n, n) if batched else (n, n))
        jac0 = check_returned_array(jac(y0, *args), "jac", expected, y0.dtype, get_namespace(y0).ndarray,
                                    shape_of="the Jacobian's")
        _warn_unused_jac(solver)
    return _solve(fn, y0, fy0, solver, args=args, jac=jac, atol=atol, rtol=rtol, max_steps=max_steps, batched=batched,
                  throw=throw, mode="root", compact=compact, jac0=jac0)


def fixed_point(fn: Callable[..., Any], y0: Any, solver: RootSolver | None = None, *, args: tuple = (),
                atol: float = 1e-6, rtol: float = 1e-6, max_steps: int = 100, batched: bool = False,
                throw: bool = True, compact: bool = False) -> Solution:
    """Find y = fn(y, *args) from y0; ``solver=None`` means ``Anderson()``.

    The test is per sample: max|fn(y) − y| ≤ atol + rtol·min(max|y|, s0) with s0 = max(max|y0|, max|fn(y0)|):
    atol is absolute, rtol relative to the iterate's size (SciML's reltol, as DEQs use it) but capped at the
    start's size s0, so iterates running off to infinity are never accepted; an iterate growing past s0/√eps
    (where fn(y) − y would round to zero) ends DIVERGED. The other arguments are as in :func:`root_find`.

    >>> import numpy as np, deqcore as dq
    >>> W = np.array([[0.5, 0.2], [0.1, 0.3]])
    >>> sol = dq.fixed_point(lambda z, x: np.tanh(z @ W.T + x), np.zeros((3, 2)), dq.Anderson(),
    ...                      args=(np.ones((3, 2)),), atol=1e-10, rtol=0.0, batched=True)
    >>> sol.success.tolist(), sol.stats["num_steps"] < 20
    ([True, True, True], True)
    """
    return checked_fixed_point(fn, y0, solver, args=args, atol=atol, rtol=rtol, max_steps=max_steps,
                               batched=batched, throw=throw, compact=compact)


def checked_fixed_point(fn, y0, solver=None, *, args=(), atol=1e-6, rtol=1e-6, max_steps=100, batched=False,
                        throw=True, compact=False, finite=False, conforming=False) -> Solution:
    """:func:`fixed_point` for callers that vouch for part of what it checks (the framework adapters, once per
    forward pass): ``finite``, y0 holds finite numbers (checked by the caller: no second pass over it);
    ``conforming``, every call of fn returns a C-contiguous array of y0's kind, dtype and shape (checked by fn
    itself: fn's output is then read as it is, without the per-call checks of :func:`fixed_point`). Every other
    argument is checked as :func:`fixed_point` checks it, and fn's output at y0 always is.

    >>> import numpy as np
    >>> sol = checked_fixed_point(lambda z: 0.5 * z + 1.0, np.zeros((2, 3)), atol=1e-10, rtol=0.0, batched=True,
    ...                           finite=True, conforming=True)
    >>> bool(np.allclose(sol.value, 2.0)), sol.success.tolist()
    (True, [True, True])
    """
    fy0 = _check_common(fn, y0, solver, args, atol, rtol, max_steps, batched, throw, compact, finite)
    return _solve(fn, y0, fy0, Anderson() if solver is None else solver, args=args, jac=None, atol=atol, rtol=rtol,
                  max_steps=max_steps, batched=batched, throw=throw, mode="fixed_point", compact=compact,
                  conforming=conforming)
