"""Fused kernel of GMRES: one Arnoldi step per sample (classical Gram–Schmidt with a second pass where needed,
the Givens rotations and the convergence test) in one pass over the basis.

The second Gram–Schmidt pass runs only for the samples whose vector lost more than half its squared norm in the
first (‖w₁‖² < ``REORTHOGONALISE_BELOW``·‖w‖², the Daniel–Gragg–Kaufman–Stewart test with η = 1/√2): otherwise
the first pass is already orthogonal to working precision, and the second pass would only re-read the basis.

``arnoldi_step(V, w, R, Q, beta, tol, k, live, broke, j, tiny_factor, shifted)`` takes ``w = A M v_j`` for every
sample and updates, in place: the next basis vector ``V[:, j+1]``, column ``j`` of the rotated Hessenberg matrix
``R``, the accumulated rotations ``Q``, the usable column count ``k``, and the ``live`` / ``broke`` flags. The NumPy form is
about twenty array operations per step (each a pass over memory, and on a GPU a launch); the kernels do it in
one call, and skip samples that are no longer iterating (whose basis vectors are zero).

``shifted=True`` is for an operator ``A = I − B`` (the implicit adjoint's ``I − ∂f/∂zᵀ``): ``w`` is then ``B v_j``,
which spans the same Krylov space, and the step orthogonalises ``w`` itself and stores the Hessenberg column of
A, ``e_j − h`` with the new basis vector ``−w⊥/‖w⊥‖`` (so its subdiagonal stays ``‖w⊥‖ ≥ 0``). Orthogonalising
``v_j − B v_j`` directly cancels its large ``v_j`` part in the first pass whenever B is small, so nearly every
step needed the second pass; ``B v_j`` rarely does (the same space, the same rotations, equal up to round-off).

>>> import numpy as np
>>> V = np.zeros((1, 3, 2)); V[0, 0] = [1.0, 0.0]
>>> R, Q = np.zeros((1, 3, 2)), np.eye(3)[None].copy()
>>> k, live, broke = np.zeros(1, np.int64), np.ones(1, bool), np.zeros(1, bool)
>>> out = arnoldi_step_reference(V, np.array([[2.0, 1.0]]), R, Q, np.ones(1), np.zeros(1), k, live, broke, 0, 1e-14)
>>> out[0][0, 1].tolist(), out[3].tolist(), out[4].tolist()       # next basis vector, k, still live
([0.0, 1.0], [1], [True])
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace, register_kernel

__all__ = ["arnoldi_step_reference", "least_squares_reference", "MAX_RESTART", "REORTHOGONALISE_BELOW"]

#: the largest Krylov dimension per cycle the fused kernel handles (its per-sample scratch is static)
MAX_RESTART = 64
#: a sample's vector is orthogonalised a second time when the first pass left less than this share of its
#: squared norm (η² with the usual η = 1/√2)
REORTHOGONALISE_BELOW = 0.5


def arnoldi_step_reference(V, w, R, Q, beta, tol, k, live, broke, j, tiny_factor, shifted=False):
    """Reference (array-namespace) implementation; returns ``(V, R, Q, k, live, broke)`` updated in place."""
    xp = get_namespace(V)
    norms = lambda v: xp.sqrt(xp.sum(v * v, axis=-1))  # noqa: E731
    wnorm = norms(w)
    basis = V[:, : j + 1]
    h = xp.matmul(basis, w[:, :, None])[:, :, 0]
    w = w - xp.matmul(h[:, None, :], basis)[:, 0]
    # the second pass, for the samples whose first pass cancelled most of w (zero h2 elsewhere: w unchanged)
    again = norms(w) ** 2 < REORTHOGONALISE_BELOW * wnorm ** 2
    h2 = xp.where(again[:, None], xp.matmul(basis, w[:, :, None])[:, :, 0], 0)
    w = w - xp.matmul(h2[:, None, :], basis)[:, 0]
    hnext = norms(w)
    h = h + h2
    if shifted:                         # A v_j = v_j − B v_j: the column e_j − h, the new vector −w⊥/‖w⊥‖
        h = -h
        h[:, j] += 1
        wnorm = xp.sqrt(xp.sum(h * h, axis=-1) + hnext * hnext)          # ||A v_j||
        w = -w
    col = xp.concatenate([h, hnext[:, None]], axis=1)
    col = xp.matmul(Q[:, : j + 2, : j + 2], col[:, :, None])[:, :, 0]   # the previous rotations
    den = xp.hypot(col[:, j], col[:, j + 1])
    safe = xp.where(den > 0, den, 1)
    c = xp.where(den > 0, col[:, j] / safe, 1)[:, None]
    s = xp.where(den > 0, col[:, j + 1] / safe, 0)[:, None]
    Q[:, j], Q[:, j + 1] = c * Q[:, j] + s * Q[:, j + 1], c * Q[:, j + 1] - s * Q[:, j]
    col[:, j], col[:, j + 1] = den, 0
    R[:, : j + 2, j] = col
    tiny = tiny_factor * wnorm
    usable = den > tiny                 # the rotated diagonal: zero means H is singular on this Krylov space
    xp.copyto(k, j + 1, where=live & usable)
    broke |= live & ~usable
    estimate = beta * xp.abs(Q[:, j + 1, 0])                 # the least-squares residual norm
    live &= usable & (hnext > tiny) & ~(estimate <= tol)
    V[:, j + 1] = xp.where(live[:, None], w / xp.where(hnext > 0, hnext, 1)[:, None], 0)
    return V, R, Q, k, live, broke


def least_squares_reference(R, Q, beta, k, used):
    """Reference of ``gmres_least_squares``: the cycle's update coefficients y ``(B, used)``: per sample, the
    upper-triangular ``R[:k, :k] y = beta·Q[:k, 0]`` (the rotated right-hand side), zero past ``k``. The unused
    columns become the identity and one batched triangular solve (``back_substitute``) takes all samples."""
    from .triangular_kernels import back_substitute_reference

    xp = get_namespace(R)
    usedcols = xp.arange(used)[None, :] < k[:, None]
    Rk = xp.where(usedcols[:, None, :], R[:, :used, :used], xp.eye(used, dtype=R.dtype))
    g = xp.where(usedcols, beta[:, None] * Q[:, :used, 0], xp.zeros((), dtype=R.dtype))
    return back_substitute_reference(Rk, g)


def least_squares_example(rng, dtype, size="small"):
    """A finished cycle of ``used`` steps: triangular R with a safe diagonal, rotations Q, samples stopping at
    different column counts (one at zero)."""
    batch, m, used = (5, 6, 4) if size == "small" else (1024, 30, 20)
    R = np.triu(rng.standard_normal((batch, m + 1, m))) + 3 * np.eye(m + 1, m)
    Q = rng.standard_normal((batch, m + 1, m + 1))
    k = rng.integers(0, used + 1, size=batch).astype(np.int64)
    k[0] = 0
    return R.astype(dtype), Q.astype(dtype), np.abs(rng.standard_normal(batch)).astype(dtype), k, used


def least_squares_traffic(R, Q, beta, k, used):
    """The used triangles and Q's first column read, y written."""
    return R.shape[0] * R.dtype.itemsize * (used * (used + 1) // 2 + 2 * used)


def example(rng, dtype, size="small"):
    """Step j of a cycle on random systems (j = 2 small; mid-cycle, j = m/2, for the bandwidth benchmark's large
    size); sample 1 stopped earlier (zero basis vectors, w = 0)."""
    batch, n, m = (4, 9, 5) if size == "small" else (1024, 1024, 20)
    j = 2 if size == "small" else m // 2
    V = np.zeros((batch, m + 1, n), dtype=dtype)
    basis, _ = np.linalg.qr(rng.standard_normal((batch, n, j + 1)))
    V[:, : j + 1] = np.swapaxes(basis, 1, 2)
    w = rng.standard_normal((batch, n)).astype(dtype)
    R = np.zeros((batch, m + 1, m), dtype=dtype)
    angles = rng.uniform(0, np.pi, size=(batch, j))
    Q = np.broadcast_to(np.eye(m + 1, dtype=dtype), (batch, m + 1, m + 1)).copy()
    for i in range(j):                                      # some earlier rotations
        c, s = np.cos(angles[:, i]), np.sin(angles[:, i])
        Qi, Qn = Q[:, i].copy(), Q[:, i + 1].copy()
        Q[:, i] = c[:, None] * Qi + s[:, None] * Qn
        Q[:, i + 1] = c[:, None] * Qn - s[:, None] * Qi
    live = np.ones(batch, dtype=bool)
    live[1] = False
    V[1], w[1] = 0, 0
    beta = np.abs(rng.standard_normal(batch)).astype(dtype) + 1
    tol = np.full(batch, 1e-3, dtype=dtype)
    k = np.full(batch, j, dtype=np.int64)
    return V, w, R, Q, beta, tol, k, live, np.zeros(batch, dtype=bool), j, 100 * float(np.finfo(dtype).eps), False


def shifted_example(rng, dtype, size="small"):
    """:func:`example` for ``shifted=True`` (``w`` as ``B v_j`` of the operator ``I − B``)."""
    return example(rng, dtype, size)[:-1] + (True,)


def traffic(V, w, R, Q, beta, tol, k, live, broke, j, tiny_factor, shifted=False):
    """Two reads of the j + 1 basis vectors (the dots, then the update; a second pass, where it runs, finds them
    in cache), w read and written, the new basis vector written; the small matrices are negligible."""
    row = V.shape[2] * V.dtype.itemsize
    return V.shape[0] * row * (2 * (j + 1) + 3)


_SIG = ("void({t}[:, :, :], {t}[:, :], {t}[:, :, :], {t}[:, :, :], {t}[:], {t}[:], int64[:], boolean[:], "
        "boolean[:], int64, float64, boolean)")
register_kernel(
    "arnoldi_step",
    reference=arnoldi_step_reference,
    numba_cpu="deqcore.linalg.gmres_kernels_numba:arnoldi_step_numba_cpu",
    numba_cuda="deqcore.linalg.gmres_kernels_numba:arnoldi_step_numba_cuda",
    cuda_ptx_targets=[("deqcore.linalg.gmres_kernels_numba:arnoldi_step_cuda_kernel", _SIG)],
    example="deqcore.linalg.gmres_kernels:example",
    traffic="deqcore.linalg.gmres_kernels:traffic",
)
register_kernel(
    "gmres_least_squares",
    reference=least_squares_reference,
    numba_cpu="deqcore.linalg.gmres_kernels_numba:least_squares_numba_cpu",
    example="deqcore.linalg.gmres_kernels:least_squares_example",
    traffic="deqcore.linalg.gmres_kernels:least_squares_traffic",
)
