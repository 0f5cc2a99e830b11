"""Rosenbrock methods for stiff problems: Rodas3 (order 3), Rodas4 (order 4) and Rodas5P (order 5), all
L-stable and stiffly accurate, with embedded error estimates; their coefficients are data
(:mod:`deqcore.ode.rosenbrock_tableaus`). One step solves s linear systems with the same matrix
``I/(hγ) − J``:

    (I/(hγ) − J) u_i = f(t + c_i h, y + Σ a_ij u_j) + Σ (C_ij / h) u_j + h d_i ∂f/∂t,   y_new = y + Σ m_i u_i.

The Jacobian J = ∂f/∂y is evaluated once per step at the step's start point (the user's ``jac``, or forward
differences with increments scaled to each component and to ``atol``, :mod:`deqcore.ode.finite_diff`) and
reused when the step is retried from the same point; only the factorisation is redone for the new h. These
methods need the exact Jacobian of the current point for their order, so J is not carried across accepted
steps. Linear solvers:

- ``linear_solver=dq.LU()`` (default): dense batched LU; with ``jac_sparsity`` (an ``(n, n)`` pattern) the
  finite-difference Jacobian costs one f per group of structurally orthogonal columns, and on NumPy the
  stage matrix is factored by SciPy's sparse LU (``splu``); on CuPy the grouped Jacobian is scattered into a
  dense matrix and factored by cuSOLVER (no sparse LU there).
- ``linear_solver=dq.GMRES(...)``: matrix-free, finite-difference Jacobian–vector products (one f per Krylov
  step), no Jacobian.

A step whose linear solves fail (a singular or non-finite stage matrix, a GMRES solve that does not reach
its tolerance, non-finite stages) is rejected and retried with a smaller step; a step across which the
stage matrix changes the sign of its determinant (h·γ larger than the inverse of a growth rate of J: the
linear solve would turn growth into decay, e.g. stepping over a finite-time blow-up) is rejected too (with
GMRES, which has no determinant, when the first increment points against f: u₁·f = u₁·M u₁ < 0). When
no step size works the solve ends with LINEAR_SOLVE_FAILED (the stage matrix could not be factored at the
last attempt), DIVERGED or DT_TOO_SMALL, never SUCCESS.

Dense output (``sol(t)``, ``saveat``): Rodas4 and Rodas5P evaluate their own continuous extensions (orders 3
and 4, :mod:`deqcore.ode.rosenbrock_tableaus`) from two or three combinations of the increments, formed once
per accepted step of :func:`~deqcore.ode.integrate` (:class:`RosenbrockDense`); Rodas3's is the cubic
Hermite interpolant.

>>> import numpy as np, deqcore as dq
>>> lam = 1e6                                            # explicit methods need ~10^6 steps here
>>> sol = dq.integrate(lambda t, y: -lam * (y - np.cos(t)), np.array([0.0]), (0.0, 1.0), dq.Rodas5P(),
...                    atol=1e-10, rtol=1e-10)
>>> exact = (lam ** 2 * np.cos(1.0) + lam * np.sin(1.0)) / (lam ** 2 + 1)       # after the transient
>>> sol.stats["accepted"] < 500, bool(abs(sol.ys[-1, 0] - exact) < 1e-9)
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..linalg import GMRES, LU, LinearOperator
from ..results import ReturnCode
from .base import Evaluator, ODEMethod, Trial, host_float
from ..linalg.finite_diff import (FiniteDiffJacobian, check_sparsity_pattern, jvp_step, normalize_sparsity,
                                  time_increment)
from .kernels_host import (HOST_SYSTEM_LIMIT, factor_shifted, gemv_address, getrs_address, new_factors, rosenbrock_finish,
                           rosenbrock_input, rosenbrock_stage)
from .rosenbrock_tableaus import RODAS3, RODAS4, RODAS5P, RosenbrockTableau

__all__ = ["Rodas3", "Rodas4", "Rodas5P", "RosenbrockStepper", "RosenbrockDense"]


class RosenbrockDense:
    """The continuous extension over one accepted step (the record's ``stages``, called with θ ∈ [0, 1]):

        y(t + θh) ≈ (1 − θ) y0 + θ (y1 + (1 − θ)(w_1 + θ (w_2 + θ w_3))),     w = H U,

    ``H`` the tableau's ``dense`` rows and ``U`` the step's increments. An attempt only refers to its increments;
    :meth:`freeze` (the stepper's ``accept``) forms the two or three vectors ``w`` and lets the increments go,
    so a rejected attempt costs nothing and a record keeps ``q`` vectors, not ``s``.

    >>> import numpy as np, deqcore as dq
    >>> sol = dq.integrate(lambda t, y: -y, np.ones(1), (0.0, 1.0), dq.Rodas5P(), atol=1e-10, rtol=1e-8)
    >>> step = sol.steps[2]
    >>> type(step.stages).__name__, step.stages.w.shape                # Rodas5P: three vectors
    ('RosenbrockDense', (3, 1))
    >>> bool(abs(step.stages(0.4)[0] - np.exp(-(step.t + 0.4 * step.h))) < 1e-9)
    True
    """

    __slots__ = ("y0", "y1", "w", "_pending")

    def __init__(self, H, U, y0, y1):
        self.y0, self.y1, self.w = y0, y1, None
        self._pending = (H, U)

    def freeze(self) -> "RosenbrockDense":
        """Form ``w = H U`` (shape ``(q,) + y0.shape``) while the increments are still this step's."""
        if self._pending is not None:
            H, U = self._pending
            self.w = (H @ U.reshape(U.shape[0], -1)).reshape((H.shape[0],) + tuple(self.y0.shape))
            self._pending = None
        return self

    def __call__(self, theta):
        w = self.freeze().w
        theta = float(theta)              # Python floats: a float32 state stays float32
        rest = 1.0 - theta
        acc = w[-1]
        for q in range(w.shape[0] - 2, -1, -1):
            acc = w[q] + theta * acc
        return rest * self.y0 + theta * (self.y1 + rest * acc)


class _Factored:
    """The stage matrix of one attempt, factored; ``solve(rhs_rows)`` and ``failed`` (host bool ``(rows,)``)."""

    def __init__(self, solve, failed, singular=None):
        self.solve, self.failed = solve, failed
        #: rows whose matrix could not be factored (singular or non-finite; not the determinant-sign test)
        self.singular = failed if singular is None else singular


def _det_sign_dense(xp, lu, piv):
    """Sign of det(A) per sample from LAPACK-style factors ``(B, n, n)`` and pivots ``(B, n)``."""
    diag = xp.diagonal(lu, axis1=1, axis2=2)
    negative = xp.sum(diag < 0, axis=1)
    swaps = xp.sum(piv != xp.arange(piv.shape[1]), axis=1)
    return 1 - 2 * ((negative + swaps) % 2)


def _expected_det_sign(xp, inv, n):
    """The sign det(M) of the stage matrix M = I/(hγ) − J must have for det(I − hγJ) > 0: that of (1/(hγ))ⁿ,
    per row where ``inv`` is an array (+1 or −1, an int or an int array)."""
    if n % 2 == 0:
        return 1
    if isinstance(inv, float):
        return -1 if inv < 0 else 1
    return xp.where(xp.asarray(inv).reshape(-1) < 0, -1, 1)


def _parity(perm: np.ndarray) -> int:
    """0 for an even permutation, 1 for an odd one."""
    seen = np.zeros(perm.size, dtype=bool)
    odd = 0
    for i in range(perm.size):
        if not seen[i]:
            j, length = i, 0
            while not seen[j]:
                seen[j] = True
                j = perm[j]
                length += 1
            odd ^= (length - 1) & 1
    return odd


class RosenbrockStepper:
    """Steps of a Rosenbrock method for the ODE driver (see the module docstring)."""

    def __init__(self, ev: Evaluator, tableau: RosenbrockTableau, linear_solver, jac, sparsity, autonomous):
        self.ev, self.tab, self.linear_solver, self.jac = ev, tableau, linear_solver, jac
        self.error_exponent = tableau.embedded_order + 1
        self.autonomous = autonomous or ev.autonomous
        xp = ev.xp
        self.n = int(np.prod(ev.shape[1:] if ev.batched else ev.shape, dtype=np.int64))
        self.sparse_lu = sparsity is not None and xp is np and isinstance(linear_solver, LU)
        self.pattern = None if sparsity is None else normalize_sparsity(sparsity, self.n)
        self.sparsity = sparsity
        self.fd = None
        self._matrix_free = isinstance(linear_solver, GMRES)
        self.stats = {"njev": 0, "nlinsolve": 0, "nfactor": 0, "nfev_jac": 0, "nfailed_solves": 0}
        self._jac_for = None          # the state (the driver's array object) whose Jacobian and ∂f/∂t are cached
        self._J = self._ft = None
        tab = tableau
        # per stage, as Python floats: which earlier increments enter its argument and its right-hand side
        # (coefficient arrays in the state's dtype and namespace: float64 coefficients would promote a float32
        # state to float64 under NumPy's promotion rules)
        self._plan = [(tab.reuses_f0(i), float(tab.c[i]), float(tab.d[i]),
                       xp.asarray(tab.a[i, :i], dtype=ev.dtype), [(j, float(tab.C[i, j])) for j in range(i) if tab.C[i, j]])
                      for i in range(tab.stages)]
        self._m, self._e = xp.asarray(tab.m, dtype=ev.dtype), xp.asarray(tab.e, dtype=ev.dtype)
        # the continuous extension's coefficients, for the steps integrate() records (an unbatched evaluator that
        # is not autonomous: steady states run autonomous and keep no steps)
        self._H = (xp.asarray(tab.dense, dtype=ev.dtype)
                   if tab.dense is not None and not ev.batched and not ev.autonomous else None)
        # one small dense NumPy system: the step's vector work and the LU in compiled host kernels
        self._host = (xp is np and not ev.batched and isinstance(linear_solver, LU) and sparsity is None
                      and self.n <= HOST_SYSTEM_LIMIT)
        if self._host:
            dtype = ev.dtype
            self._a = np.ascontiguousarray(tab.a, dtype=np.float64)
            self._C = np.ascontiguousarray(tab.C, dtype=np.float64)
            self._reuse = np.array([tab.reuses_f0(i) for i in range(tab.stages)])
            self._stage_c, self._stage_d = [float(v) for v in tab.c], [float(v) for v in tab.d]
            self._mw = np.ascontiguousarray(tab.m, dtype=np.float64)
            self._ew = np.ascontiguousarray(tab.e, dtype=np.float64)
            self._U = np.empty((tab.stages, self.n), dtype=dtype)
            self._lu, self._piv = new_factors(self.n, dtype)
            self._work = np.empty(self.n, dtype=dtype)
            self._getrs, self._gemv = getrs_address(dtype), gemv_address(dtype)
            self._eps = float(np.finfo(dtype).eps)
            self._no_ft = np.empty(0, dtype=dtype)
            self._atol = None

    # The driver hands every attempt the current state and f(t, y) (the evaluator already copies an rhs result
    # that lives in a reused buffer), and a retried step the very same state object: the Jacobian cache is
    # keyed on that object, so the stepper keeps no state of its own between steps.
    def start(self, t0, y0, f0):
        self._jac_for = None

    def accept(self, trial, mask, t_new):
        if trial.stages is not None:      # before the next attempt reuses the increments' buffer
            trial.stages.freeze()

    # ---- Jacobian ----
    def _rows(self, a):
        return self.ev.rows(a)

    def _user_jacobian(self, t, y):
        return user_jacobian(self.ev, self.jac, self.n, t, y)

    def _jacobian(self, t, y, fy, h, tol):
        """J (dense ``(rows, n, n)``, or per-row SciPy CSC matrices) and ∂f/∂t at the current point."""
        if self._jac_for is y:
            return self._J, self._ft
        ev, xp = self.ev, self.ev.xp
        self.stats["njev"] += 1
        if self.jac is not None:
            J = self._user_jacobian(t, y)
        else:
            if self.fd is None:
                atol = tol[0] if tol is not None else 0.0
                if np.ndim(atol) > 0:           # one atol per component: rows of the flat state
                    atol = xp.asarray(atol, dtype=ev.dtype).reshape(-1, self.n)
                self.fd = FiniteDiffJacobian(self.n, threshold=atol, sparsity=self.pattern)
            shape = y.shape
            F = lambda rows: self._rows(ev(t, rows.reshape(shape)))   # noqa: E731
            before = self.fd.evaluations
            y_rows, f_rows = self._rows(y), self._rows(fy)
            if self.sparse_lu:
                J = self._csc_rows(self.fd.sparse_values(F, y_rows, f_rows))
            else:
                J = self.fd.dense(F, y_rows, f_rows)
            self.stats["nfev_jac"] += self.fd.evaluations - before
        ft = None
        if not self.autonomous:
            dt = time_increment(host_float(t), host_float(h), ev.dtype)
            ft = (ev(t + dt, y) - fy) / dt
            self.stats["nfev_jac"] += 1
        self._jac_for, self._J, self._ft = y, J, ft
        return J, ft

    def _csc_rows(self, values):
        import scipy.sparse as sp

        S = self.pattern
        return [sp.csc_matrix((values[r], S.indices, S.indptr), shape=S.shape) for r in range(values.shape[0])]

    # ---- the stage matrix: the one place where linear solvers are called ----
    def _factor(self, t, y, fy, h, tol) -> _Factored:
        ev, xp, n, R = self.ev, self.ev.xp, self.n, self.ev.num_rows
        inv = 1.0 / (self.tab.gamma * (xp.asarray(h, dtype=np.float64) if ev.batched else host_float(h)))
        self.stats["nfactor"] += 1
        if isinstance(self.linear_solver, GMRES):
            return self._gmres(t, y, fy, inv)
        # det(I − hγJ) = (hγ)ⁿ det(M) must be positive: det(M) itself has the sign of hⁿ (negative for a
        # backward step on an odd number of unknowns)
        expected = _expected_det_sign(xp, inv, n)
        J, _ = self._jacobian(t, y, fy, h, tol)
        if isinstance(J, list) or _is_sparse(J):
            return self._sparse_lu(J if isinstance(J, list) else [J], inv, expected)
        inv_rows = xp.asarray(inv, dtype=J.dtype).reshape(-1, 1, 1) if ev.batched else inv
        M = inv_rows * xp.eye(n, dtype=J.dtype) - J
        if xp is np and R == 1:
            return self._lapack(M[0], expected)
        fac = self.linear_solver.factor(M)
        failed = fac.singular_mask | (_det_sign_dense(xp, fac.lu, fac.piv) * expected <= 0)
        singular = fac.singular_mask

        def solve(rhs_rows):
            self.stats["nlinsolve"] += 1
            return fac.solve(rhs_rows)
        return _Factored(solve, failed, singular)

    def _lapack(self, M, expected=1):
        """One NumPy system: LAPACK getrf/getrs called directly (the common small case, where per-call
        overhead is what counts)."""
        from scipy.linalg.lapack import get_lapack_funcs

        if not np.isfinite(M).all():
            return _Factored(None, np.ones(1, dtype=bool))
        getrf, getrs = get_lapack_funcs(("getrf", "getrs"), (M,))
        lu, piv, info = getrf(M, overwrite_a=True)
        diag = np.abs(np.diagonal(lu))
        sign = _det_sign_dense(np, lu[None], piv[None])[0]
        singular = info != 0 or not (diag.min() > np.finfo(M.dtype).eps * diag.max())
        failed = singular or sign * int(np.reshape(expected, -1)[0]) <= 0

        def solve(rhs_rows):
            self.stats["nlinsolve"] += 1
            x, _ = getrs(lu, piv, rhs_rows[0])
            return x[None]
        return _Factored(None if failed else solve, np.array([failed]), np.array([singular]))

    def _sparse_lu(self, Js, inv, expected=1):
        import scipy.sparse as sp
        from scipy.sparse.linalg import splu

        n = self.n
        inv_h = np.broadcast_to(np.asarray(inv, dtype=np.float64), (len(Js),))
        eye = sp.identity(n, format="csc")
        lus, failed, singular = [], np.zeros(len(Js), dtype=bool), np.zeros(len(Js), dtype=bool)
        flip = np.broadcast_to(np.asarray(expected).reshape(-1) < 0, (len(Js),))
        for r, J in enumerate(Js):
            M = (inv_h[r] * eye - J).tocsc()
            lu = None
            if np.isfinite(M.data).all():
                try:
                    lu = splu(M)
                except RuntimeError:   # exactly singular
                    lu = None
            singular[r] = lu is None
            if lu is not None:
                diag = lu.U.diagonal()
                sign = (np.sum(diag < 0) + _parity(lu.perm_r) + _parity(lu.perm_c) + flip[r]) % 2
                tiny = not np.all(np.abs(diag) > np.finfo(M.dtype).eps * np.abs(diag).max())
                singular[r] = tiny
                if sign or tiny:
                    lu = None
            failed[r] = lu is None
            lus.append(lu)

        def solve(rhs_rows):
            self.stats["nlinsolve"] += 1
            out = np.zeros_like(rhs_rows)
            for r, lu in enumerate(lus):
                if lu is not None:
                    out[r] = lu.solve(rhs_rows[r])
            return out
        return _Factored(solve, failed, singular)

    def _gmres(self, t, y, fy, inv):
        ev, xp, n, R = self.ev, self.ev.xp, self.n, self.ev.num_rows
        y_rows, f_rows = self._rows(y), self._rows(fy)
        shape = y.shape
        inv_rows = xp.asarray(inv, dtype=y.dtype).reshape(-1, 1) if ev.batched else inv
        failed = xp.zeros(R, dtype=bool)

        def matvec(v):
            s = jvp_step(xp, y_rows, v)
            shifted = self._rows(ev(t, (y_rows + s * v).reshape(shape)))
            return inv_rows * v - (shifted - f_rows) / xp.where(s > 0, s, 1.0)

        op = LinearOperator(matvec, shape=(n, n), dtype=y.dtype)
        state = {"failed": failed}

        def solve(rhs_rows):
            self.stats["nlinsolve"] += 1
            finite = xp.isfinite(rhs_rows).all(axis=1)
            b = xp.where(finite[:, None], rhs_rows, 0.0)
            sol = self.linear_solver.solve(op, b, x0=b / inv_rows)
            codes = xp.asarray(sol.result).reshape(-1)
            state["failed"] = state["failed"] | ~finite | (codes != int(ReturnCode.SUCCESS))
            return sol.value.reshape(R, n)

        fac = _Factored(solve, failed)
        fac.state = state
        return fac

    # ---- one step ----
    def _attempt_host(self, t, y, fy, h, tol) -> Trial:
        """:meth:`attempt` for one small dense NumPy system: the same stages, the vector work and the LU in
        compiled kernels (:mod:`deqcore.ode.kernels_host`), f in Python."""
        ev = self.ev
        t, h = host_float(t), host_float(h)
        if self._atol is None:
            atol = tol[0]
            self._atol = (np.ascontiguousarray(np.broadcast_to(np.asarray(atol, dtype=np.float64), ev.shape)
                                               .reshape(-1)) if np.ndim(atol) else np.array([float(atol)]))
        J, ft = self._jacobian(t, y, fy, h, tol)
        if not isinstance(J, np.ndarray):       # a user's sparse Jacobian: SciPy's sparse LU
            self._host = False
            return self.attempt(t, y, fy, h, None, tol)
        self.stats["nfactor"] += 1
        lu, piv, work, U = self._lu, self._piv, self._work, self._U
        singular, positive = factor_shifted(J[0], 1.0 / (self.tab.gamma * h), 1.0, self._eps, lu, piv)
        if h < 0 and self.n % 2:                           # det(I − hγJ) = (hγ)ⁿ det(M): see _factor
            positive = not positive
        if singular or not positive:                       # the stage matrix could not be factored
            return self._failed_trial(y, fy, singular)
        shape = ev.shape
        y_flat, f_flat = y.reshape(-1), fy.reshape(-1)
        ft_flat = self._no_ft if ft is None else ft.reshape(-1)
        a, C, reuse, c_nodes, d = self._a, self._C, self._reuse, self._stage_c, self._stage_d
        stage_input = np.empty_like(y_flat)
        formed = False
        for i, c_i in enumerate(c_nodes):
            if reuse[i]:
                f_i = f_flat
            else:
                if not formed:
                    rosenbrock_input(self._gemv, i, U, a, y_flat, stage_input)
                f_i = ev(t + c_i * h, stage_input.reshape(shape)).reshape(-1)
            formed = rosenbrock_stage(self._getrs, self._gemv, i, f_i, U, C, d[i], h, ft_flat, lu, piv, work, a,
                                      reuse, y_flat, stage_input)
        self.stats["nlinsolve"] += len(c_nodes)
        y1 = np.empty_like(y_flat)
        failed, err_sq, y_absmax = rosenbrock_finish(self._gemv, y_flat, U, self._mw, self._ew, self._atol, tol[1],
                                                     y1)
        if failed:
            self.stats["nfailed_solves"] += 1
        y1 = y1.reshape(shape)
        f1 = ev(t + h, y1)
        dense = None if self._H is None else RosenbrockDense(self._H, U, y, y1)
        return Trial(y1, f1, None, self.error_exponent, dense, err_sq=err_sq, y_absmax=y_absmax)

    def attempt(self, t, y, fy, h, active=None, tol=None) -> Trial:
        if self._host:
            return self._attempt_host(t, y, fy, h, tol)
        ev, xp, tab = self.ev, self.ev.xp, self.tab
        fac = self._factor(t, y, fy, h, tol)
        _, ft = (None, None) if isinstance(self.linear_solver, GMRES) else self._jacobian(t, y, fy, h, tol)
        if ft is None and not self.autonomous and isinstance(self.linear_solver, GMRES):
            dt = time_increment(host_float(t), host_float(h), ev.dtype)
            ft = (ev(t + dt, y) - fy) / dt
        h_rows = xp.asarray(h, dtype=y.dtype).reshape(-1, 1) if ev.batched else host_float(h)
        y_rows, f_rows = self._rows(y), self._rows(fy)
        ft_rows = None if ft is None else self._rows(ft)
        S = tab.stages
        U = xp.empty((S,) + y_rows.shape, dtype=y.dtype)
        flat = U.reshape(S, -1)
        if fac.solve is None:                               # the stage matrix could not be factored
            return self._failed_trial(y, fy, bool(np.asarray(fac.singular).any()))
        for i, (reuse, c_i, d_i, a_row, c_terms) in enumerate(self._plan):
            if reuse:
                rhs = f_rows
            else:
                stage = y_rows + (a_row @ flat[:i]).reshape(y_rows.shape)
                rhs = self._rows(ev(t + c_i * h, stage.reshape(y.shape)))
            for j, c in c_terms:
                rhs = rhs + (c / h_rows) * U[j]
            if ft_rows is not None and d_i != 0.0:
                rhs = rhs + (d_i * h_rows) * ft_rows
            U[i] = fac.solve(rhs)
            if i == 0 and self._matrix_free:
                # no determinant without a matrix: h·(u₁·M u₁) = h·(u₁·f) < 0 means I − hγJ is indefinite
                # along u₁ (h·γ beyond the inverse of a growth rate): the same rejection as the sign test
                # (h carries the direction: M = I/(hγ) − J is negative definite on a backward step)
                indefinite = xp.sum(U[0] * f_rows * h_rows, axis=1) < 0
                fac.state["failed"] = fac.state["failed"] | indefinite
        y1 = y_rows + (self._m @ flat).reshape(y_rows.shape)
        err = (self._e @ flat).reshape(y_rows.shape)
        failed = getattr(fac, "state", {"failed": fac.failed})["failed"]
        failed = failed | ~xp.isfinite(err).all(axis=1) | ~xp.isfinite(y1).all(axis=1)
        if bool(failed.any()):
            self.stats["nfailed_solves"] += 1
            err = xp.where(failed[:, None], xp.asarray(np.inf, dtype=err.dtype), err)
            y1 = xp.where(failed[:, None], y_rows, y1)       # a failed sample keeps its state
        y1 = y1.reshape(y.shape)
        f1 = ev(t + h, y1)
        code = None
        singular = fac.singular if not self._matrix_free else None
        if singular is not None and bool(xp.asarray(singular).any()):  # LINEAR_SOLVE_FAILED if these rows end here
            code = xp.where(xp.asarray(singular), int(ReturnCode.LINEAR_SOLVE_FAILED), 0).astype(np.int64)
            code = code if ev.batched else np.asarray(code.get() if hasattr(code, "get") else code)
        dense = None if self._H is None else RosenbrockDense(self._H, flat, y, y1)
        return Trial(y1, f1, err.reshape(y.shape), self.error_exponent, dense, code=code)

    def _failed_trial(self, y, fy, singular=False):
        """A rejected attempt: the state unchanged, an infinite error (the driver shrinks the step); a
        singular or non-finite stage matrix ends the solve with LINEAR_SOLVE_FAILED if no step size works."""
        self.stats["nfailed_solves"] += 1
        code = int(ReturnCode.LINEAR_SOLVE_FAILED) if singular else None
        if self._host:
            return Trial(y, fy, None, self.error_exponent, err_sq=np.inf, y_absmax=float(np.max(np.abs(y))),
                         code=code)
        err = self.ev.xp.full(y.shape, np.inf, dtype=y.dtype)
        return Trial(y, fy, err, self.error_exponent, code=code)


def user_jacobian(ev, jac, n, t, y):
    """The user's ``jac(t, y, *args)`` checked: dense ``(rows, n, n)`` in the state's dtype, or (unbatched NumPy)
    a SciPy CSC matrix."""
    xp, R = ev.xp, ev.num_rows
    J = jac(0.0 if ev.autonomous else host_float(t), y, *ev.args)
    if type(J) is np.ndarray and J.dtype == ev.dtype and J.shape == ((R, n, n) if ev.batched else (n, n)):
        return J.reshape(R, n, n)      # the common case, checked cheaply
    import scipy.sparse as sp

    if sp.issparse(J):
        if ev.batched or xp is not np:
            raise ValueError("jac returned a scipy.sparse matrix; that is supported for unbatched NumPy "
                             "problems only: return a dense array here")
        if J.shape != (n, n):
            raise ValueError(f"jac must return an ({n}, {n}) matrix (n = y0.size), got shape {J.shape}")
        if not np.issubdtype(np.dtype(J.dtype), np.floating):
            raise TypeError(f"jac must return a floating-point matrix, got a scipy.sparse matrix of dtype "
                            f"{J.dtype}")
        return sp.csc_matrix(J, dtype=ev.dtype)
    if not hasattr(J, "shape") or not hasattr(J, "dtype"):
        raise TypeError(f"jac must return an array, got {type(J).__name__}")
    expected = (R, n, n) if ev.batched else (n, n)
    if tuple(J.shape) != expected:
        raise ValueError(f"jac must return an array of shape {expected} "
                         f"({'one (n, n) Jacobian per sample' if ev.batched else 'n = y0.size'}), "
                         f"got {tuple(J.shape)}")
    if not np.issubdtype(np.dtype(J.dtype), np.floating):
        raise TypeError(f"jac must return a floating-point array, got dtype {J.dtype}")
    if J.dtype != ev.dtype:
        J = J.astype(ev.dtype)
    return J.reshape(R, n, n)


def _is_sparse(J) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover
        return False
    return sp.issparse(J)


def _check_settings(method):
    if not isinstance(method.linear_solver, (LU, GMRES)):
        raise TypeError("linear_solver must be dq.LU() or dq.GMRES(...), got "
                        f"{type(method.linear_solver).__name__}")
    if not isinstance(method.autonomous, (bool, np.bool_)):
        raise TypeError(f"autonomous must be a bool, got {type(method.autonomous).__name__}")
    if method.jac_sparsity is not None:
        if isinstance(method.linear_solver, GMRES):
            raise ValueError("jac_sparsity needs linear_solver=dq.LU() (GMRES never forms the Jacobian)")
        check_sparsity_pattern(method.jac_sparsity)


@dataclass(frozen=True, eq=False)
class _Rosenbrock(ODEMethod):
    linear_solver: Any = field(default_factory=LU)
    jac_sparsity: Any = None
    autonomous: bool = False
    tableau = None

    def __post_init__(self):
        _check_settings(self)

    @property
    def order(self):
        return self.tableau.order

    def stepper(self, ev: Evaluator, jac=None):
        if self.jac_sparsity is not None:
            n = int(np.prod(ev.shape[1:] if ev.batched else ev.shape, dtype=np.int64))
            if tuple(np.shape(self.jac_sparsity)) != (n, n):
                raise ValueError(f"jac_sparsity must have shape ({n}, {n}) for this y0 (n elements per "
                                 f"{'sample' if ev.batched else 'state'}), got {tuple(np.shape(self.jac_sparsity))}")
        return RosenbrockStepper(ev, self.tableau, self.linear_solver, jac, self.jac_sparsity, self.autonomous)


_SETTINGS_DOC = """
    Args:
        linear_solver: ``dq.LU()`` (default: dense or, with ``jac_sparsity`` on NumPy, sparse LU of the stage
            matrix; the Jacobian is the ``jac`` passed to :func:`~deqcore.ode.integrate` /
            :func:`~deqcore.ode.steady_state`, or finite differences) or ``dq.GMRES(...)`` (matrix-free,
            finite-difference Jacobian–vector products).
        jac_sparsity: optional ``(n, n)`` pattern of ∂f/∂y (array-like or ``scipy.sparse``; n elements per
            sample): finite differences then cost one f per group of columns that share no row.
        autonomous: set True when f does not depend on t, to skip the finite-difference ∂f/∂t (one f per
            step). Steady states are always autonomous.
"""


@dataclass(frozen=True, eq=False)
class Rodas3(_Rosenbrock):
    """L-stable order-3 Rosenbrock method (4 stages, 3 evaluations of f per step besides the Jacobian).

    >>> import numpy as np, deqcore as dq
    >>> lam = 1e4                                # stiff: y relaxes onto cos(t) within ~1e-4
    >>> sol = dq.integrate(lambda t, y: -lam * (y - np.cos(t)), np.ones(1), (0, 10), dq.Rodas3(), rtol=1e-6)
    >>> exact = (lam ** 2 * np.cos(10.0) + lam * np.sin(10.0)) / (lam ** 2 + 1)
    >>> bool(abs(sol.ys[-1, 0] - exact) < 1e-5), sol.stats["accepted"] < 1000   # Tsit5 needs ~28000 steps
    (True, True)
    """

    tableau = RODAS3


@dataclass(frozen=True, eq=False)
class Rodas4(_Rosenbrock):
    """L-stable order-4 Rosenbrock method of Hairer and Wanner (6 stages, 6 evaluations of f per step)."""

    tableau = RODAS4


@dataclass(frozen=True, eq=False)
class Rodas5P(_Rosenbrock):
    """L-stable order-5 Rosenbrock method of Steinebach (2023) (8 stages, 8 evaluations of f per step); the
    most efficient choice for stiff problems at moderate to tight tolerances.

    >>> import numpy as np, deqcore as dq
    >>> def robertson(t, y):
    ...     return np.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
    ...                      0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2])
    >>> sol = dq.integrate(robertson, np.array([1.0, 0.0, 0.0]), (0.0, 1e5), dq.Rodas5P(autonomous=True),
    ...                    atol=1e-10, rtol=1e-6)
    >>> np.round(sol.ys[-1], 5).tolist(), sol.stats["accepted"] < 200
    ([0.01787, 0.0, 0.98213], True)
    """

    tableau = RODAS5P


for _cls in (Rodas3, Rodas4, Rodas5P):
    _cls.__doc__ = _cls.__doc__.replace("\n\n    >>>", "\n" + _SETTINGS_DOC + "\n    >>>", 1) \
        if ">>>" in _cls.__doc__ else _cls.__doc__ + _SETTINGS_DOC
