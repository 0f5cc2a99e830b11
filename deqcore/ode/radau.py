"""The 3-stage Radau IIA method of order 5 for stiff problems (Hairer & Wanner, Solving ODEs II, §IV.8).

A step of size h from ``(t, y)`` solves the collocation system for the stage increments ``Z_i = Y_i − y``,

    Z = h (A ⊗ I) F(Z),   F(Z)_i = f(t + c_i h, y + Z_i),   y_new = y + Z_3   (stiffly accurate),

by a simplified Newton iteration. With ``A⁻¹ = T Λ T⁻¹`` (one real eigenvalue γ, one complex pair) and
``W = (T⁻¹ ⊗ I) Z`` the 3n × 3n Newton matrix splits into one real ``γ/h − J`` and one complex
``(α + iβ)/h − J`` system, factored once per (h, J) and reused while both stay. J = ∂f/∂y is kept across
steps; it is re-evaluated after a step whose Newton iteration needed more than two iterations (one more for
every three Newton iterations' worth of rhs calls a finite-difference Jacobian costs) at a contraction rate θ
above ``jac_rate``, and when Newton fails with a J that is not fresh. A failed Newton iteration shrinks the
step (by half, or by Hairer's estimate of what converges in time) and takes a fresh J at once, as RADAU5 does:
at loose tolerances Newton, not the error estimate, limits the step, and a retry at the failed size with a
fresh J was found to fail again almost always. For the same reason the next step size is also held to
``h·RATE_TARGET/θ`` (at least half of h) after a step whose Newton iteration measured a contraction rate θ
(Gustafsson and Söderlind's control of the convergence rate, with θ taken proportional to h), so that the
step grows only as far as Newton still converges. The step size is kept unchanged when the controller asks
for a change by a factor in [1, 1.2], so that the factors can be reused too. Newton starts from the previous
step's collocation polynomial extrapolated to the new stages, and stops once its predicted remaining error
``θ/(1 − θ)·‖ΔW‖`` is below ``newton_tol · min(0.03, √rtol)`` (in units of the error weights; ``newton_tol`` and
``jac_rate`` adapt to what a Jacobian costs: 0.03 and 0.01 while it costs at most two Newton iterations, else
1 (the Newton tolerance of SciPy's Radau) and 0.001 (RADAU5's rate); the rate of the
previous step serves the first iteration, so a well-predicted step needs a single iteration, 3 evaluations
of f); it is abandoned (a smaller step) when the rate predicts it cannot reach ``min(0.03, √rtol)`` within
``max_newton_iter`` iterations.

Error estimate: the embedded order-3 formula filtered by ``(I − hγ₀J)⁻¹`` (γ₀ = 1/γ), so that it stays bounded
for stiff components; at the first step and after a rejection a second, re-filtered estimate is used when the
first exceeds the tolerance. Step sizes: Gustafsson's predictive controller (the smaller of it and the
standard factor), growth at most 8×, shrinking at least to 1/5. Dense output is the collocation polynomial
(degree 3, order 3 uniformly, exact at the step's ends). The method tells the driver its next step size
through :attr:`~deqcore.ode.base.Trial.h_next`.

The derivative handed back with each accepted step is the collocation polynomial's slope at t + h (equal to
f(t + h, y_new) to the Newton tolerance; the filtered error estimate of the next step is insensitive to the
difference), not a fresh evaluation of f: f is evaluated there only under :func:`~deqcore.ode.steady_state`
(where the residual test reads it) and before a finite-difference Jacobian at the first point. A
finite-difference Jacobian formed after an accepted step differences around the last stage point its Newton
iteration evaluated f at, ``Y₃ = y + Z₃`` before the last correction, at ``t + c₃h = t + h`` (c₃ = 1), when
that correction was within Newton's abandon tolerance ``min(0.03, √rtol)`` (not after a first iteration
accepted on the carried rate): f there is already known, so the Jacobian costs its columns only (measured
over 29 tolerances rtol 1 … 1e-8: 4.6% and 3.7% fewer rhs calls on Robertson and Van der Pol μ = 1000 at the
same errors; HIRES, whose Newton iteration stops at the looser tolerance of expensive Jacobians, rarely
qualifies).

A step whose Newton iteration fails (also: a singular or non-finite matrix, or f returning NaN/inf) is retried
with a smaller step and, if J was not fresh, a new J; when no step size works the solve ends with
LINEAR_SOLVE_FAILED (the last attempt's matrix could not be factored), DIVERGED or DT_TOO_SMALL, never SUCCESS.

One dense float64 system of at most :data:`~deqcore.ode.kernels_host.HOST_SYSTEM_LIMIT` unknowns does a
step's vector work (the factorisations, each Newton iteration, the error estimate, the extrapolation) in a few
compiled calls (:mod:`deqcore.ode.kernels_host`) that call the BLAS/LAPACK routines the array code reaches
through NumPy and SciPy, so it takes the same steps as the array code, which sparse, larger and float32
systems use. Such a system also runs the driver's whole step loop in compiled code
(:mod:`deqcore.ode.radau_loop`; :meth:`RadauStepper.run_rows`), calling back into Python only for f and the
Jacobian: the same attempts and numbers as the driver's loop over :meth:`RadauStepper.attempt`, at a fraction
of its cost per step (``COMPILED_LOOP = False`` turns it off).

What it solves: unbatched NumPy problems (one state of any shape). Batched problems and CuPy arrays are
refused with a ``ValueError``; use ``dq.Rodas5P()`` there.

>>> import numpy as np, deqcore as dq
>>> def robertson(t, y):
...     return np.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
...                      0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2])
>>> sol = dq.integrate(robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), dq.Radau(), atol=1e-10, rtol=1e-6)
>>> np.round(sol.ys[-1], 5).tolist(), sol.stats["njev"] < sol.stats["accepted"] // 2
([0.01787, 0.0, 0.98213], True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..linalg.finite_diff import _GROW as _FD_GROW, check_sparsity_pattern, normalize_sparsity
from ..results import ReturnCode
from .base import Evaluator, ODEMethod, Trial, host_float
from .kernels_host import (BAD_F, CONVERGED, HOST_SYSTEM_LIMIT, radau_addresses, radau_error,
                           radau_extrapolation, radau_factor, radau_newton, radau_start)
from .jacobian import OneSystemJacobian
from .radau_sparse import radau_newton_sparse

__all__ = ["Radau", "RadauStepper", "radau_coefficients"]

#: step-size factor limits (new h / old h), the safety factor, and the ratio band in which h is kept
MIN_FACTOR, MAX_FACTOR, SAFETY = 0.2, 8.0, 0.9
KEEP_LOW, KEEP_HIGH = 1.0, 1.2
#: the Newton contraction rate the step size aims at: after a step whose Newton iteration measured the rate θ
#: (two or more iterations) the next step is at most h·RATE_TARGET/θ, and this limit shrinks it at most to
#: RATE_MIN_FACTOR·h (measured on Robertson, Van der Pol μ = 1000 and HIRES, rtol 1e-1 … 1e-9: fewer Newton
#: failures at loose tolerances, the same steps at tight ones)
RATE_TARGET, RATE_MIN_FACTOR = 0.2, 0.5
#: marks factors held in the stepper's own arrays (the compiled path of one small dense float64 system)
_COMPILED = "compiled"
#: J is kept after a step whose Newton iteration took at most this many iterations, whatever its rate (plus one
#: per KEEP_ITER_PER_JAC_ITERS Newton iterations a Jacobian costs, below)
JAC_KEEP_ITER = 2
#: rhs calls of one Newton iteration (one evaluation per stage): the unit in which a Jacobian's cost is measured
NEWTON_ITER_CALLS = 3
#: the automatic ``newton_tol`` and ``jac_rate`` (``Radau``'s defaults, None): (NEWTON_TOL, JAC_RATE) while a
#: Jacobian costs at most EXPENSIVE_JAC_ITERS Newton iterations (the user's ``jac``, or finite differences of at
#: most 6 columns or column groups), else (EXPENSIVE_NEWTON_TOL, EXPENSIVE_JAC_RATE): Newton then stops at its
#: abandon tolerance min(0.03, √rtol) (SciPy's Radau's Newton tolerance) and J is re-evaluated at RADAU5's rate
NEWTON_TOL, JAC_RATE = 0.03, 1e-2
EXPENSIVE_JAC_ITERS = 2.0
EXPENSIVE_NEWTON_TOL, EXPENSIVE_JAC_RATE = 1.0, 1e-3
#: a step may take one more Newton iteration before J is re-evaluated for every KEEP_ITER_PER_JAC_ITERS Newton
#: iterations a Jacobian costs (JAC_KEEP_ITER + ⌊cost / 3⌋ iterations)
KEEP_ITER_PER_JAC_ITERS = 3

#: one small dense float64 system runs its whole step loop in compiled code (:mod:`deqcore.ode.radau_loop`);
#: False keeps it on the driver's loop (the same steps; tests compare the two)
COMPILED_LOOP = True
#: run Newton's iterations with sparse factors (``jac_sparsity``, float64) in compiled code
#: (:mod:`deqcore.ode.radau_sparse`); False: the array code (the same numbers, slower)
SPARSE_COMPILED = True


_EPS64 = float(np.finfo(np.float64).eps)


def newton_tolerance(rtol: float, dtype) -> float:
    """The error (in error weights) Newton must reach: ``min(0.03, √rtol)``, at least 10 eps / rtol; it stops
    at ``newton_tol`` times this, and is abandoned when it cannot reach this."""
    eps = _EPS64 if dtype == np.float64 else float(np.finfo(dtype).eps)
    return max(10.0 * eps / rtol, min(0.03, rtol ** 0.5))


@dataclass(frozen=True)
class RadauCoefficients:
    """Everything the method needs, derived from its nodes (see :func:`radau_coefficients`)."""

    c: np.ndarray          # nodes (3,)
    A: np.ndarray          # collocation matrix (3, 3)
    T: np.ndarray          # A⁻¹ = T Λ T⁻¹
    T_inv: np.ndarray
    gamma: float           # real eigenvalue of A⁻¹
    mu: complex            # the complex eigenvalue pairing with W₂ + iW₃: the matrix (mu/h − J)
    error: np.ndarray      # the filtered estimate is (γ/h − J)⁻¹ (f(t, y) + Σ error_i Z_i / h)
    dense: np.ndarray      # collocation polynomial: y + Σ_i Z_i Σ_k dense[i, k] θ^(k+1)


def radau_coefficients() -> RadauCoefficients:
    """The coefficients of Radau IIA with 3 stages, computed from its nodes c (the zeros of
    ``d²/dx² (x²(x − 1)³)``... i.e. (4 ∓ √6)/10 and 1): A from the collocation conditions
    ``Σ_j a_ij c_jᵏ⁻¹ = c_iᵏ / k``; T from the eigenvectors of A⁻¹ (real one of unit length, complex one with
    last entry 1); the embedded order-3 weights b̂ (with b̂₀ = 1/γ on f(t, y)) from the order conditions.

    >>> co = radau_coefficients()
    >>> bool(np.allclose(co.A.sum(axis=1), co.c)), round(co.gamma, 6), round(abs(co.mu.imag), 6)
    (True, 3.637834, 3.050430)
    >>> s6 = np.sqrt(6.0)        # the closed form of Hairer & Wanner's error coefficients
    >>> bool(np.allclose(co.error, [-(13 + 7 * s6) / 3, (-13 + 7 * s6) / 3, -1 / 3]))
    True
    """
    s6 = np.sqrt(6.0)
    c = np.array([(4.0 - s6) / 10.0, (4.0 + s6) / 10.0, 1.0])
    k = np.arange(1, 4)
    V = c[:, None] ** (k - 1)                       # V[j, k] = c_j^(k-1)
    A = (c[:, None] ** k / k) @ np.linalg.inv(V)
    A_inv = np.linalg.inv(A)
    values, vectors = np.linalg.eig(A_inv)
    real = int(np.argmin(np.abs(values.imag)))
    cplx = int(np.argmax(values.imag))              # the eigenvalue α + iβ with β > 0
    gamma = float(values[real].real)
    r = vectors[:, real].real
    r = r / np.linalg.norm(r)
    v = vectors[:, cplx] / vectors[2, cplx]
    T = np.stack([r, v.real, v.imag], axis=1)
    T_inv = np.linalg.inv(T)
    Lam = T_inv @ A_inv @ T
    alpha, beta21 = Lam[1, 1], Lam[2, 1]
    # rows 2–3 of (Λ/h − J) ΔW = R read ((α + iΛ₂₁)/h − J)(ΔW₂ + iΔW₃) = R₂ + iR₃ since Λ₁₂ = −Λ₂₁
    mu = complex(alpha, beta21)
    b_hat = np.linalg.solve(np.vander(c, 3, increasing=True).T, [1.0 - 1.0 / gamma, 0.5, 1.0 / 3.0])
    error = gamma * (b_hat @ A_inv - np.array([0.0, 0.0, 1.0]))
    Q = c[:, None] ** k                             # ℓ_i(θ) = Σ_k P[i, k] θ^k with ℓ_i(c_j) = δ_ij
    dense = np.linalg.inv(Q).T
    return RadauCoefficients(c, A, T, T_inv, gamma, mu, error, dense)


COEF = radau_coefficients()
#: the last row of A⁻¹: the collocation polynomial's slope at the step's end is (A⁻¹)₃ Z / h
_A_INV_LAST = np.linalg.inv(COEF.A)[2]


def _lagrange(theta):
    """ℓ_i(θ) for the collocation polynomial (shape ``(3,) + shape(theta)``)."""
    theta = np.asarray(theta, dtype=float)
    powers = theta[..., None] ** np.arange(1, 4)
    return np.moveaxis(powers @ COEF.dense.T, -1, 0)


_C_FLAT, _DENSE_FLAT = np.ascontiguousarray(COEF.c), np.ascontiguousarray(COEF.dense).ravel()
_C_LIST = [float(ci) for ci in COEF.c]
_LOOP: dict = {}


def _load_loop():
    """:func:`~deqcore.ode.radau_loop.run_radau_loop` (imported on first use: it imports this module)."""
    from .driver import T_EPS
    from .radau_loop import run_radau_loop

    _LOOP.update(run=run_radau_loop, t_eps=T_EPS)
    return run_radau_loop


_COEFFICIENTS: dict = {}


def _coefficients(dtype):
    """(T, T⁻¹, error weights, last row of A⁻¹, T and T⁻¹ C-contiguous) in ``dtype``, formed once per dtype
    (shared by every stepper: never written)."""
    out = _COEFFICIENTS.get(dtype)
    if out is None:
        T, T_inv = COEF.T.astype(dtype), COEF.T_inv.astype(dtype)
        out = (T, T_inv, COEF.error.astype(dtype), _A_INV_LAST.astype(dtype), np.ascontiguousarray(T),
               np.ascontiguousarray(T_inv))
        _COEFFICIENTS[dtype] = out
    return out


def extrapolation_matrix(ratio: float) -> np.ndarray:
    """``M`` with ``Z_new ≈ M @ Z_old``: the last step's collocation polynomial evaluated at the new stages
    (step-size ratio ``ratio`` = h_new / h_old), minus the new start point ``y + Z_old[2]``: ``M[j, i] =
    ℓ_i(1 + c_j r)`` (column 2 minus 1), formed by one compiled kernel that the compiled loop calls too."""
    out = np.empty(9)
    radau_extrapolation(float(ratio), _C_FLAT, _DENSE_FLAT, out)
    return out.reshape(3, 3)


class CollocationPolynomial:
    """The dense output of one accepted step: ``θ ↦ y0 + Σ_i ℓ_i(θ) Z_i`` (θ = (t − t0)/h in [0, 1])."""

    __slots__ = ("y0", "Z", "shape")

    def __init__(self, y0, Z, shape):
        self.y0, self.Z, self.shape = y0, Z, shape

    def __call__(self, theta):
        w = _lagrange(float(theta)).astype(self.Z.dtype)
        return (self.y0 + w @ self.Z).reshape(self.shape)


def _rms(x) -> float:
    return float(np.sqrt(np.dot(x.ravel(), x.ravel()) / x.size)) if x.size else 0.0


class RadauStepper(OneSystemJacobian):
    """Steps of Radau IIA (order 5) for the ODE driver (see the module docstring)."""

    error_exponent = 4     # the embedded estimate is O(h⁴): used for the driver's first step size

    def __init__(self, ev: Evaluator, method: "Radau", jac):
        self.ev, self.jac = ev, jac
        self.n = n = math.prod(ev.shape)
        self.dtype = dt = np.dtype(ev.dtype)
        self.cdtype = np.result_type(dt, np.complex64)
        self.max_iter = method.max_newton_iter
        self._jac_rate = method.jac_rate
        self._newton_tol = method.newton_tol
        self.jac_calls = 0          # rhs calls of a Jacobian (columns or column groups; 0 with the user's jac)
        self.pattern = None if method.jac_sparsity is None else normalize_sparsity(method.jac_sparsity, n)
        self._sparse = None         # the sparse factors (a SparseFactors) when J is sparse
        self._sparse_arrays = None  # their compiled arrays (real, complex) for radau_newton_sparse, or None
        # the method's coefficients in the state's dtype (shared by every stepper, never written)
        self._T, self._T_inv, self._e, self._A_inv_last, self._T_c, self._T_inv_c = _coefficients(dt)
        self._c = _C_LIST
        self.fd = None
        self.stats = {"njev": 0, "nlinsolve": 0, "nfactor": 0, "nfev_jac": 0, "nfailed_solves": 0,
                      "nnewton_fail": 0}
        self.J = None
        self.jac_fresh = False      # J was evaluated at the current start point
        self.need_jac = True
        self.lu = None              # (h, solve_real, solve_complex)
        self.faccon = 1.0           # θ/(1 − θ) of the last Newton iteration: predicts the next one's error
        self.Z_prev = self.h_prev = None
        self.first, self.last_rejected = True, False
        self.h_acc = self.err_acc = None
        self._pending = None
        self._f_exact = True        # the f handed in with the state is an evaluation (not the implied one)
        self._f_base = None         # f evaluated at the current state by this stepper (kept across rejections)
        self._weights_checked = False
        # (Y₃, f(t, Y₃)) of the last Newton iteration of the step that ended at the current state: the base
        # point of its finite-difference Jacobian when f is not evaluated there (Y₃ = y up to Newton's last
        # correction, and t + c₃h = t since c₃ = 1), which saves that evaluation of f; None when that last
        # correction exceeded Newton's abandon tolerance (a first iteration accepted on the carried rate)
        self._stage_point = self._stage_try = None
        # one dense float64 system of at most HOST_SYSTEM_LIMIT unknowns: the vector work of a step in compiled
        # kernels (kernels_host) calling the BLAS/LAPACK routines the array code reaches, so the same numbers
        # (their buffers are allocated by the first factorisation: the compiled loop has its own)
        self.host = self.pattern is None and dt == np.float64 and 1 <= n <= HOST_SYSTEM_LIMIT
        if self.host:
            self._addresses = radau_addresses()
            self._lu_r = None

    def _host_buffers(self):
        """The buffers of the host kernels (driver's loop on one small dense float64 system)."""
        n = self.n
        self._lu_r, self._lu_c = np.empty((n, n), order="F"), np.empty((n, n), np.complex128, order="F")
        self._piv_r, self._piv_c = np.empty(n, np.int32), np.empty(n, np.int32)
        self._scale, self._y_new, self._ez = np.empty(n), np.empty(n), np.empty(n)
        self._no_rows = np.empty((0, n))
        self._M = (None, None)

    # ---- heuristics that adapt to what a Jacobian costs (jac_calls, set by each evaluation) ----
    @property
    def jac_iters(self) -> float:
        """The last Jacobian's cost in Newton iterations (0 with the user's ``jac``)."""
        return self.jac_calls / NEWTON_ITER_CALLS

    @property
    def jac_expensive(self) -> bool:
        return self.jac_iters > EXPENSIVE_JAC_ITERS

    @property
    def newton_factor(self) -> float:
        """Newton stops at ``newton_factor · min(0.03, √rtol)`` error weights (``newton_tol``, or automatic)."""
        if self._newton_tol is not None:
            return self._newton_tol
        return EXPENSIVE_NEWTON_TOL if self.jac_expensive else NEWTON_TOL

    @property
    def jac_rate(self) -> float:
        """J is re-evaluated after a step that needed more than :attr:`jac_keep_iter` Newton iterations at a
        rate above this (``jac_rate``, or automatic)."""
        if self._jac_rate is not None:
            return self._jac_rate
        return EXPENSIVE_JAC_RATE if self.jac_expensive else JAC_RATE

    @property
    def jac_keep_iter(self) -> int:
        """J is kept after a step that took at most this many Newton iterations, whatever its rate."""
        return JAC_KEEP_ITER + int(self.jac_iters // KEEP_ITER_PER_JAC_ITERS)

    # ---- Jacobian and factorisation ----
    def _jacobian(self, t, y, f, tol):
        J = self._evaluate_jacobian(t, y, f, tol)
        # what a Jacobian costs: one f per column (group) of finite differences, none with the user's jac
        self.jac_calls = 0 if self.fd is None else self.fd.num_groups
        self.J, self.jac_fresh, self.need_jac, self.lu = J, True, False, None
        data = J if isinstance(J, np.ndarray) else J.data
        self._jac_finite = bool(np.isfinite(data).all())

    def _factor(self, h):
        """Factor ``γ/h − J`` and ``μ/h − J``; None when either is singular or not finite."""
        self.stats["nfactor"] += 1
        if not self._jac_finite:
            return None
        J = self.J
        shifts = (COEF.gamma / h, COEF.mu / h)
        if self.host and isinstance(J, np.ndarray) and J.dtype == np.float64:
            if self._lu_r is None:
                self._host_buffers()
            if radau_factor(self._addresses, np.ascontiguousarray(J), shifts[0], shifts[1].real, shifts[1].imag,
                            self._lu_r, self._piv_r, self._lu_c, self._piv_c):
                return None
            return (h, _COMPILED, _COMPILED)
        if isinstance(J, np.ndarray):
            solves = [_dense_lu(J, s, dt) for s, dt in zip(shifts, (self.dtype, self.cdtype))]
        else:       # the ordering and symbolic factorisation shared by both matrices and kept across steps
            if self._sparse is None:
                from .sparse_lu import SparseFactors
                self._sparse = SparseFactors(self.pattern)
            solves = [self._sparse.solver(J, s, 1.0, dt, slot=k)
                      for k, (s, dt) in enumerate(zip(shifts, (self.dtype, self.cdtype)))]
            if self.dtype == np.float64 and solves[0] is not None and solves[1] is not None:
                # both factored by the compiled elimination: Newton's iterations compiled (radau_sparse)
                arrays = tuple(self._sparse.slots[k].kernel_arrays() for k in range(2))
                self._sparse_arrays = None if arrays[0] is None or arrays[1] is None else arrays
        if solves[0] is None or solves[1] is None:
            return None
        return (h, solves[0], solves[1])

    # ---- protocol ----
    def start(self, t0, y0, f0):
        pass

    def run_rows(self, rows, y, fy, tol, max_steps, record):
        """The driver's loop in compiled code (:mod:`deqcore.ode.radau_loop`) for one small dense float64
        system; None where the driver's own loop runs (other systems, or ``COMPILED_LOOP`` off)."""
        if not (self.host and COMPILED_LOOP) or rows.batched:
            return None
        run_radau_loop = _LOOP.get("run") or _load_loop()

        # what a Jacobian will cost (the compiled loop forms dense ones only): the automatic heuristics below
        # read it, and the loop takes their values as data
        self.jac_calls = 0 if self.jac is not None else self.n
        params = dict(T=self._T_c, T_inv=self._T_inv_c, e=self._e, c=COEF.c, a_last=self._A_inv_last,
                      dense=COEF.dense, gamma=COEF.gamma, mu=COEF.mu, safety=SAFETY, min_factor=MIN_FACTOR,
                      max_factor=MAX_FACTOR, keep_low=KEEP_LOW, keep_high=KEEP_HIGH, jac_keep_iter=self.jac_keep_iter,
                      rate_target=RATE_TARGET, rate_min_factor=RATE_MIN_FACTOR,
                      newton_tol=newton_tolerance(float(tol[1]), self.dtype), t_eps=_LOOP["t_eps"],
                      eps=_EPS64, fd_grow=_FD_GROW)
        self._check_newton_weights(y, fy, tol[0])
        return run_radau_loop(self, rows, y, fy, tol, max_steps, record, params)

    def _check_newton_weights(self, y, fy, atol):
        """Refuse a start the Newton iteration cannot leave: its weights ``atol + rtol·|y|`` at the step's
        start are 0 (the dtype's smallest normal number) where atol is 0 and y is 0, so a component that f
        moves from 0 makes every correction overflow the scaled norm and every step fail, down to any step
        size (which ended DIVERGED, with advice about non-finite states; SciPy's Radau fails there too)."""
        if self._weights_checked:
            return
        self._weights_checked = True
        y, f = np.asarray(y), np.asarray(fy)
        zero = ((np.broadcast_to(np.asarray(atol), y.shape) <= np.finfo(self.dtype).tiny) & (y == 0)
                & (f != 0)).reshape(-1)
        if zero.any():
            raise ValueError(f"atol is 0 where y0 is 0 and f moves it ({int(zero.sum())} components, the "
                             f"first at flat index {int(np.flatnonzero(zero)[0])}): dq.Radau()'s Newton "
                             f"iteration weighs its corrections by atol + rtol·|y| at the step's start, "
                             f"which is 0 there; pass atol > 0 (e.g. 1e-12) or use dq.BDF() or dq.Rodas5P(), "
                             f"which handle a pure relative tolerance from 0")

    def attempt(self, t, y, fy, h, active=None, tol=None) -> Trial:
        ev = self.ev
        t, h = host_float(t), host_float(h)
        atol, rtol = tol
        self._check_newton_weights(y, fy, atol)
        atol = atol if np.ndim(atol) == 0 else np.broadcast_to(np.asarray(atol), ev.shape).reshape(-1)
        y_flat, f_flat = y.reshape(-1), fy.reshape(-1)
        if self._f_base is not None:        # evaluated at this state by an earlier (rejected) attempt
            f_flat = self._f_base
            fy = f_flat.reshape(ev.shape)
        if self.need_jac or self.J is None:
            y_base, f_base = y_flat, f_flat
            if self.jac is None and not self._f_exact:   # finite differences need f itself at the base point
                if self._stage_point is not None:       # the last stage point of the step that ended here
                    y_base, f_base = self._stage_point
                else:
                    f_flat = f_base = self._f_base = ev(t, y).reshape(-1)
                    self._f_exact = True
                    fy = f_flat.reshape(ev.shape)
            self._jacobian(t, y_base, f_base, tol)
        if self.lu is None or self.lu[0] != h:
            self.lu = self._factor(h)
        if self.lu is None:
            self.stats["nfailed_solves"] += 1
            return self._reject(y, fy, 0.5 * abs(h), ReturnCode.LINEAR_SOLVE_FAILED, newton=True)
        newton_tol = newton_tolerance(rtol, self.dtype)
        if self.lu[1] is _COMPILED:          # the weights are formed by radau_start
            scale, self._tol_atol, self._tol_rtol = None, self._atol_array(atol), float(rtol)
        else:
            scale = atol + rtol * np.abs(y_flat)
        ok, Z, n_iter, theta, h_fail = self._newton(t, y_flat, h, scale, newton_tol)
        if not ok:
            self.stats["nnewton_fail"] += 1
            return self._reject(y, fy, h_fail, None, newton=True)     # smaller, and a fresh J if J is not
        _, solve_real, _ = self.lu
        if solve_real is _COMPILED:
            return self._finish_compiled(t, y, fy, h, y_flat, f_flat, Z, n_iter, theta, atol, rtol)
        y_new = y_flat + Z[2]
        scale = atol + rtol * np.maximum(np.abs(y_flat), np.abs(y_new))
        ez = (self._e @ Z) / h
        err_vec = solve_real(f_flat + ez)
        self.stats["nlinsolve"] += 1
        err = _rms(err_vec / scale)
        if not err < 1.0 and (self.first or self.last_rejected) and np.isfinite(err):
            f_err = ev(t, (y_flat + err_vec).reshape(ev.shape)).reshape(-1)
            err_vec = solve_real(f_err + ez)
            self.stats["nlinsolve"] += 1
            err = _rms(err_vec / scale)
        if not np.isfinite(err):
            return self._reject(y, fy, 0.5 * abs(h), None, newton=True)
        return self._decide(t, y, fy, h, y_flat, y_new, Z, err, n_iter, theta, float(np.max(np.abs(y_new))))

    def _finish_compiled(self, t, y, fy, h, y_flat, f_flat, Z, n_iter, theta, atol, rtol):
        """The error estimate of the compiled path (the array code's formulas in :func:`radau_error`)."""
        ev, n = self.ev, self.n
        atol_arr = self._atol_array(atol)
        err_vec = np.empty(n)
        args = (Z, self._e, h, self._lu_r, self._piv_r, y_flat, atol_arr, float(rtol), self._y_new, self._scale,
                self._ez, err_vec)
        err, top = radau_error(self._addresses, True, np.ascontiguousarray(f_flat, dtype=np.float64), *args)
        self.stats["nlinsolve"] += 1
        if not err < 1.0 and (self.first or self.last_rejected) and np.isfinite(err):
            f_err = ev(t, (y_flat + err_vec).reshape(ev.shape)).reshape(-1)
            err, top = radau_error(self._addresses, False, np.ascontiguousarray(f_err, dtype=np.float64), *args)
            self.stats["nlinsolve"] += 1
        if not np.isfinite(err):
            return self._reject(y, fy, 0.5 * abs(h), None, newton=True)
        return self._decide(t, y, fy, h, y_flat, self._y_new.copy(), Z, err, n_iter, theta, top)

    @staticmethod
    def _atol_array(atol):
        # a copy (writable): a read-only view (per-component atol) would compile the kernels a second time
        return np.array(atol, dtype=np.float64) if np.ndim(atol) else np.array([float(atol)])

    def _decide(self, t, y, fy, h, y_flat, y_new, Z, err, n_iter, theta, y_absmax):
        """Accept or reject on the error estimate ``err``; the next step size."""
        ev = self.ev
        err = max(err, 1e-10)
        fac = min(SAFETY, SAFETY * (2 * self.max_iter + 1) / (2 * self.max_iter + n_iter))
        quot = min(1.0 / MIN_FACTOR, max(1.0 / MAX_FACTOR, err ** 0.25 / fac))
        h_abs = abs(h)
        if err > 1.0:
            h_next = 0.1 * h_abs if self.first else h_abs / quot
            return self._reject(y, fy, h_next, None, err_sq=err * err * self.n)
        # accepted (the driver's test is the same)
        if self.h_acc is not None:          # Gustafsson's predictive controller
            gus = self.h_acc / h_abs * (err * err / self.err_acc) ** 0.25 / SAFETY
            quot = max(quot, min(1.0 / MIN_FACTOR, max(1.0 / MAX_FACTOR, gus)))
        h_next = h_abs / quot
        if self.last_rejected:
            h_next = min(h_next, h_abs)
        if n_iter >= 2:                     # the step Newton still converges at (θ ∝ h)
            h_next = min(h_next, h_abs * max(RATE_MIN_FACTOR, RATE_TARGET / max(theta, 1e-10)))
        y1 = y_new.reshape(ev.shape)
        if not ev.autonomous:
            # the collocation polynomial's derivative at t + h: f(t + h, y_new) up to the Newton tolerance
            f1 = ((self._A_inv_last @ Z) / h).reshape(ev.shape)
            self._f_exact = False
        else:
            f1 = ev(t + h, y1)
            self._f_exact = True
        if not np.isfinite(f1).all():       # the new point is not a state f can continue from
            return self._reject(y, fy, 0.5 * h_abs, None, newton=True)
        keep_jac = theta <= self.jac_rate or n_iter <= self.jac_keep_iter
        if keep_jac and KEEP_LOW <= h_next / h_abs <= KEEP_HIGH:
            h_next = h_abs                   # same h: the factors are reused
        self._pending = (Z, h, h_abs, err, keep_jac)
        return Trial(y1, f1, None, self.error_exponent, stages=CollocationPolynomial(y_flat, Z, ev.shape),
                     err_sq=np.array([err * err * self.n]),
                     y_absmax=np.array([y_absmax]), h_next=h_next)

    def _newton(self, t, y, h, scale, tol):
        """The simplified Newton iteration on W = T⁻¹Z. Returns (converged, Z, iterations, θ, h on failure);
        the last rate estimate θ/(1 − θ) is kept for the next step's first iteration."""
        out = self._iterate(t, y, h, scale, tol)
        self.faccon = out[-1]
        return out[:-1]

    def _iterate(self, t, y, h, scale, tol):
        if self.lu[1] is _COMPILED:
            return self._iterate_compiled(t, y, h, tol)
        if self._sparse_arrays is not None and SPARSE_COMPILED:
            return self._iterate_compiled(t, y, h, tol, np.ascontiguousarray(scale, dtype=np.float64),
                                          self._sparse_arrays)
        ev, n, shape = self.ev, self.n, self.ev.shape
        _, solve_real, solve_complex = self.lu
        T, T_inv, c = self._T, self._T_inv, self._c
        tol_fail, tol = tol, tol * self.newton_factor
        g_h, mu_h = COEF.gamma / h, COEF.mu / h
        if self.Z_prev is None:
            Z = np.zeros((3, n), dtype=self.dtype)
            W = np.zeros((3, n), dtype=self.dtype)
        else:
            Z = extrapolation_matrix(h / self.h_prev).astype(self.dtype) @ self.Z_prev
            W = T_inv @ Z
        F = np.empty((3, n), dtype=self.dtype)
        faccon = max(self.faccon, np.finfo(self.dtype).eps) ** 0.8
        theta = self.jac_rate
        dyno_old = thq_old = 1.0
        k_max = self.max_iter
        for k in range(1, k_max + 1):
            for i in range(3):
                y_i = y + Z[i]
                F[i] = ev(t + c[i] * h, y_i.reshape(shape)).reshape(-1)
            if not np.isfinite(F).all():
                return False, Z, k, theta, 0.5 * abs(h), faccon
            G = T_inv @ F
            d_real = solve_real(G[0] - g_h * W[0])
            # (G₂ + iG₃) − μ/h·(W₂ + iW₃) in real arithmetic: NumPy's complex product may fuse its multiply-adds
            # on one CPU and not on another; this rounds alike everywhere (and as the compiled path)
            rhs = np.empty(n, dtype=self.cdtype)
            rhs.real = G[1] - (mu_h.real * W[1] - mu_h.imag * W[2])
            rhs.imag = G[2] - (mu_h.real * W[2] + mu_h.imag * W[1])
            d_cplx = solve_complex(rhs)
            self.stats["nlinsolve"] += 2
            dW = np.stack([d_real, d_cplx.real, d_cplx.imag])
            dyno = _rms(dW / scale)
            if not np.isfinite(dyno):
                return False, Z, k, theta, 0.5 * abs(h), faccon
            if 1 < k < k_max:
                thq = dyno / dyno_old
                theta = thq if k == 2 else np.sqrt(thq * thq_old)
                thq_old = thq
                if not theta < 0.99:
                    return False, Z, k, theta, 0.5 * abs(h), faccon
                faccon = theta / (1.0 - theta)
                predicted = faccon * dyno * theta ** (k_max - 1 - k) / tol_fail
                if predicted >= 1.0:        # will not converge in time: a smaller step (Hairer's estimate)
                    q = max(1e-4, min(20.0, predicted))
                    return False, Z, k, theta, 0.8 * q ** (-1.0 / (4 + k_max - 1 - k)) * abs(h), faccon
            dyno_old = max(dyno, np.finfo(self.dtype).eps)
            W += dW
            Z = T @ W
            if faccon * dyno <= (tol if k < k_max else tol_fail):
                self._stage_try = (y_i, F[2]) if dyno <= tol_fail else None
                return True, Z, k, theta, None, faccon
        return False, Z, k_max, theta, 0.5 * abs(h), faccon

    def _iterate_compiled(self, t, y, h, tol, scale=None, sparse=None):
        """:meth:`_iterate` with its vector work in the compiled kernels (f evaluated here): the dense factors
        of :meth:`_host_buffers`, or ``sparse``, the real and complex sparse factors' arrays (then ``scale``:
        the error weights)."""
        ev, n, shape, c = self.ev, self.n, self.ev.shape, self._c
        tol_fail, tol = tol, tol * self.newton_factor
        g_h, mu_h = COEF.gamma / h, COEF.mu / h
        y = np.ascontiguousarray(y, dtype=np.float64)
        Z, W, Y, F = (np.empty((3, n)) for _ in range(4))
        if sparse is not None and getattr(self, "_no_rows", None) is None:
            self._addresses = radau_addresses()
            self._no_rows, self._M = np.empty((0, n)), (None, None)
            self._scratch, self._zero_atol = np.empty(n), np.zeros(1)
        if self.Z_prev is None:
            M, Z_prev = self._T_c, self._no_rows
        else:
            ratio = h / self.h_prev
            if self._M[0] != ratio:
                self._M = (ratio, np.ascontiguousarray(extrapolation_matrix(ratio), dtype=np.float64))
            M, Z_prev = self._M[1], self.Z_prev
        if sparse is None:
            radau_start(self._addresses, M, Z_prev, self._T_inv_c, y, self._tol_atol, self._tol_rtol, Z, W, Y,
                        self._scale)
        else:           # the weights: the caller's
            radau_start(self._addresses, M, Z_prev, self._T_inv_c, y, self._zero_atol, 0.0, Z, W, Y,
                        self._scratch)
        faccon = max(self.faccon, np.finfo(self.dtype).eps) ** 0.8
        rate = np.array([1.0, 1.0, self.jac_rate, faccon])
        k_max = self.max_iter
        for k in range(1, k_max + 1):
            for i in range(3):
                F[i] = ev(t + c[i] * h, Y[i].reshape(shape)).reshape(-1)
            Y_next = np.empty((3, n))
            if sparse is None:
                status, factor = radau_newton(self._addresses, F, self._T_c, self._T_inv_c, g_h, mu_h.real,
                                              mu_h.imag, self._lu_r, self._piv_r, self._lu_c, self._piv_c,
                                              self._scale, y, W, Z, Y_next, rate, k, k_max, tol, tol_fail)
            else:
                status, factor = radau_newton_sparse(
                    self._addresses, F, self._T_c, self._T_inv_c, g_h, mu_h.real, mu_h.imag, sparse[0],
                    sparse[1], scale, y, W, Z, Y_next, rate, k, k_max, tol, tol_fail)
            Y, Y_prev = Y_next, Y
            if status != BAD_F:
                self.stats["nlinsolve"] += 2
            if status == CONVERGED:
                self._stage_try = (Y_prev[2], F[2]) if rate[0] <= tol_fail else None
                return True, Z, k, rate[2], None, rate[3]
            if status != 0:
                return False, Z, k, rate[2], factor * abs(h), rate[3]
        return False, Z, k_max, rate[2], 0.5 * abs(h), rate[3]

    def _reject(self, y, fy, h_next, code, err_sq=np.inf, newton=False):
        """A rejected attempt: the state unchanged; the driver retries with ``h_next``; a new J is evaluated
        at the same point unless the current one is fresh."""
        self._pending = None
        self.last_rejected = True
        if newton and not self.jac_fresh:
            self.need_jac = True
        return Trial(y, fy, None, self.error_exponent, err_sq=np.array([err_sq]),
                     y_absmax=np.array([float(np.max(np.abs(y)))]), h_next=h_next,
                     code=None if code is None else int(code))

    def accept(self, trial, mask, t_new):
        self._f_base = None
        Z, h, h_abs, err, keep_jac = self._pending
        self.Z_prev, self.h_prev = Z, h
        self._stage_point = self._stage_try
        self.h_acc, self.err_acc = h_abs, max(1e-2, err)
        self.first = self.last_rejected = False
        self.jac_fresh = False
        self.need_jac = not keep_jac
        self._pending = None


def _dense_lu(J, shift, dtype):
    """A solve function for ``shift·I − J`` (dense, LAPACK getrf/getrs), or None when it is singular."""
    from scipy.linalg.lapack import get_lapack_funcs

    M = (-J).astype(dtype)
    M[np.diag_indices_from(M)] += shift
    getrf, getrs = get_lapack_funcs(("getrf", "getrs"), (M,))
    lu, piv, info = getrf(M, overwrite_a=True)
    diag = np.abs(np.diagonal(lu))
    if info != 0 or not diag.min() > np.finfo(dtype).eps * diag.max():
        return None

    def solve(b):
        return getrs(lu, piv, b)[0]
    return solve


@dataclass(frozen=True, eq=False)
class Radau(ODEMethod):
    """Radau IIA of order 5 (3 implicit stages) for stiff problems, with Jacobian and LU reuse across steps
    (see :mod:`deqcore.ode.radau`). L-stable and stiffly accurate; the most efficient choice at moderate to
    tight tolerances (errors ≤ 1e-5) and for stiff oscillations; ``dq.BDF()`` is cheaper at loose tolerances
    and when Jacobians are expensive.

    Args:
        jac_sparsity: optional ``(n, n)`` pattern of ∂f/∂y (array-like or ``scipy.sparse``): finite
            differences then cost one f per group of columns that share no row, and both Newton matrices
            (real and complex) are factored by SciPy's sparse LU.
        jac_rate: J is re-evaluated after a step whose Newton iteration needed more than two iterations (one
            more per three Newton iterations' worth of rhs calls a Jacobian costs) and contracted more slowly
            than this rate; larger values keep J longer. Default None: 0.01, or 0.001 when a Jacobian costs
            more than two Newton iterations (finite differences over more than 6 columns or column groups).
        max_newton_iter: Newton iterations per step before the step is retried smaller (default 7).
        newton_tol: Newton stops when its predicted remaining error is below ``newton_tol · min(0.03, √rtol)``
            error weights; it is abandoned only when it cannot reach ``min(0.03, √rtol)``. Default None: 0.03
            (Newton's error stays far below the local error), or 1 when a Jacobian costs more than two Newton
            iterations (fewer iterations and Jacobians, where each Jacobian costs more than 6 rhs calls).

    Unbatched NumPy problems only (``integrate``, or ``steady_state`` with ``batched=False``).

    >>> import numpy as np, deqcore as dq
    >>> lam = 1e6
    >>> sol = dq.integrate(lambda t, y: -lam * (y - np.cos(t)), np.array([0.0]), (0.0, 1.0), dq.Radau(),
    ...                    atol=1e-10, rtol=1e-8)
    >>> exact = (lam ** 2 * np.cos(1.0) + lam * np.sin(1.0)) / (lam ** 2 + 1)
    >>> bool(abs(sol.ys[-1, 0] - exact) < 1e-8), sol.stats["njev"] <= 2     # J evaluated at most twice
    (True, True)
    """

    jac_sparsity: Any = None
    jac_rate: Any = None
    max_newton_iter: int = 7
    newton_tol: Any = None

    def __post_init__(self):
        if self.jac_sparsity is not None:
            check_sparsity_pattern(self.jac_sparsity)
        for name in ("jac_rate", "newton_tol"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
        if self.jac_rate is not None and not 0.0 < float(self.jac_rate) < 1.0:
            raise ValueError(f"jac_rate must lie in (0, 1), got {self.jac_rate}")
        if self.newton_tol is not None and not 0.0 < float(self.newton_tol) < np.inf:
            raise ValueError(f"newton_tol must be a positive finite number, got {self.newton_tol}")
        if isinstance(self.max_newton_iter, bool) or not isinstance(self.max_newton_iter, (int, np.integer)):
            raise TypeError(f"max_newton_iter must be an int, got {type(self.max_newton_iter).__name__}")
        if not 2 <= self.max_newton_iter <= 50:
            raise ValueError(f"max_newton_iter must be between 2 and 50, got {self.max_newton_iter}")

    @property
    def order(self):
        return 5

    def stepper(self, ev: Evaluator, jac=None):
        if ev.batched:
            raise ValueError("dq.Radau() solves unbatched problems only (batched=False); for a batch use "
                             "dq.Rodas5P() or solve the samples one by one")
        if ev.xp is not np:
            raise ValueError("dq.Radau() needs a NumPy y0 (it runs on the host); for CuPy arrays use "
                             "dq.Rodas5P()")
        n = math.prod(ev.shape)
        if self.jac_sparsity is not None and tuple(np.shape(self.jac_sparsity)) != (n, n):
            raise ValueError(f"jac_sparsity must have shape ({n}, {n}) for this y0 (n = y0.size), got "
                             f"{tuple(np.shape(self.jac_sparsity))}")
        return RadauStepper(ev, self, jac)
