"""Radau's simplified Newton iteration with sparse factors (:class:`~deqcore.ode.sparse_lu.ShiftedSparseLU`)
as one compiled call per iteration: :func:`radau_newton_sparse` is
:func:`~deqcore.ode.kernels_host.radau_newton` (the same arithmetic, through the same BLAS routines) with the
two sparse solves in place of LAPACK's getrs. The array code of :meth:`RadauStepper._iterate
<deqcore.ode.radau.RadauStepper._iterate>` spent about as much time in its dozen NumPy operations per
iteration on a few hundred unknowns as in the sparse solves themselves.

``factors``: a factorisation's arrays in the order of :meth:`ShiftedSparseLU.kernel_arrays
<deqcore.ode.sparse_lu.ShiftedSparseLU.kernel_arrays>`.

>>> import numpy as np, scipy.sparse as sp, deqcore as dq
>>> n = 40
>>> A = sp.diags([np.ones(n - 1), -2.0 * np.ones(n), np.ones(n - 1)], [-1, 0, 1]) * 100.0
>>> f = lambda t, y: A @ y + np.cos(t)
>>> y0 = np.linspace(0.0, 1.0, n)
>>> sol = dq.integrate(f, y0, (0.0, 1.0), dq.Radau(jac_sparsity=A != 0), rtol=1e-8, atol=1e-10)
>>> from scipy.integrate import solve_ivp
>>> ref = solve_ivp(f, (0.0, 1.0), y0, method="LSODA", rtol=1e-11, atol=1e-13).y[:, -1]
>>> bool(np.max(np.abs(sol.ys[-1] - ref)) < 1e-7)
True
"""

from __future__ import annotations

from ..backend.numba_tools import CACHE, numba
from .kernels_host import BAD_F, radau_newton_rhs, radau_newton_update
from .sparse_lu import _solve

__all__ = ["radau_newton_sparse"]


@numba.njit
def _sparse_solve(b, f):
    """``b ← M⁻¹ b`` with the sparse factors ``f`` (in place: :func:`~deqcore.ode.sparse_lu._solve` reads its
    right-hand side whole before writing its result)."""
    _solve(b.shape[0], b, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], b, f[11], f[12],
           f[13], f[14])


@numba.njit(cache=CACHE)
def radau_newton_sparse(addresses, F, T, T_inv, g_h, mu_re, mu_im, factors_r, factors_c, scale, y, W, Z, Y,
                        rate, k, k_max, tol, tol_fail):
    """One simplified Newton iteration on ``W = T⁻¹Z`` (see :func:`~deqcore.ode.kernels_host.radau_newton`:
    the same arguments, results and updates of ``W``, ``Z``, ``Y`` and ``rate``), the real and complex
    systems solved with the sparse factors ``factors_r`` and ``factors_c``."""
    finite, work_r, work_c = radau_newton_rhs(addresses, F, T_inv, g_h, mu_re, mu_im, W)
    if not finite:
        return BAD_F, 0.5
    _sparse_solve(work_r, factors_r)
    _sparse_solve(work_c, factors_c)
    return radau_newton_update(addresses, work_r, work_c, T, scale, y, W, Z, Y, rate, k, k_max, tol, tol_fail)
