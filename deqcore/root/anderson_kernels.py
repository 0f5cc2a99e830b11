"""Fused kernel of Anderson mixing: one whole step of the ring update, the small solve and the mixing.

``anderson_step(G, F, H, y, f, slot, count, beta, ridge, floor) -> (y_new, G, F, H)`` takes each sample's
ring of mapped iterates G (B, m, n), residuals F (B, m, n), their Gram matrix H (B, m, m), the current iterate
y (B, n) and its residual f (B, n). In place it stores G[:, slot] = y + beta·f and F[:, slot] = f and sets
row and column ``slot`` of H to ⟨F_i, f⟩ for the ``count`` slots in use (slots 0 … count − 1; the others are
never read nor written). Then it solves (Hc + λI) w = 1 per sample for the used block Hc, with
λ = ridge·trace(Hc)/count + floor (scaled to the Gram matrix, never absolute), in float64, takes α = w / Σw
(so Σα = 1; a sample whose system is singular or non-finite gets α = e_slot, a plain step from the newest
iterate) and returns y_new = Σ α_i G_i. The arrays updated in place are returned too.

H must be symmetric (the kernel keeps it so; the CPU version reads only its upper triangle). The reference
runs six array operations and NumPy's batched solve (which costs far more than the arithmetic for these tiny
systems); the Numba versions make one pass over each sample's ring: write the slot and form the ``count``
dot products, solve the small system, mix. The CPU version eliminates the systems of a block of up to 32
samples side by side, the sample index innermost so that every elimination step is one vectorised loop, without
pivoting (they are positive definite; a sample that fails there is solved again with partial pivoting), and
sums the dot products and the mixing in the arrays' dtype, as the reference's matmuls do (for float32 rings:
8 SIMD lanes and no conversions, 1.3-1.5x faster than float64 sums); the CUDA version sums
in float64 and eliminates each system with partial pivoting in static shared memory, so histories are capped
at :data:`HISTORY_CAP` slots there.

>>> import numpy as np
>>> G, F, H = np.zeros((1, 3, 2)), np.zeros((1, 3, 2)), np.zeros((1, 3, 3))
>>> y_new, G, F, H = anderson_step_reference(G, F, H, np.array([[1.0, 2.0]]), np.array([[0.5, -1.0]]),
...                                          0, 1, 1.0, 0.0, 0.0)
>>> y_new                                      # one slot in use: a plain step y + beta·f
array([[1.5, 1. ]])
>>> H[0]                                       # row and column 0 hold ⟨f, f⟩; unused slots untouched
array([[1.25, 0.  , 0.  ],
       [0.  , 0.  , 0.  ],
       [0.  , 0.  , 0.  ]])
>>> anderson_weights_reference(np.array([[[2.0, 0.0], [0.0, 1.0]]]), 1, 0.0, 0.0)
array([[0.33333333, 0.66666667]])
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace, register_kernel

__all__ = ["anderson_step_reference", "anderson_step", "anderson_weights_reference", "HISTORY_CAP"]

#: the most history slots the CUDA kernel's static shared memory holds (``Anderson.history_size`` ≤ this)
HISTORY_CAP = 32


def anderson_weights_reference(gram, newest, ridge, floor):
    """α (B, c) with Σα = 1 from the Gram matrices ``gram`` (B, c, c): (H + λI) w = 1 solved in float64,
    α = w/Σw, and α = e_newest for a sample whose system is singular or non-finite."""
    xp = get_namespace(gram)
    batch, count, _ = gram.shape
    gram = gram.astype(xp.float64)
    lam = ridge * xp.trace(gram, axis1=1, axis2=2) / count + floor
    system = gram + lam[:, None, None] * xp.eye(count, dtype=xp.float64)
    rhs = xp.ones((batch, count, 1), dtype=xp.float64)
    try:
        w = xp.linalg.solve(system, rhs)[:, :, 0]
    except np.linalg.LinAlgError:  # NumPy raises for the whole batch: solve the samples one by one
        w = xp.full((batch, count), xp.nan)
        for b in range(batch):
            try:
                w[b] = xp.linalg.solve(system[b], rhs[b])[:, 0]
            except np.linalg.LinAlgError:
                pass
    total = w.sum(axis=1, keepdims=True)
    ok = xp.isfinite(total) & (total != 0)
    alpha = w / xp.where(ok, total, 1)
    good = ok[:, 0] & xp.isfinite(alpha).all(axis=1)
    fallback = xp.zeros((batch, count), dtype=xp.float64)
    fallback[:, newest] = 1
    return xp.where(good[:, None], alpha, fallback)


def anderson_step_reference(G, F, H, y, f, slot, count, beta, ridge, floor):
    """Reference (array-namespace) implementation; updates ``G``, ``F`` and ``H`` in place."""
    xp = get_namespace(G)
    G[:, slot] = y + beta * f
    F[:, slot] = f
    column = xp.matmul(F[:, :count], f[:, :, None])[:, :, 0]           # ⟨F_i, f⟩ for the used slots
    H[:, slot, :count] = column
    H[:, :count, slot] = column
    alpha = anderson_weights_reference(H[:, :count, :count], slot, ridge, floor).astype(G.dtype)
    y_new = xp.matmul(alpha[:, None, :], G[:, :count])[:, 0]
    return y_new, G, F, H


def anderson_step(G, F, H, y, f, slot, count, beta, ridge, floor):
    """The registered implementation for the namespace of ``G``."""
    from ..backend import get_kernel

    return get_kernel("anderson_step", get_namespace(G))(G, F, H, y, f, slot, count, beta, ridge, floor)


def example(rng, dtype, size="small"):
    """A ring not yet full whose unused slots hold NaN (reading one would show), one sample whose residual
    holds NaN (falls back to a plain step) and one whose residual is zero (a zero Gram matrix)."""
    batch, m, n, count = (5, 6, 45, 4) if size == "small" else (1024, 10, 256, 10)
    G = rng.standard_normal((batch, m, n)).astype(dtype)
    F = rng.standard_normal((batch, m, n)).astype(dtype)
    H = F @ F.transpose(0, 2, 1)
    H = (0.5 * (H + H.transpose(0, 2, 1))).astype(dtype)       # exactly symmetric, as the kernel keeps it
    G[:, count:] = F[:, count:] = np.nan
    H[:, count:, :] = H[:, :, count:] = np.nan
    y = rng.standard_normal((batch, n)).astype(dtype)
    f = (0.1 * rng.standard_normal((batch, n))).astype(dtype)
    if size == "small":
        f[1, 3] = np.nan
        f[2] = 0.0
        F[2] = 0.0
        H[2, :count, :count] = 0.0
    floor = float(np.sqrt(np.finfo(dtype).tiny))
    return G, F, H, y, f, count - 1, count, 1.0, 1e-8, floor


def traffic(G, F, H, y, f, slot, count, *scalars):
    """Read y, f, the used rows of F and G and the used block of H; write both slot rows, H's row and column
    ``slot`` and y_new."""
    batch, _, n = G.shape
    return G.dtype.itemsize * batch * (n * (2 + 2 * count + 2 + 1) + count * count + 2 * count)


_SIG = ("void({t}[:, :, :], {t}[:, :, :], {t}[:, :, :], {t}[:, :], {t}[:, :], int64, int64, float64, "
        "float64, float64, {t}[:, :])")
register_kernel(
    "anderson_step",
    reference=anderson_step_reference,
    numba_cpu="deqcore.root.anderson_kernels_numba:anderson_step_numba_cpu",
    numba_cuda="deqcore.root.anderson_kernels_numba:anderson_step_numba_cuda",
    cuda_ptx_targets=[("deqcore.root.anderson_kernels_numba:anderson_step_cuda_kernel", _SIG)],
    example="deqcore.root.anderson_kernels:example",
    traffic="deqcore.root.anderson_kernels:traffic",
)
