"""A variable-order (1–5) BDF / NDF method for stiff problems that reuses its Jacobian and LU factors across
many steps (the quasi-constant step-size form of Shampine & Reichelt, "The MATLAB ODE Suite", 1997).

The state is kept as backward differences of the solution, ``D[j] = ∇^j y_n`` scaled to the current step
size h. A step of order k predicts ``y⁰ = Σ_{j≤k} D[j]`` and solves the corrector

    y − y⁰ = d,   (h / α_k) f(t + h, y) − ψ − d = 0,   ψ = Σ_{j=1..k} γ_j D[j] / α_k,

by a simplified Newton iteration with the matrix ``I − (h/α_k) J``. Its convergence test is SciPy's (the rate
of the increments predicts the remaining error) with a fixed tolerance, 0.15 error weights (:data:`NEWTON_TOL`,
as LSODE's corrector test; SciPy's is min(0.03, √rtol)), and the last rate measured is carried to the next Newton
solve, whose first iteration converges when ``rate/(1 − rate)·‖dy‖`` is below the tolerance: a carried rate
serves one solve only (the next measures its own) and is forgotten on a new Jacobian, an order change or a
rejected attempt. J is kept until Newton converges slowly (then it is re-evaluated once per step), and the
LU factors are kept while h and the order stay the same.
The local error is ``(κ_k γ_k + 1/(k+1)) d``. The NDF variant (default) adds κ_k ∇^{k+1} terms that make
orders 1–4 more accurate at almost the same stability (Klopfenstein–Shampine coefficients); ``ndf=False``
gives the classical BDF formulas. Orders and step sizes are chosen by the method itself after k + 1 steps
of equal size (comparing the error estimates of orders k − 1, k, k + 1); a change of h rescales the
differences. The method tells the driver its next step size through :attr:`~deqcore.ode.base.Trial.h_next`.

One dense float64 system of at most :data:`~deqcore.ode.kernels_host.HOST_SYSTEM_LIMIT` unknowns runs the
whole step loop in one compiled call (:mod:`deqcore.ode.bdf_loop`; :meth:`BDFStepper.run_rows`), calling back
into Python only for f and the Jacobian: the same steps and numbers as the driver's loop over
:meth:`BDFStepper.attempt` at a fraction of its cost per step (``COMPILED_LOOP = False`` turns it off).

What it solves: unbatched NumPy problems (one state of any shape). Batched problems and CuPy arrays are
refused with a ``ValueError``; use ``dq.Rodas5P()`` there.

The derivative handed back with each accepted step is the corrector's ``(ψ + d)·α_k / h`` (equal to
f(t + h, y) to the Newton tolerance), not a fresh evaluation of f; under :func:`~deqcore.ode.steady_state`
(where the residual test reads it) f is evaluated at the new point.

A step whose Newton iteration does not converge (also: a singular matrix, or f returning NaN/inf) is
retried with half the step; when no step size works the solve ends with LINEAR_SOLVE_FAILED (the last
attempt's matrix could not be factored), DIVERGED or DT_TOO_SMALL, never SUCCESS.

>>> import numpy as np, deqcore as dq
>>> def robertson(t, y):
...     return np.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
...                      0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2])
>>> sol = dq.integrate(robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), dq.BDF(), atol=1e-10, rtol=1e-6)
>>> np.round(sol.ys[-1], 5).tolist(), sol.stats["njev"] < 20
([0.01787, 0.0, 0.98213], True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..results import ReturnCode
from .base import Evaluator, ODEMethod, Trial, host_float
from .kernels_host import (BAD_F, CONVERGED, FAILED, HOST_SYSTEM_LIMIT, bdf_error, bdf_newton, bdf_newton_apply,
                           bdf_newton_rhs, bdf_predict, bdf_rescale, bdf_update, factor_shifted, getrs_address,
                           new_factors)
from ..linalg.finite_diff import _GROW as _FD_GROW, check_sparsity_pattern, normalize_sparsity
from .jacobian import OneSystemJacobian

__all__ = ["BDF", "BDFStepper"]

MAX_ORDER = 5
NEWTON_MAXITER = 4
#: Newton's tolerance in error weights (the corrector's error is held to this fraction of what the error test
#: accepts, as LSODE's corrector test does with 0.5/(k + 2)); SciPy's BDF uses min(0.03, √rtol), which at
#: tight tolerances asks Newton for a thousandth of the error test's bound. Measured over quarter-decade
#: sweeps (rtol 1 … 1e-7) of Robertson, Van der Pol μ = 1000, HIRES and the 2-D Brusselator: 18–36% fewer rhs
#: calls per rtol and 21–37% fewer at matched error (errors per rtol 1.0–1.5× larger)
NEWTON_TOL = 0.15
MIN_FACTOR, MAX_FACTOR = 0.2, 10.0
#: marks LU factors held in the stepper's own arrays (the compiled small-system path)
_COMPILED = "compiled"
#: run the whole step loop of one small dense float64 system in compiled code (:mod:`deqcore.ode.bdf_loop`);
#: False: the driver's loop over :meth:`BDFStepper.attempt` (the same steps and numbers, slower)
COMPILED_LOOP = True
#: Klopfenstein–Shampine NDF coefficients κ_k (order 5 is plain BDF)
NDF_KAPPA = np.array([0.0, -0.1850, -1.0 / 9.0, -0.0823, -0.0415, 0.0])


def _coefficients(ndf: bool):
    kappa = NDF_KAPPA if ndf else np.zeros(MAX_ORDER + 1)
    gamma = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, MAX_ORDER + 1))])
    alpha = (1.0 - kappa) * gamma
    error_const = kappa * gamma + 1.0 / np.arange(1, MAX_ORDER + 2)
    return gamma, alpha, error_const


def _rescale_matrix(order: int, factor: float) -> np.ndarray:
    """The matrix taking differences at step h to differences at step factor·h (Shampine & Reichelt)."""
    i = np.arange(1, order + 1)[:, None]
    j = np.arange(1, order + 1)
    M = np.zeros((order + 1, order + 1))
    M[1:, 1:] = (i - 1 - factor * j) / i
    M[0] = 1.0
    return np.cumprod(M, axis=0)


def rescale_differences(D: np.ndarray, order: int, factor: float) -> None:
    """Rescale the backward differences ``D[:order + 1]`` (in place) from step h to step ``factor·h``.

    >>> D = np.array([[1.0], [0.5], [0.0], [0.0]])      # y = 1 with h·y' = 0.5: a linear solution
    >>> rescale_differences(D, 2, 0.5)
    >>> D[:3, 0].tolist()                                 # h halves: h·y' halves, ∇² stays 0
    [1.0, 0.25, 0.0]
    """
    RU = _rescale_matrix(order, factor) @ _rescale_matrix(order, 1.0)
    D[:order + 1] = RU.T @ D[:order + 1]


class BDFStepper(OneSystemJacobian):
    """Steps of the BDF/NDF method for the ODE driver (see the module docstring)."""

    def __init__(self, ev: Evaluator, method: "BDF", jac):
        self.ev, self.jac = ev, jac
        self.n = int(np.prod(ev.shape, dtype=np.int64))
        self.max_order = method.max_order
        self.gamma, self.alpha, self.error_const = _coefficients(method.ndf)
        self.pattern = None if method.jac_sparsity is None else normalize_sparsity(method.jac_sparsity, self.n)
        self.error_exponent = 2
        self.fd = None
        self.stats = {"njev": 0, "nlinsolve": 0, "nfactor": 0, "nfev_jac": 0, "nfailed_solves": 0,
                      "nnewton_fail": 0}
        self.D = None
        self.order, self.h_abs, self.n_equal = 1, None, 0
        self.J = None
        self.jac_current = False
        self.lu = None            # (solve, c) for the current c = h/α_k
        self._sparse = None       # the sparse factors (a SparseFactors) when J is sparse
        self._pending = None
        self._rate = -1.0         # Newton's last measured convergence rate (< 0: none known)
        # one dense float64 system of at most HOST_SYSTEM_LIMIT unknowns: the whole loop compiled (run_rows)
        self.host = self.pattern is None and np.dtype(ev.dtype) == np.float64 and 1 <= self.n <= HOST_SYSTEM_LIMIT

    #: rows of the differences array: D[0..k+2] for k up to MAX_ORDER
    D_rows = MAX_ORDER + 3

    def newton_tolerance(self, rtol) -> float:
        """Newton stops when its predicted error is below this (in error weights): :data:`NEWTON_TOL`, at
        least 10 eps / rtol."""
        return max(10 * np.finfo(self.ev.dtype).eps / rtol, NEWTON_TOL)

    # ---- Jacobian and factorisation ----
    def _factor(self, c):
        """Factor ``I − c J``; returns a solve function, or None when the matrix is singular/non-finite."""
        self.stats["nfactor"] += 1
        J, n = self.J, self.n
        if not isinstance(J, np.ndarray):
            return self._factor_sparse(J, c)
        if n <= HOST_SYSTEM_LIMIT:   # factors in the stepper's arrays, solved by the compiled Newton kernel
            singular, _ = factor_shifted(J, 1.0, c, float(np.finfo(J.dtype).eps), self._lu, self._piv)
            return None if singular else _COMPILED
        from scipy.linalg.lapack import get_lapack_funcs

        M = np.eye(n, dtype=J.dtype) - c * J
        if not np.isfinite(M).all():
            return None
        getrf, getrs = get_lapack_funcs(("getrf", "getrs"), (M,))
        lu, piv, info = getrf(M, overwrite_a=True)
        diag = np.abs(np.diagonal(lu))
        if info != 0 or not diag.min() > np.finfo(M.dtype).eps * diag.max():
            return None

        def solve(b):
            return getrs(lu, piv, b)[0]
        return solve

    def _factor_sparse(self, J, c):
        """:meth:`_factor` for a SciPy sparse J: the pattern's ordering and symbolic factorisation made once
        (:class:`~deqcore.ode.sparse_lu.SparseFactors`), then only the numeric factorisation per call."""
        if self._sparse is None:
            from .sparse_lu import SparseFactors
            self._sparse = SparseFactors(self.pattern)
        return self._sparse.solver(J, 1.0, c, J.dtype)

    # ---- protocol ----
    def start(self, t0, y0, f0):
        self._t0, self._y0, self._f0 = t0, y0.reshape(-1).copy(), f0.reshape(-1).copy()

    def _init_differences(self, h_abs, direction, tol):
        n, dtype = self.n, self.ev.dtype
        self.D = np.zeros((self.D_rows, n), dtype=dtype)
        self.D[0] = self._y0
        self.D[1] = self._f0 * (h_abs * direction)
        self.h_abs, self.order, self.n_equal = h_abs, 1, 0
        # work arrays of the compiled pieces (kernels_host), reused by every attempt
        self._D_new = np.empty_like(self.D)
        self._y_predict, self._psi, self._scale = (np.empty(n, dtype=dtype) for _ in range(3))
        self._work = np.empty(n, dtype=dtype)
        if n <= HOST_SYSTEM_LIMIT:
            self._lu, self._piv = new_factors(n, dtype)
            self._getrs = getrs_address(dtype)
        atol, rtol = tol
        # a copy (writable): a read-only view (per-component atol) would compile the kernels a second time
        self._atol = np.array(np.broadcast_to(np.asarray(atol, dtype=np.float64), self.ev.shape).reshape(-1)) \
            if np.ndim(atol) else np.array([float(atol)])
        self._rtol = float(rtol)
        self._newton_tol = self.newton_tolerance(rtol)

    def run_rows(self, rows, y, fy, tol, max_steps, record):
        """The driver's loop in compiled code (:mod:`deqcore.ode.bdf_loop`) for one small dense float64
        system; None where the driver's own loop runs (other systems, or ``COMPILED_LOOP`` off)."""
        if not (self.host and COMPILED_LOOP) or rows.batched:
            return None
        from .bdf_loop import run_bdf_loop
        from .driver import T_EPS
        from .kernels_host import getrf_address

        params = dict(max_iter=NEWTON_MAXITER, min_factor=MIN_FACTOR, max_factor=MAX_FACTOR, t_eps=T_EPS,
                      getrs=getrs_address(np.float64), getrf=getrf_address(np.float64), fd_grow=_FD_GROW)
        return run_bdf_loop(self, rows, y, fy, tol, max_steps, record, params)

    def attempt(self, t, y, fy, h, active=None, tol=None) -> Trial:
        ev = self.ev
        t, h = host_float(t), host_float(h)
        h_abs, direction = abs(h), (1.0 if h > 0 else -1.0)
        if self.D is None:
            self._init_differences(h_abs, direction, tol)
        elif h_abs != self.h_abs:                      # the driver's h (clipped at t1, or after a rejection)
            bdf_rescale(self.D, self.order, h_abs / self.h_abs)
            self.h_abs, self.n_equal, self.lu = h_abs, 0, None
        order, D = self.order, self.D
        t_new = t + h
        y_predict, psi, scale = self._y_predict, self._psi, self._scale
        bdf_predict(D, order, self.gamma, self.alpha, self._atol, self._rtol, y_predict, psi, scale)
        c = h / self.alpha[order]
        linear_failed, f_pred = False, None
        while True:
            if self.J is None:
                self.J = self._evaluate_jacobian(t, D[0], self._f_at_start(t), tol)
                self.jac_current, self.lu = True, None
                self._rate = -1.0
            if self.lu is None or self.lu[1] != c:
                solve = self._factor(c)
                self.lu = None if solve is None else (solve, c)
            if self.lu is None:
                linear_failed = True
                converged = False
            else:
                linear_failed = False
                converged, n_iter, y_new, d, f_first = self._newton(t_new, y_predict, c, psi, scale)
                f_pred = f_first if f_pred is None else f_pred
            if converged or self.jac_current:
                break
            if f_pred is None:     # Newton's first evaluation is f(t_new, y_predict): reused for the Jacobian
                f_pred = ev(t_new, y_predict.reshape(ev.shape)).reshape(-1)
            if not np.isfinite(f_pred).all():
                break
            self.J = self._evaluate_jacobian(t_new, y_predict.copy(), f_pred, tol)
            self.jac_current, self.lu = True, None
            self._rate = -1.0
        if not converged:
            self.stats["nnewton_fail"] += 1
            if linear_failed:
                self.stats["nfailed_solves"] += 1
            return self._reject(y, fy, 0.5 * h_abs, ReturnCode.LINEAR_SOLVE_FAILED if linear_failed else None)
        safety = 0.9 * (2 * NEWTON_MAXITER + 1) / (2 * NEWTON_MAXITER + n_iter)
        # the driver's error weights (into scale) and its error sum
        err_sq, y_absmax = bdf_error(D[0], y_new, d, self.error_const[order], self._atol, self._rtol, scale)
        error_norm = math.sqrt(err_sq / max(self.n, 1))
        if not math.isfinite(error_norm):
            return self._reject(y, fy, 0.5 * h_abs, None)
        if error_norm > 1.0:
            factor = max(MIN_FACTOR, safety * error_norm ** (-1.0 / (order + 1)))
            return self._reject(y, fy, factor * h_abs, None, err_sq)
        # accepted (the driver's test is the same): the new differences, then the order and step size
        select = self.n_equal + 1 >= order + 1
        f_new = np.empty_like(d)      # the corrector's derivative (ψ + d) / c
        err_m, err_p = bdf_update(D, self._D_new, d, order, self.error_const, scale, self.max_order, select,
                                  psi, c, f_new)
        new_order, h_next = order, h_abs
        if select:
            norms = (err_m, error_norm, err_p)
            factors = [math.inf if e == 0.0 else e ** (-1.0 / (order + k)) for k, e in enumerate(norms)]
            best = max(range(3), key=lambda k: (factors[k] != factors[k], factors[k]))  # argmax, NaN first
            new_order = order + best - 1
            h_next = h_abs * min(MAX_FACTOR, safety * factors[best])
        y1 = y_new.reshape(ev.shape)
        f1 = f_new.reshape(ev.shape) if not ev.autonomous else ev(t_new, y1)
        self._pending = new_order
        return Trial(y1, f1, None, order + 1, err_sq=err_sq, y_absmax=y_absmax, h_next=h_next)

    def _f_at_start(self, t):
        return self._f0 if self._y0 is not None and np.array_equal(self._y0, self.D[0]) else \
            self.ev(t, self.D[0].reshape(self.ev.shape)).reshape(-1)

    def _newton(self, t_new, y_predict, c, psi, scale):
        """The simplified Newton iteration of the corrector (the vector work compiled, f in Python)."""
        ev, shape, tol = self.ev, self.ev.shape, self._newton_tol
        solve = self.lu[0]
        d = np.zeros(y_predict.shape[0], dtype=y_predict.dtype)
        y = y_predict.copy()
        dy_norm_old, converged, f_first = -1.0, False, None
        rate_prev = self._rate
        k = 0
        for k in range(NEWTON_MAXITER):
            f = ev(t_new, y.reshape(shape)).reshape(-1)
            f_first = f if k == 0 else f_first
            if solve is _COMPILED:
                status, dy_norm = bdf_newton(self._getrs, f, c, psi, d, y, self._lu, self._piv, scale, self._work,
                                             dy_norm_old, rate_prev, tol, k, NEWTON_MAXITER)
            else:
                rhs = self._work
                if not bdf_newton_rhs(f, c, psi, d, rhs):
                    break
                status, dy_norm = bdf_newton_apply(np.ascontiguousarray(solve(rhs)), scale, y, d, dy_norm_old,
                                                   rate_prev, tol, k, NEWTON_MAXITER)
            if status == BAD_F:
                break
            self.stats["nlinsolve"] += 1
            if dy_norm_old >= 0.0:        # the rate measured, carried to the next solve's first iteration
                self._rate = dy_norm / dy_norm_old
            if status == FAILED:
                break
            if status == CONVERGED:
                converged = True
                if k == 0:                # a carried rate serves one solve: the next measures its own
                    self._rate = -1.0
                break
            dy_norm_old = dy_norm
        return converged, k + 1, y, d, f_first

    def _reject(self, y, fy, h_next, code, err_sq=math.inf):
        """A rejected attempt: the state unchanged; the driver retries with ``h_next``."""
        self._rate = -1.0
        self._pending = None
        return Trial(y, fy, None, self.order + 1, err_sq=float(err_sq),
                     y_absmax=float(np.max(np.abs(y))) if y.size else 0.0, h_next=h_next,
                     code=None if code is None else int(code))

    def accept(self, trial, mask, t_new):
        new_order = self._pending
        self.D, self._D_new = self._D_new, self.D
        if new_order != self.order:
            self.order, self.n_equal, self.lu = new_order, 0, None
            self._rate = -1.0
        else:
            self.n_equal += 1
        self.jac_current = False
        self._y0 = None
        self._pending = None


@dataclass(frozen=True, eq=False)
class BDF(ODEMethod):
    """Variable-order (1–5) BDF/NDF method for stiff problems, with Jacobian and LU reuse (see
    :mod:`deqcore.ode.bdf`). Few Jacobians per solve: the best choice when each Jacobian is expensive
    (many unknowns without an analytic ``jac``, or a sparse pattern with many colour groups).

    Args:
        max_order: highest order used (1–5; default 5; 2 keeps the method A-stable).
        ndf: use the numerical differentiation formulas (default True) instead of classical BDF.
        jac_sparsity: optional ``(n, n)`` pattern of ∂f/∂y (array-like or ``scipy.sparse``): finite
            differences then cost one f per group of columns that share no row, and the Newton matrix is
            factored by a sparse LU whose ordering and symbolic factorisation are made once per
            pattern (:mod:`deqcore.ode.sparse_lu`).

    Unbatched NumPy problems only (``integrate``, or ``steady_state`` with ``batched=False``).

    >>> import numpy as np, deqcore as dq
    >>> lam = 1e6
    >>> sol = dq.integrate(lambda t, y: -lam * (y - np.cos(t)), np.array([0.0]), (0.0, 1.0), dq.BDF(),
    ...                    atol=1e-10, rtol=1e-8)
    >>> exact = (lam ** 2 * np.cos(1.0) + lam * np.sin(1.0)) / (lam ** 2 + 1)
    >>> bool(abs(sol.ys[-1, 0] - exact) < 1e-8), sol.stats["njev"] <= 2     # J evaluated at most twice
    (True, True)
    """

    max_order: int = 5
    ndf: bool = True
    jac_sparsity: Any = None

    def __post_init__(self):
        if isinstance(self.max_order, bool) or not isinstance(self.max_order, (int, np.integer)):
            raise TypeError(f"max_order must be an int, got {type(self.max_order).__name__}")
        if not 1 <= self.max_order <= MAX_ORDER:
            raise ValueError(f"max_order must be between 1 and {MAX_ORDER}, got {self.max_order}")
        if not isinstance(self.ndf, (bool, np.bool_)):
            raise TypeError(f"ndf must be a bool, got {type(self.ndf).__name__}")
        if self.jac_sparsity is not None:
            check_sparsity_pattern(self.jac_sparsity)

    @property
    def order(self):
        return self.max_order

    def stepper(self, ev: Evaluator, jac=None):
        if ev.batched:
            raise ValueError("dq.BDF() solves unbatched problems only (batched=False); for a batch use "
                             "dq.Rodas5P() or solve the samples one by one")
        if ev.xp is not np:
            raise ValueError("dq.BDF() needs a NumPy y0 (it runs on the host); for CuPy arrays use dq.Rodas5P()")
        n = int(np.prod(ev.shape, dtype=np.int64))
        if self.jac_sparsity is not None and tuple(np.shape(self.jac_sparsity)) != (n, n):
            raise ValueError(f"jac_sparsity must have shape ({n}, {n}) for this y0 (n = y0.size), got "
                             f"{tuple(np.shape(self.jac_sparsity))}")
        return BDFStepper(ev, self, jac)
