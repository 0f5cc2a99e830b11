"""Rodas3: a 4-stage, order-3, L-stable, stiffly accurate Rosenbrock method with an embedded order-2 error
estimate (Sandu et al., "Benchmarking stiff ODE solvers for atmospheric chemistry II: Rosenbrock solvers",
Atmos. Environ. 31, 1997), written in the form

    (I/(hγ) − J) k_i = f(t + α_i h, y + Σ_j a_ij k_j) + Σ_j (c_ij / h) k_j + h γ_i ∂f/∂t,
    y_new = y + Σ m_i k_i,   err = Σ e_i k_i.

Each step needs the Jacobian J = ∂f/∂y once (finite differences, n evaluations, or a user ``jac``) and one
LU factorisation (``linear_solver=dq.LU()``, the default), or no Jacobian at all with matrix-free GMRES on
finite-difference Jacobian–vector products (``linear_solver=dq.GMRES(...)``; one f per Krylov step).

>>> import numpy as np, deqcore as dq
>>> stiff = lambda t, y: -1e6 * (y - np.cos(t))          # explicit methods need ~10^6 steps here
>>> sol = dq.integrate(stiff, np.array([0.0]), (0.0, 1.0), dq.Rodas3(), atol=1e-6, rtol=1e-6)
>>> sol.stats["accepted"] < 1000, bool(abs(sol.ys[-1, 0] - np.cos(1.0)) < 1e-5)
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..linalg import GMRES, LU, LinearOperator
from .base import Evaluator, ODEMethod, Trial, host_float

__all__ = ["Rodas3", "RosenbrockStepper"]

_GAMMA = 0.5
_A = {(2, 0): 2.0, (3, 0): 2.0, (3, 2): 1.0}                    # stage inputs y + Σ a_ij k_j
_C = {(1, 0): 4.0, (2, 0): 1.0, (2, 1): -1.0, (3, 0): 1.0, (3, 1): -1.0, (3, 2): -8.0 / 3.0}
_ALPHA = (0.0, 0.0, 1.0, 1.0)
_GAMMAS = (0.5, 1.5, 0.0, 0.0)
_NEW_F = (True, False, True, True)
_M = (2.0, 0.0, 1.0, 1.0)
_E = (0.0, 0.0, 0.0, 1.0)


class RosenbrockStepper:
    error_exponent = 3

    def __init__(self, ev: Evaluator, linear_solver, jac):
        self.ev, self.linear_solver, self.jac = ev, linear_solver, jac
        self.stats = {"njev": 0, "nlinsolve": 0}
        self._jac_at = None

    def start(self, t0, y0, f0):
        pass

    def accept(self, trial, mask, t_new):
        pass

    def _flat(self, y):
        return y.reshape(y.shape[0], -1) if self.ev.batched else y.reshape(-1)

    def _jacobian(self, t, y, fy):
        """Dense ∂f/∂y, (n, n) or (B, n, n); reused while the step is retried from the same point."""
        if self._jac_at is not None and self._jac_at[0] is y:
            return self._jac_at[1]
        ev, xp = self.ev, self.ev.xp
        self.stats["njev"] += 1
        if self.jac is not None:
            J = self.jac(0.0 if ev.autonomous else host_float(t), y, *ev.args)
        else:
            flat, f_flat = self._flat(y), self._flat(fy)
            n = flat.shape[-1]
            delta = float(np.sqrt(np.finfo(y.dtype).eps)) * xp.maximum(xp.abs(flat), 1.0)
            cols = []
            for j in range(n):
                yp = flat.copy()
                yp[..., j] += delta[..., j]
                cols.append((self._flat(ev(t, yp.reshape(y.shape))) - f_flat) / delta[..., j:j + 1])
            J = xp.stack(cols, axis=-1)
        self._jac_at = (y, J)
        return J

    def _solver(self, t, y, fy, h):
        """A function ``rhs -> (I/(hγ) − J)^{-1} rhs`` for this step."""
        ev, xp = self.ev, self.ev.xp
        inv = 1.0 / (_GAMMA * (xp.asarray(h, dtype=np.float64) if ev.batched else host_float(h)))
        if isinstance(self.linear_solver, LU):
            J = self._jacobian(t, y, fy)
            n = J.shape[-1]
            scale = xp.asarray(inv, dtype=J.dtype).reshape((-1, 1, 1)) if ev.batched else inv
            fac = self.linear_solver.factor(scale * xp.eye(n, dtype=J.dtype) - J)

            def solve(rhs):
                self.stats["nlinsolve"] += 1
                return fac.solve(self._flat(rhs)).reshape(y.shape)
            return solve
        flat, f_flat = self._flat(y), self._flat(fy)
        eps = float(np.sqrt(np.finfo(y.dtype).eps))
        inv_b = ev.steps(inv, flat)

        def matvec(v):
            norm = xp.sqrt(xp.sum(v * v, axis=-1, keepdims=True))
            size = eps * (1.0 + xp.sqrt(xp.sum(flat * flat, axis=-1, keepdims=True)))
            step = xp.where(norm > 0, size / xp.where(norm > 0, norm, 1.0), 0.0)
            shifted = ev(t, (flat + step * v).reshape(y.shape))
            jv = (self._flat(shifted) - f_flat) / xp.where(step > 0, step, 1.0)
            return inv_b * v - jv

        n = flat.shape[-1]
        op = LinearOperator(matvec, shape=(n, n), dtype=y.dtype)

        def solve(rhs):
            self.stats["nlinsolve"] += 1
            b = self._flat(rhs)
            return self.linear_solver.solve(op, b, x0=b / inv_b).value.reshape(y.shape)
        return solve

    def attempt(self, t, y, fy, h, active=None, tol=None) -> Trial:
        ev = self.ev
        hb = ev.steps(h, y)
        solve = self._solver(t, y, fy, h)
        f_t = None
        if not ev.autonomous:
            dt = float(np.sqrt(np.finfo(y.dtype).eps)) * max(abs(host_float(t)), 1.0)
            f_t = (ev(t + dt, y) - fy) / dt
        ks, f_stage = [], fy
        for i in range(4):
            if _NEW_F[i] and i > 0:
                stage_y = y
                for (r, j), a in _A.items():
                    if r == i:
                        stage_y = stage_y + a * ks[j]
                f_stage = ev(t + _ALPHA[i] * h, stage_y)
            rhs = f_stage
            for (r, j), c in _C.items():
                if r == i:
                    rhs = rhs + (c / hb) * ks[j]
            if f_t is not None and _GAMMAS[i] != 0.0:
                rhs = rhs + (_GAMMAS[i] * hb) * f_t
            ks.append(solve(rhs))
        y1 = y
        for m, k in zip(_M, ks):
            if m != 0.0:
                y1 = y1 + m * k
        err = sum(e * k for e, k in zip(_E, ks) if e != 0.0)
        return Trial(y1, ev(t + h, y1), err, self.error_exponent)


@dataclass(frozen=True)
class Rodas3(ODEMethod):
    """L-stable order-3 Rosenbrock method for stiff problems.

    Args:
        linear_solver: ``dq.LU()`` (default; dense Jacobian from finite differences or the ``jac`` passed to
            :func:`~deqcore.ode.integrate`) or ``dq.GMRES(...)`` (matrix-free, finite-difference JVPs).

    >>> import numpy as np, deqcore as dq
    >>> lam = 1e4                                # stiff: y relaxes onto cos(t) within ~1e-4
    >>> sol = dq.integrate(lambda t, y: -lam * (y - np.cos(t)), np.ones(1), (0, 10), dq.Rodas3(), rtol=1e-6)
    >>> exact = (lam ** 2 * np.cos(10.0) + lam * np.sin(10.0)) / (lam ** 2 + 1)
    >>> bool(abs(sol.ys[-1, 0] - exact) < 1e-5), sol.stats["accepted"] < 1000   # Tsit5 needs ~28000 steps
    (True, True)
    """

    linear_solver: Any = field(default_factory=LU)
    order = 3

    def __post_init__(self):
        if not isinstance(self.linear_solver, (LU, GMRES)):
            raise TypeError("linear_solver must be dq.LU() or dq.GMRES(...), got "
                            f"{type(self.linear_solver).__name__}")

    def stepper(self, ev: Evaluator, jac=None):
        return RosenbrockStepper(ev, self.linear_solver, jac)
