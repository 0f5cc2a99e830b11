"""Compiled (Numba CPU) pieces of the implicit steppers for one unbatched NumPy system.

On a small state every NumPy call costs about a microsecond whatever its size, and a stiff step makes dozens of
them; these functions do a step's vector work in a few compiled calls between the evaluations of f (which stay
in Python). They compute what the NumPy code of :mod:`deqcore.ode.bdf`, :mod:`deqcore.ode.rosenbrock` and
:mod:`deqcore.ode.radau` does for a batch, a sparse or a large system, in the same order of operations except
inside sums, whose order may differ (round-off). Dense stage and Newton matrices (up to
:data:`HOST_SYSTEM_LIMIT` unknowns) are factored by LAPACK's getrf and solved by its getrs (Radau's complex
system by zgetrf/zgetrs), the stage sums formed by BLAS gemv (Radau's transformations by gemm, its norms by
dot), all called from the compiled code through their addresses: the routines SciPy and NumPy call, so the same
numbers as before and the same steps. (An LU or triangular solve of its own differs in round-off, and a
finite-difference Jacobian's increment adaptation, a test against a threshold, turns that into a different step
here and there.)

Arrays are flat ``(n,)`` float64/float32 host arrays; ``atol`` is an array of length 1 (one tolerance) or n.

>>> import numpy as np
>>> J = np.array([[-2.0, 1.0], [0.0, -3.0]]); lu, piv = new_factors(2, np.float64)
>>> singular, sign_ok = factor_shifted(J, 1.0, 1.0, 2.2e-16, lu, piv)    # I − J, then (I − J) x = b
>>> x = np.array([3.0, 4.0]); solve_in_place(getrs_address(np.float64), lu, piv, x)
>>> bool(singular), bool(sign_ok), np.allclose((np.eye(2) - J) @ x, [3.0, 4.0])
(False, True, True)
"""

from __future__ import annotations

import math

import numpy as np

from ..backend.numba_tools import CACHE, numba
from ..backend.cuda_blocks import max_nan
from llvmlite import ir
from numba import types
from numba.extending import get_cython_function_address, intrinsic

__all__ = ["HOST_SYSTEM_LIMIT", "new_factors", "factor_shifted", "getrf_address", "getrs_address", "gemv_address",
           "solve_in_place", "bdf_predict", "bdf_newton",
           "bdf_newton_rhs", "bdf_newton_apply", "bdf_error", "bdf_update", "bdf_rescale", "rosenbrock_input",
           "rosenbrock_stage", "rosenbrock_finish", "radau_addresses", "radau_factor",
           "radau_start", "radau_newton", "radau_error", "radau_extrapolation", "lu_addresses",
           "getrf_in_place"]

#: the largest dense system the steppers solve through these kernels (measured with Rodas5P and an analytic
#: Jacobian: 1.6-3x less time per step than the array code from n = 8 to 128; no clear winner at 256-512,
#: where the factorisation dominates; see ARCHITECTURE.md)
HOST_SYSTEM_LIMIT = 128

#: Newton's status after an iteration (BAD_F: f was not finite, nothing solved)
CONTINUE, CONVERGED, FAILED, BAD_F = 0, 1, 2, 3


def _pointer_call(count: int, returns_double: bool = False):
    """The code generator of the ``_call_*`` intrinsics: call the C function whose address is the first
    argument with the data pointers of the ``count`` arrays that follow (returning its double, or nothing)."""
    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.DoubleType() if returns_double else ir.VoidType(), [i8p] * count)
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        pointers = [builder.bitcast(context.make_array(ty)(context, builder, val).data, i8p)
                    for ty, val in zip(signature.args[1:], args[1:])]
        result = builder.call(fn, pointers)
        return result if returns_double else context.get_dummy_value()
    return codegen


@intrinsic
def _call_with_pointers(typingctx, address, a0, a1, a2, a3, a4, a5, a6, a7, a8):
    """Call the C function at ``address`` (an integer) with the data pointers of nine arrays: LAPACK from
    compiled code, with the address a run-time argument (so the calling function can be cached)."""
    sig = types.void(address, a0, a1, a2, a3, a4, a5, a6, a7, a8)
    return sig, _pointer_call(9)


@intrinsic
def _call_with_11_pointers(typingctx, address, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10):
    """:func:`_call_with_pointers` for a function of eleven pointer arguments (BLAS gemv)."""
    sig = types.void(address, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10)
    return sig, _pointer_call(11)


@intrinsic
def _call_with_6_pointers(typingctx, address, a0, a1, a2, a3, a4, a5):
    """:func:`_call_with_pointers` for a function of six pointer arguments (LAPACK getrf)."""
    sig = types.void(address, a0, a1, a2, a3, a4, a5)
    return sig, _pointer_call(6)


def gemv_address(dtype) -> int:
    """The address of BLAS dgemv for a float64 state (NumPy's ``vector @ matrix`` calls it, so the sums round
    alike); 0 for float32 (then the compiled loops sum)."""
    if np.dtype(dtype) != np.float64:
        return 0
    return get_cython_function_address("scipy.linalg.cython_blas", "dgemv")


@numba.njit
def _combine(gemv, v, B, out):
    """``out = v @ B`` for ``v`` ``(k,)`` and C-ordered rows ``B`` ``(k, n)``: BLAS dgemv as NumPy calls it (no
    transpose on the column-major view ``(n, k)``), or sequential sums when ``gemv`` is 0."""
    k, n = B.shape
    if gemv != 0:
        ints = np.empty(3, dtype=np.int32)
        ints[0] = n
        ints[1] = k
        ints[2] = 1
        alpha_beta = np.empty(2)
        alpha_beta[0] = 1.0
        alpha_beta[1] = 0.0
        trans = np.full(1, 78, dtype=np.uint8)      # "N"
        _call_with_11_pointers(gemv, trans, ints[0:1], ints[1:2], alpha_beta[0:1], B, ints[0:1], v, ints[2:3],
                               alpha_beta[1:2], out, ints[2:3])
        return
    for q in range(n):
        s = 0.0
        for j in range(k):
            s += v[j] * B[j, q]
        out[q] = s


def getrs_address(dtype) -> int:
    """The address of LAPACK's getrs for ``dtype`` (float64 or float32), from SciPy's Cython LAPACK."""
    return lu_addresses(dtype)[1]


@numba.njit
def _getrs(address, lu, ipiv, x):
    """LAPACK getrs (no transpose, one right-hand side) on Fortran-ordered factors and 1-based pivots, in
    place on the contiguous vector ``x``: the routine SciPy's ``lu_solve`` calls, so the same rounding."""
    ints = np.empty(3, dtype=np.int32)
    ints[0] = lu.shape[0]
    ints[1] = 0
    ints[2] = 1
    trans = np.full(1, 78, dtype=np.uint8)      # "N"
    _call_with_pointers(address, trans, ints[0:1], ints[2:3], lu, ints[0:1], ipiv, x, ints[0:1], ints[1:2])


@numba.njit
def _tol(atol, i):
    return atol[i] if atol.shape[0] > 1 else atol[0]


@numba.njit(cache=CACHE)
def _shifted(J, shift, c, out):
    """``out = shift·I − c·J``; False when an entry is not finite."""
    n = J.shape[0]
    finite = True
    for i in range(n):
        for j in range(n):
            v = (shift if i == j else 0.0) - c * J[i, j]
            out[i, j] = v
            if not math.isfinite(v):
                finite = False
    return finite


@numba.njit(cache=CACHE)
def _pivot_checks(lu, piv, eps):
    """(singular, positive determinant) from the factors: singular for a non-finite pivot or a pivot ratio
    ``min|u_ii| / max|u_ii|`` not above ``eps``; the sign from the negative pivots and the interchanges."""
    lo = math.inf
    hi = 0.0
    negative = 0
    for i in range(lu.shape[0]):
        u = lu[i, i]
        a = abs(u)
        if a != a:
            return True, False
        lo = min(lo, a)
        hi = max(hi, a)
        negative += u < 0
        negative += piv[i] != i + 1
    return not (lo > eps * hi), negative % 2 == 0


def new_factors(n, dtype):
    """Work arrays ``(lu, piv)`` for :func:`factor_shifted` (``lu`` in Fortran order: LAPACK factors it in
    place; ``piv`` receives LAPACK's 1-based pivots)."""
    return np.empty((n, n), dtype=dtype, order="F"), np.empty(n, dtype=np.int32)


@numba.njit(cache=CACHE)
def _factor(getrf, J, shift, c, eps, lu, piv):
    if not _shifted(J, shift, c, lu):
        return True, False
    ints = np.empty(2, dtype=np.int32)
    ints[0] = lu.shape[0]
    ints[1] = 0
    _call_with_6_pointers(getrf, ints[0:1], ints[0:1], lu, ints[0:1], piv, ints[1:2])
    singular, positive = _pivot_checks(lu, piv, eps)
    return singular or ints[1] != 0, positive


def getrf_address(dtype) -> int:
    """The address of LAPACK's getrf for ``dtype`` (float64 or float32), from SciPy's Cython LAPACK."""
    return lu_addresses(dtype)[0]


def factor_shifted(J, shift, c, eps, lu, piv):
    """Factor ``shift·I − c·J`` into ``lu``/``piv`` (from :func:`new_factors`) with LAPACK's getrf, called from
    compiled code (the routine SciPy's ``lu_factor`` calls, so the same factors). Returns (singular, positive
    determinant): singular for a non-finite matrix or pivot, or a pivot ratio ``min|u_ii| / max|u_ii|`` not
    above ``eps``."""
    return _factor(getrf_address(lu.dtype), J, shift, c, eps, lu, piv)


@numba.njit(cache=CACHE)
def solve_in_place(address, lu, piv, x):
    """Solve with the factors of :func:`factor_shifted` for the vector ``x``, in place (``address``:
    :func:`getrs_address` of the dtype)."""
    _getrs(address, lu, piv, x)


# ---- BDF ------------------------------------------------------------------------------------------------------

@numba.njit(cache=CACHE)
def bdf_predict(D, order, gamma, alpha, atol, rtol, y_predict, psi, scale):
    """The prediction ``Σ_{j≤k} D[j]``, its error weights ``atol + rtol·|y⁰|`` and ``ψ = Σ γ_j D[j] / α_k``."""
    n = D.shape[1]
    a = alpha[order]
    for i in range(n):
        s = D[0, i]
        p = 0.0
        for j in range(1, order + 1):
            s += D[j, i]
            p += D[j, i] * gamma[j]
        y_predict[i] = s
        scale[i] = _tol(atol, i) + rtol * abs(s)
        psi[i] = p / a


@numba.njit
def _newton_apply(dy, scale, y, d, dy_norm_old, rate_prev, tol, k, max_iter):
    n = dy.shape[0]
    total = 0.0
    for i in range(n):
        q = dy[i] / scale[i]
        total += q * q
    dy_norm = math.sqrt(total / n) if n else 0.0
    if not math.isfinite(dy_norm):
        return FAILED, dy_norm
    rate = -1.0
    if dy_norm_old >= 0.0:
        rate = dy_norm / dy_norm_old
        if rate >= 1.0 or rate ** float(max_iter - k) / (1.0 - rate) * dy_norm > tol:
            return FAILED, dy_norm
    elif 0.0 <= rate_prev < 1.0:     # the first iteration may converge on a rate carried from earlier solves
        rate = rate_prev
    for i in range(n):
        y[i] += dy[i]
        d[i] += dy[i]
    if dy_norm == 0.0 or (rate >= 0.0 and rate / (1.0 - rate) * dy_norm < tol):
        return CONVERGED, dy_norm
    return CONTINUE, dy_norm


@numba.njit(cache=CACHE)
def bdf_newton_apply(dy, scale, y, d, dy_norm_old, rate_prev, tol, k, max_iter):
    """Newton's convergence test on the increment ``dy`` (``dy_norm_old < 0``: the first iteration, which
    converges on ``rate_prev``, the rate carried over from earlier solves, when ``0 ≤ rate_prev < 1``) and, unless it failed, ``y += dy``, ``d += dy``. Returns
    (CONTINUE | CONVERGED | FAILED, ‖dy‖).

    >>> import numpy as np
    >>> y, d, ones = np.zeros(2), np.zeros(2), np.ones(2)
    >>> bdf_newton_apply(np.full(2, 1e-3), ones, y, d, -1.0, -1.0, 0.03, 0, 4)    # no rate known: go on
    (0, 0.001)
    >>> bdf_newton_apply(np.full(2, 1e-3), ones, y, d, -1.0, 0.5, 0.03, 0, 4)     # 0.5/0.5 · 1e-3 < 0.03
    (1, 0.001)
    >>> y.tolist()
    [0.002, 0.002]
    """
    return _newton_apply(dy, scale, y, d, dy_norm_old, rate_prev, tol, k, max_iter)


@numba.njit(cache=CACHE)
def bdf_newton_rhs(f, c, psi, d, out):
    """``out = c·f − ψ − d``; False when f holds a non-finite value."""
    for i in range(f.shape[0]):
        if not math.isfinite(f[i]):
            return False
        out[i] = c * f[i] - psi[i] - d[i]
    return True


@numba.njit(cache=CACHE)
def bdf_newton(getrs, f, c, psi, d, y, lu, piv, scale, work, dy_norm_old, rate_prev, tol, k, max_iter):
    """One simplified Newton iteration with factors from :func:`factor_shifted` (``work``: ``(n,)``, ``getrs``:
    :func:`getrs_address`): solve ``(I − cJ) dy = c·f − ψ − d``, then :func:`bdf_newton_apply`."""
    n = f.shape[0]
    for i in range(n):
        if not math.isfinite(f[i]):
            return BAD_F, 0.0
        work[i] = c * f[i] - psi[i] - d[i]
    _getrs(getrs, lu, piv, work)
    return _newton_apply(work, scale, y, d, dy_norm_old, rate_prev, tol, k, max_iter)


@numba.njit(cache=CACHE)
def bdf_error(y_old, y_new, d, error_const, atol, rtol, scale):
    """The error weights ``atol + rtol·max(|y_old|, |y_new|)`` (into ``scale``), the squared scaled error sum
    of ``error_const·d`` and ``max|y_new|``."""
    total = 0.0
    top = 0.0
    for i in range(d.shape[0]):
        a_new = abs(y_new[i])
        scale[i] = _tol(atol, i) + rtol * max_nan(abs(y_old[i]), a_new)
        q = error_const * d[i] / scale[i]
        total += q * q
        top = max_nan(top, a_new)
    return total, top


@numba.njit(cache=CACHE)
def bdf_update(D, D_new, d, order, error_const, scale, max_order, select, psi, c, f_new):
    """The differences after an accepted step (into ``D_new``), the corrector's derivative ``(ψ + d) / c``
    (into ``f_new``) and, when ``select``, the RMS scaled error estimates of orders k − 1 and k + 1 (inf where
    that order does not exist)."""
    n = D.shape[1]
    for j in range(D.shape[0]):     # D_new[:] = D (element loops: a sliced assignment compiles its shape-error path)
        for i in range(n):
            D_new[j, i] = D[j, i]
    for i in range(n):
        f_new[i] = (psi[i] + d[i]) / c
        D_new[order + 2, i] = d[i] - D_new[order + 1, i]
        D_new[order + 1, i] = d[i]
    for j in range(order, -1, -1):
        for i in range(n):
            D_new[j, i] += D_new[j + 1, i]
    err_m = math.inf
    err_p = math.inf
    if select and n:
        if order > 1:
            total = 0.0
            for i in range(n):
                q = error_const[order - 1] * D_new[order, i] / scale[i]
                total += q * q
            err_m = math.sqrt(total / n)
        if order < max_order:
            total = 0.0
            for i in range(n):
                q = error_const[order + 1] * D_new[order + 2, i] / scale[i]
                total += q * q
            err_p = math.sqrt(total / n)
    return err_m, err_p


@numba.njit(cache=CACHE)
def bdf_rescale(D, order, factor):
    """Rescale the differences ``D[:order + 1]`` in place from step h to ``factor·h`` (Shampine & Reichelt:
    ``D ← (R U)ᵀ D`` with R, U the cumulative products of ``(i − 1 − r·j) / i`` for r = factor and 1)."""
    k = order + 1
    R = np.zeros((k, k))
    U = np.zeros((k, k))
    for j in range(k):
        R[0, j] = 1.0
        U[0, j] = 1.0
    for i in range(1, k):
        for j in range(1, k):
            R[i, j] = R[i - 1, j] * ((i - 1 - factor * j) / i)
            U[i, j] = U[i - 1, j] * ((i - 1 - 1.0 * j) / i)
    RU = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            s = 0.0
            for q in range(k):
                s += R[i, q] * U[q, j]
            RU[i, j] = s
    n = D.shape[1]
    out = np.empty((k, n), dtype=D.dtype)
    for j in range(k):
        for i in range(n):
            s = 0.0
            for q in range(k):
                s += RU[q, j] * D[q, i]
            out[j, i] = s
    for j in range(k):
        for i in range(n):
            D[j, i] = out[j, i]


# ---- Rosenbrock -----------------------------------------------------------------------------------------------

@numba.njit(cache=CACHE)
def rosenbrock_stage(getrs, gemv, i, f_i, U, C, d_i, h, ft, lu, piv, work, a, reuses_f0, y, next_input):
    """Stage ``i``: solve ``(I/(hγ) − J) u_i = f_i + Σ_j (C_ij / h) u_j + h d_i ∂f/∂t`` into ``U[i]`` (``ft``
    empty for an autonomous problem); then, when stage i + 1 evaluates f, its argument
    ``y + Σ_{j≤i} a_{i+1,j} u_j`` into ``next_input``. Returns whether that argument was formed."""
    n = f_i.shape[0]
    for q in range(n):
        work[q] = f_i[q]
    for j in range(i):
        c = C[i, j]
        if c != 0.0:
            s = c / h
            for q in range(n):
                work[q] = work[q] + s * U[j, q]
    if ft.shape[0] and d_i != 0.0:
        s = d_i * h
        for q in range(n):
            work[q] = work[q] + s * ft[q]
    _getrs(getrs, lu, piv, work)
    for q in range(n):
        U[i, q] = work[q]
    nxt = i + 1
    if nxt >= U.shape[0] or reuses_f0[nxt]:
        return False
    _combine(gemv, a[nxt, :nxt], U[:nxt], next_input)
    for q in range(n):
        next_input[q] = y[q] + next_input[q]
    return True


@numba.njit(cache=CACHE)
def rosenbrock_input(gemv, i, U, a, y, out):
    """The argument ``y + Σ_{j<i} a_ij u_j`` of stage ``i``'s evaluation of f."""
    if i == 0:
        out[:] = y
        return
    _combine(gemv, a[i, :i], U[:i], out)
    for q in range(y.shape[0]):
        out[q] = y[q] + out[q]


@numba.njit(cache=CACHE)
def rosenbrock_finish(gemv, y, U, m, e, atol, rtol, y_new):
    """``y_new = y + Σ m_i u_i`` and the error ``Σ e_i u_i`` reduced to its squared scaled sum with
    ``max|y_new|`` (the driver's norm); a non-finite error or state fails the step: ``y_new = y``, error inf.
    Returns (failed, err_sq, y_absmax)."""
    n = y.shape[0]
    failed = False
    _combine(gemv, m, U, y_new)
    for q in range(n):
        y_new[q] = y[q] + y_new[q]
        if not math.isfinite(y_new[q]):
            failed = True
    errors = np.empty(n, dtype=y_new.dtype)
    _combine(gemv, e, U, errors)
    total = 0.0
    top = 0.0
    for q in range(n):
        err = errors[q]
        if not math.isfinite(err):
            failed = True
        a_new = abs(y_new[q])
        r = err / (_tol(atol, q) + rtol * max_nan(abs(y[q]), a_new))
        total += r * r
        top = max_nan(top, a_new)
    if failed:
        top = 0.0
        for q in range(n):
            y_new[q] = y[q]
            top = max_nan(top, abs(y[q]))
        total = math.inf
    return failed, total, top


# ---- Radau IIA (float64 only: the complex system is solved by zgetrf/zgetrs) ----------------------------------

@intrinsic
def _call_with_13_pointers(typingctx, address, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12):
    """:func:`_call_with_pointers` for a function of thirteen pointer arguments (BLAS gemm)."""
    sig = types.void(address, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12)
    return sig, _pointer_call(13)


@intrinsic
def _call_returning_double(typingctx, address, a0, a1, a2, a3, a4):
    """Call the C function at ``address`` with the data pointers of five arrays, returning its double (BLAS
    ddot)."""
    sig = types.float64(address, a0, a1, a2, a3, a4)
    return sig, _pointer_call(5, returns_double=True)


_RADAU_ADDRESSES = []


def radau_addresses() -> np.ndarray:
    """The addresses (int64) of dgetrf, zgetrf, dgetrs, zgetrs, dgemm, dgemv and ddot from SciPy's Cython
    LAPACK/BLAS, in that order: the routines the array code reaches through SciPy and NumPy (looked up once:
    about 50 µs)."""
    if _RADAU_ADDRESSES:
        return _RADAU_ADDRESSES[0]
    lapack = [get_cython_function_address("scipy.linalg.cython_lapack", name)
              for name in ("dgetrf", "zgetrf", "dgetrs", "zgetrs")]
    blas = [get_cython_function_address("scipy.linalg.cython_blas", name) for name in ("dgemm", "dgemv", "ddot")]
    _RADAU_ADDRESSES.append(np.array(lapack + blas, dtype=np.int64))
    return _RADAU_ADDRESSES[0]


RADAU_GETRF, RADAU_ZGETRF, RADAU_GETRS, RADAU_ZGETRS, RADAU_GEMM, RADAU_GEMV, RADAU_DOT = range(7)


@numba.njit
def _gemm(address, A, B, out):
    """``out = A @ B`` for C-ordered ``A`` ``(m, k)``, ``B`` ``(k, n)``: BLAS dgemm as NumPy's matmul calls it
    (row-major through the column-major product ``Bᵀ Aᵀ``)."""
    m, k = A.shape
    n = B.shape[1]
    ints = np.empty(3, dtype=np.int32)
    ints[0] = n
    ints[1] = m
    ints[2] = k
    alpha_beta = np.empty(2)
    alpha_beta[0] = 1.0
    alpha_beta[1] = 0.0
    trans = np.full(1, 78, dtype=np.uint8)      # "N"
    _call_with_13_pointers(address, trans, trans, ints[0:1], ints[1:2], ints[2:3], alpha_beta[0:1], B,
                           ints[0:1], A, ints[2:3], alpha_beta[1:2], out, ints[0:1])


@numba.njit
def _rms_scaled(address, X, scale, work):
    """``sqrt(dot(x, x) / x.size)`` of ``x = X / scale`` (rows of ``X`` divided by ``scale``), the sum by BLAS
    ddot as NumPy's ``dot`` forms it."""
    rows, n = X.shape
    for r in range(rows):
        for q in range(n):
            work[r * n + q] = X[r, q] / scale[q]
    ints = np.empty(2, dtype=np.int32)
    ints[0] = rows * n
    ints[1] = 1
    return math.sqrt(_call_returning_double(address, ints[0:1], work, ints[1:2], work, ints[1:2]) / (rows * n))


@numba.njit(cache=CACHE)
def radau_factor(addresses, J, g_h, mu_re, mu_im, lu_r, piv_r, lu_c, piv_c):
    """Factor ``g_h·I − J`` (float64) and ``(mu_re + i·mu_im)·I − J`` (complex128) with LAPACK's getrf into the
    Fortran-ordered ``lu_r``/``lu_c`` (1-based pivots). Returns whether either is singular: a non-finite or
    zero pivot, or a pivot ratio ``min|u_ii| / max|u_ii|`` not above the float64 epsilon."""
    n = J.shape[0]
    for i in range(n):
        for j in range(n):
            v = -J[i, j]
            lu_r[i, j] = v + g_h if i == j else v
            lu_c[i, j] = complex(v + mu_re, mu_im) if i == j else complex(v, 0.0)
    eps = 2.220446049250313e-16
    ints = np.empty(2, dtype=np.int32)
    ints[0] = n
    ints[1] = 0
    _call_with_6_pointers(addresses[RADAU_GETRF], ints[0:1], ints[0:1], lu_r, ints[0:1], piv_r, ints[1:2])
    if ints[1] != 0 or _pivot_checks(lu_r, piv_r, eps)[0]:
        return True
    _call_with_6_pointers(addresses[RADAU_ZGETRF], ints[0:1], ints[0:1], lu_c, ints[0:1], piv_c, ints[1:2])
    if ints[1] != 0:
        return True
    lo = math.inf
    hi = 0.0
    for i in range(n):
        a = abs(lu_c[i, i])
        if a != a:
            return True
        lo = min(lo, a)
        hi = max(hi, a)
    return not (lo > eps * hi)


@numba.njit(cache=CACHE)
def radau_start(addresses, M, Z_prev, T_inv, y, atol, rtol, Z, W, Y, scale):
    """The Newton start of a step: ``Z = M @ Z_prev`` (the last collocation polynomial extrapolated; zeros when
    ``Z_prev`` has no rows), ``W = T⁻¹ Z``, the stage arguments ``Y = y + Z`` and the Newton error weights
    ``atol + rtol·|y|``."""
    n = y.shape[0]
    if Z_prev.shape[0]:
        _gemm(addresses[RADAU_GEMM], M, Z_prev, Z)
        _gemm(addresses[RADAU_GEMM], T_inv, Z, W)
    else:
        for i in range(3):
            for q in range(n):
                Z[i, q] = 0.0
                W[i, q] = 0.0
    for i in range(3):
        for q in range(n):
            Y[i, q] = y[q] + Z[i, q]
    for q in range(n):
        scale[q] = _tol(atol, q) + rtol * abs(y[q])


@numba.njit
def radau_newton_rhs(addresses, F, T_inv, g_h, mu_re, mu_im, W):
    """The right-hand sides of one simplified Newton iteration from the stage evaluations ``F`` ``(3, n)``:
    ``(finite, work_r, work_c)``, the real system's ``(T⁻¹F)₀ − γ/h·W₀`` and the complex one's, solved in place
    by the caller's factors (``finite`` False when ``F`` holds NaN or infinity)."""
    n = W.shape[1]
    work_r = np.empty(n)
    work_c = np.empty(n, dtype=np.complex128)
    for i in range(3):
        for q in range(n):
            if not math.isfinite(F[i, q]):
                return False, work_r, work_c
    G = np.empty((3, n))
    _gemm(addresses[RADAU_GEMM], T_inv, F, G)
    for q in range(n):
        work_r[q] = G[0, q] - g_h * W[0, q]
        w1 = W[1, q]
        w2 = W[2, q]
        work_c[q] = complex(G[1, q] - (mu_re * w1 - mu_im * w2), G[2, q] - (mu_re * w2 + mu_im * w1))
    return True, work_r, work_c


@numba.njit
def radau_newton_update(addresses, work_r, work_c, T, scale, y, W, Z, Y, rate, k, k_max, tol, tol_fail):
    """The rest of one simplified Newton iteration from the solved ``work_r``, ``work_c`` (``ΔW``): its RMS scaled
    norm, the contraction rate and the convergence test, then ``W += ΔW``, ``Z = T W``, ``Y = y + Z`` (see
    :func:`radau_newton`)."""
    n = y.shape[0]
    dW = np.empty((3, n))
    for q in range(n):
        dW[0, q] = work_r[q]
        dW[1, q] = work_c[q].real
        dW[2, q] = work_c[q].imag
    dyno = _rms_scaled(addresses[RADAU_DOT], dW, scale, np.empty(3 * n))
    if not math.isfinite(dyno):
        return FAILED, 0.5
    faccon = rate[3]
    if 1 < k < k_max:
        thq = dyno / rate[0]
        theta = thq if k == 2 else math.sqrt(thq * rate[1])
        rate[1] = thq
        rate[2] = theta
        if not theta < 0.99:
            return FAILED, 0.5
        faccon = theta / (1.0 - theta)
        rate[3] = faccon
        predicted = faccon * dyno * math.pow(theta, float(k_max - 1 - k)) / tol_fail
        if predicted >= 1.0:
            q = max(1e-4, min(20.0, predicted))
            return FAILED, 0.8 * math.pow(q, -1.0 / (4 + k_max - 1 - k))
    rate[0] = max(dyno, 2.220446049250313e-16)
    for i in range(3):
        for q in range(n):
            W[i, q] += dW[i, q]
    _gemm(addresses[RADAU_GEMM], T, W, Z)
    for i in range(3):
        for q in range(n):
            Y[i, q] = y[q] + Z[i, q]
    if faccon * dyno <= (tol if k < k_max else tol_fail):
        return CONVERGED, 0.0
    return CONTINUE, 0.0


@numba.njit(cache=CACHE)
def radau_newton(addresses, F, T, T_inv, g_h, mu_re, mu_im, lu_r, piv_r, lu_c, piv_c, scale, y, W, Z, Y, rate,
                 k, k_max, tol, tol_fail):
    """One simplified Newton iteration on ``W = T⁻¹Z`` from the stage evaluations ``F`` ``(3, n)``: solve the
    real and complex systems for ``ΔW``, its RMS scaled norm, the contraction rate and the convergence test,
    then ``W += ΔW``, ``Z = T W`` and the next stage arguments ``Y = y + Z``. ``rate`` holds
    ``[‖ΔW‖ of the last iteration, its ratio, θ, θ/(1 − θ)]`` and is updated. Returns (CONTINUE | CONVERGED |
    FAILED | BAD_F, factor): on failure the next step size is ``factor·|h|``."""
    finite, work_r, work_c = radau_newton_rhs(addresses, F, T_inv, g_h, mu_re, mu_im, W)
    if not finite:
        return BAD_F, 0.5
    _getrs(addresses[RADAU_GETRS], lu_r, piv_r, work_r)
    _getrs(addresses[RADAU_ZGETRS], lu_c, piv_c, work_c)
    return radau_newton_update(addresses, work_r, work_c, T, scale, y, W, Z, Y, rate, k, k_max, tol, tol_fail)


@numba.njit(cache=CACHE)
def radau_error(addresses, first, f, Z, e, h, lu_r, piv_r, y, atol, rtol, y_new, scale, ez, err_vec):
    """The filtered error estimate ``err_vec = (γ/h − J)⁻¹ (f + ez)`` and its RMS scaled norm (returned with
    ``max|y_new|``). When ``first``, also ``y_new = y + Z₃``, the error weights ``atol + rtol·max(|y|,
    |y_new|)`` and ``ez = (e @ Z) / h``; otherwise those are reused (the re-filtered estimate, ``f`` then
    evaluated at ``y + err_vec``)."""
    n = y.shape[0]
    if first:
        for q in range(n):
            a_new = y[q] + Z[2, q]
            y_new[q] = a_new
            scale[q] = _tol(atol, q) + rtol * max_nan(abs(y[q]), abs(a_new))
        _combine(addresses[RADAU_GEMV], e, Z, ez)
        for q in range(n):
            ez[q] = ez[q] / h
    for q in range(n):
        err_vec[q] = f[q] + ez[q]
    _getrs(addresses[RADAU_GETRS], lu_r, piv_r, err_vec)
    err = _rms_scaled(addresses[RADAU_DOT], err_vec.reshape((1, n)), scale, np.empty(n))
    top = 0.0
    for q in range(n):
        top = max_nan(top, abs(y_new[q]))
    return err, top


@numba.njit(cache=CACHE)
def radau_extrapolation(ratio, c, dense, out):
    """``out`` (3 × 3, flat, C order) = the extrapolation matrix ``M[j, i] = ℓ_i(1 + c_j·ratio)`` with 1
    subtracted in column 2 (:func:`deqcore.ode.radau.extrapolation_matrix`), ``ℓ_i(θ) = Σ_k dense[i, k]
    θ^(k+1)`` (``dense`` flat); the powers by ``pow`` and the sums in a fixed order, so that every path that
    calls it starts Newton from the same numbers."""
    for j in range(3):
        theta = 1.0 + c[j] * ratio
        p1 = math.pow(theta, 1.0)
        p2 = math.pow(theta, 2.0)
        p3 = math.pow(theta, 3.0)
        for i in range(3):
            v = p1 * dense[3 * i] + p2 * dense[3 * i + 1] + p3 * dense[3 * i + 2]
            out[3 * j + i] = v - 1.0 if i == 2 else v


# ---- a dense block of general dtype (the trailing block of the sparse factors) ---------------------------------

_LU_ADDRESSES = {}


def lu_addresses(dtype) -> tuple:
    """The addresses ``(getrf, getrs)`` of LAPACK's LU routines for ``dtype`` (float32, float64, complex64 or
    complex128: s/d/c/z) from SciPy's Cython LAPACK (looked up once per dtype)."""
    dtype = np.dtype(dtype)
    found = _LU_ADDRESSES.get(dtype)
    if found is None:
        prefix = {np.dtype(np.float32): "s", np.dtype(np.float64): "d", np.dtype(np.complex64): "c",
                  np.dtype(np.complex128): "z"}.get(dtype)
        if prefix is None:
            raise TypeError(f"dtype: LAPACK's LU takes float32, float64, complex64 or complex128, not {dtype}")
        found = _LU_ADDRESSES[dtype] = tuple(get_cython_function_address("scipy.linalg.cython_lapack",
                                                                         prefix + name)
                                             for name in ("getrf", "getrs"))
    return found


@numba.njit(cache=CACHE)
def getrf_in_place(address, a, piv):
    """LAPACK getrf (``address`` from :func:`lu_addresses` of ``a``'s dtype) on the square Fortran-ordered
    ``a``, in place, 1-based pivots into ``piv`` (int32); returns LAPACK's info (> 0: an exact zero pivot)."""
    ints = np.empty(2, dtype=np.int32)
    ints[0] = a.shape[0]
    ints[1] = 0
    _call_with_6_pointers(address, ints[0:1], ints[0:1], a, ints[0:1], piv, ints[1:2])
    return ints[1]
