"""Fused kernels of Broyden's low-rank inverse Jacobian H = −I + Σᵢ uᵢ vᵢᵀ (per sample, pairs in a ring of m slots).

One step needs H f (for the next step) and Hᵀ s (the new pair's v); both are one pass over the stored pairs
for the dot products and one for the sums, so a step makes two passes over U and V:

``broyden_dots(U, V, f, s, count) -> (a, c)``: aᵢ = vᵢ·f and cᵢ = uᵢ·s for the ``count[b]`` filled slots of each
sample b (zero beyond), in one pass over both rings.

``broyden_update(U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor) -> (y_next, s_next, U, V, count)``:
with H f = −f + Σ aᵢ uᵢ and Hᵀ s = −s + Σ cᵢ vᵢ, the good-Broyden update by Sherman–Morrison,
u = (s − H d)/(sᵀ H d) = −H f/(vᵀ d), v = Hᵀ s (d = f − f_old, since H f_old = −s), goes into the ring (a zero
pair instead where the denominator is negligible or f is not finite), H f is updated to the new H, and the next
step s_next = −H f and iterate y_next = y + s_next are written; U, V and ``count`` are updated in place.
``broyden_step(U, V, y, f, f_old, s, count, k, limited, reset_factor)`` is the two in one call, what the solvers
use: on the CPU one loop over the samples that runs both passes over a sample's pairs back to back (the second
finds them in cache); on a GPU the two kernels.

``limited=False`` (:class:`~deqcore.root.Broyden`): slot k mod m, overwriting the oldest pair (its term leaves
H f) once the ring is full; ``count`` counts the filled slots. ``limited=True``
(:class:`~deqcore.root.LimitedMemoryBroyden`): slot ``count`` and ``count`` counts the stored pairs; a sample
restarts from H = −I (its ring cleared, s_next = f) when ``count`` reached m or its residual grew by more than
``reset_factor`` in one step. Every decision is per sample, on the device: no host synchronisation.

>>> import numpy as np
>>> U, V, count = np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), np.zeros(1, np.int64)
>>> y, f_old, f = np.zeros((1, 3)), np.array([[1.0, 2.0, 0.0]]), np.array([[0.5, 0.0, 1.0]])
>>> s = f_old                                               # the first step: s = −H f_old with H = −I
>>> a, c = broyden_dots_reference(U, V, f, s, count)
>>> y_next, s_next, U, V, count = broyden_update_reference(U, V, y, f, f_old, s, a, c, count, 0, False, 1e3)
>>> H = -np.eye(3) + U[0].T @ V[0]                          # the updated inverse Jacobian
>>> bool(np.allclose(H @ (f - f_old)[0], s[0])), bool(np.allclose(s_next, -H @ f[0])), count
(True, True, array([1]))
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace, register_kernel

__all__ = ["broyden_dots_reference", "broyden_update_reference", "broyden_step_reference", "broyden_dots",
           "broyden_update", "broyden_step"]


def _bdot(a, b):
    """Row-wise inner products of (B, n) arrays."""
    return (a * b).sum(axis=1)


def broyden_dots_reference(U, V, f, s, count):
    """Reference (array-namespace) implementation."""
    xp = get_namespace(U)
    live = xp.arange(U.shape[1])[None, :] < count[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        a = xp.matmul(V, f[:, :, None])[:, :, 0]
        c = xp.matmul(U, s[:, :, None])[:, :, 0]
    return xp.where(live, a, 0).astype(U.dtype), xp.where(live, c, 0).astype(U.dtype)


def broyden_update_reference(U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor):
    """Reference (array-namespace) implementation; updates ``U``, ``V`` and ``count`` in place and returns
    ``(y_next, s_next, U, V, count)``."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):    # non-finite samples are expected
        return _update_reference(get_namespace(U), U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor)


def _update_reference(xp, U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor):
    batch, m, _ = U.shape
    rows = xp.arange(batch)
    tiny = float(np.finfo(U.dtype).tiny)
    hf = -f + xp.matmul(a[:, None, :], U)[:, 0]                 # H f   (a, c are zero beyond count)
    ht = -s + xp.matmul(c[:, None, :], V)[:, 0]                 # Hᵀ s: the roles of U and V swap
    d = f - f_old
    denom = _bdot(ht, d)
    scale = xp.maximum(xp.sqrt(_bdot(s, s)) * xp.sqrt(_bdot(d, d)), tiny)   # (the product of squares overflows)
    usable = xp.isfinite(denom) & (xp.abs(denom) > 1e-12 * scale) & xp.isfinite(f).all(axis=1)
    u = xp.where(usable[:, None], -hf / xp.where(usable, denom, 1)[:, None], 0)
    v = xp.where(usable[:, None], ht, 0)
    vf = xp.where(usable, _bdot(ht, f), 0)
    if limited:
        slot = xp.minimum(count, m - 1)
        growth = xp.sqrt(_bdot(f, f) / xp.maximum(_bdot(f_old, f_old), tiny))
        reset = (count >= m) | (growth > reset_factor)
        drop = 0
    else:
        slot = k % m
        reset = xp.zeros(batch, dtype=bool)
        drop = xp.where(count >= m, a[:, slot], 0)[:, None] * U[:, slot]      # the oldest pair leaves H f
    s_next = xp.where(reset[:, None], f, -((hf - drop) + u * vf[:, None]))
    keep = ~reset[:, None]
    U[rows, slot] = xp.where(keep, u, 0)
    V[rows, slot] = xp.where(keep, v, 0)
    if limited:
        xp.copyto(U, 0, where=reset[:, None, None])
        xp.copyto(V, 0, where=reset[:, None, None])
        count[...] = xp.where(reset, 0, count + usable)
    else:
        count[...] = xp.minimum(count + 1, m)
    return y + s_next, s_next, U, V, count


def broyden_step_reference(U, V, y, f, f_old, s, count, k, limited, reset_factor):
    """Reference implementation: ``broyden_dots`` then ``broyden_update``."""
    a, c = broyden_dots_reference(U, V, f, s, count)
    return broyden_update_reference(U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor)


def broyden_dots(U, V, f, s, count):
    """The registered implementation for the namespace of ``U``."""
    from ..backend import get_kernel

    return get_kernel("broyden_dots", get_namespace(U))(U, V, f, s, count)


def broyden_update(U, V, y, f, f_old, s, a, c, count, k, limited, reset_factor):
    """The registered implementation for the namespace of ``U``."""
    from ..backend import get_kernel

    return get_kernel("broyden_update", get_namespace(U))(U, V, y, f, f_old, s, a, c, count, k, limited,
                                                          reset_factor)


def broyden_step(U, V, y, f, f_old, s, count, k, limited, reset_factor):
    """The registered implementation for the namespace of ``U``."""
    from ..backend import get_kernel

    return get_kernel("broyden_step", get_namespace(U))(U, V, y, f, f_old, s, count, k, limited, reset_factor)


def _sizes(size):
    return (6, 5, 37) if size == "small" else (256, 30, 256)


def _ring(rng, dtype, batch, m, n, count):
    """A ring whose slots beyond ``count`` are empty (zero), as the solvers keep it."""
    U = rng.standard_normal((batch, m, n)).astype(dtype)
    V = (rng.standard_normal((batch, m, n)) / n).astype(dtype)
    empty = np.arange(m)[None, :] >= count[:, None]
    U[empty] = 0
    V[empty] = 0
    return U, V


def dots_example(rng, dtype, size="small"):
    batch, m, n = (4, 3, 37) if size == "small" else _sizes(size)
    count = rng.integers(0, m + 1, size=batch).astype(np.int64)
    count[:2] = (0, m)
    U, V = _ring(rng, dtype, batch, m, n, count)
    f, s = (rng.standard_normal((2, batch, n))).astype(dtype)
    return U, V, f, s, count


def update_example(rng, dtype, size="small"):
    """LimitedMemoryBroyden's case (the tests cover the ring's, and non-finite values, too): samples with room,
    one at the threshold, one whose residual blew up, one with no change of residual and one with a zero step
    (no usable pair either)."""
    batch, m, n = _sizes(size)
    count = rng.integers(0, m, size=batch).astype(np.int64)
    count[1] = m
    U, V = _ring(rng, dtype, batch, m, n, count)
    y, f, f_old, s = (rng.standard_normal((4, batch, n))).astype(dtype)
    f[2] *= 1e4
    f_old[3] = f[3]
    s[4] = 0
    a, c = broyden_dots_reference(U, V, f, s, count)
    return U, V, y, f, f_old, s, a, c, count, 7, True, 1e3


def step_example(rng, dtype, size="small"):
    """The ring's case (the tests cover LimitedMemoryBroyden's too): one sample with room, full rings that
    overwrite their oldest pair, one with a zero step (no usable pair: the slot is cleared)."""
    batch, m, n = (3, 4, 37) if size == "small" else _sizes(size)
    count = np.full(batch, m, dtype=np.int64)
    count[0] = m - 2
    U, V = _ring(rng, dtype, batch, m, n, count)
    y, f, f_old, s = (rng.standard_normal((4, batch, n))).astype(dtype)
    s[2] = 0
    return U, V, y, f, f_old, s, count, 6, False, np.inf


def _filled_rows(U, count):
    """The number of filled ring slots over the batch, as a Python int, for NumPy or CuPy ``count``."""
    xp = get_namespace(count)
    return int(xp.minimum(count, U.shape[1]).sum())


def dots_traffic(U, V, f, s, count):
    """Read the filled slots of both rings, f and s; write a and c."""
    item = U.dtype.itemsize
    return 2 * _filled_rows(U, count) * U.shape[2] * item + f.nbytes + s.nbytes + 2 * U.shape[0] * U.shape[1] * item


def update_traffic(U, V, y, f, f_old, s, a, c, count, *scalars):
    """Read the filled slots of both rings, y, f, f_old, s, a, c and count; write one slot of each ring, y_next,
    s_next and count (resets, rare, are not counted)."""
    batch, m, n = U.shape
    item = U.dtype.itemsize
    return (2 * _filled_rows(U, count) * n * item + 4 * y.nbytes + a.nbytes + c.nbytes + 2 * count.nbytes
            + 2 * batch * n * item + 2 * y.nbytes)


def step_traffic(U, V, y, f, f_old, s, count, *scalars):
    """Both kernels' traffic less a and c (on the CPU they stay in cache; on a GPU they are a small part)."""
    batch, m, n = U.shape
    item = U.dtype.itemsize
    return 4 * _filled_rows(U, count) * n * item + 6 * y.nbytes + 2 * count.nbytes + 2 * batch * n * item


_MOD = "deqcore.root.broyden_kernels_numba"
_DOTS_SIG = "void({t}[:, :, :], {t}[:, :, :], {t}[:, :], {t}[:, :], int64[:], {t}[:, :], {t}[:, :])"
_UPDATE_SIG = ("void({t}[:, :, :], {t}[:, :, :], {t}[:, :], {t}[:, :], {t}[:, :], {t}[:, :], {t}[:, :], {t}[:, :], "
               "int64[:], int64, boolean, float64, float64, float64[:, :, :], {t}[:, :], {t}[:, :])")
register_kernel(
    "broyden_dots",
    reference=broyden_dots_reference,
    numba_cpu=f"{_MOD}:broyden_dots_numba_cpu",
    numba_cuda=f"{_MOD}:broyden_dots_numba_cuda",
    cuda_ptx_targets=[(f"{_MOD}:broyden_dots_cuda_kernel", _DOTS_SIG)],
    example="deqcore.root.broyden_kernels:dots_example",
    traffic="deqcore.root.broyden_kernels:dots_traffic",
)
register_kernel(
    "broyden_update",
    reference=broyden_update_reference,
    numba_cpu=f"{_MOD}:broyden_update_numba_cpu",
    numba_cuda=f"{_MOD}:broyden_update_numba_cuda",
    cuda_ptx_targets=[(f"{_MOD}:broyden_update_cuda_kernel", _UPDATE_SIG)],
    example="deqcore.root.broyden_kernels:update_example",
    traffic="deqcore.root.broyden_kernels:update_traffic",
)
register_kernel(
    "broyden_step",
    reference=broyden_step_reference,
    numba_cpu=f"{_MOD}:broyden_step_numba_cpu",
    numba_cuda=f"{_MOD}:broyden_step_numba_cuda",
    cuda_ptx_targets=[(f"{_MOD}:broyden_dots_cuda_kernel", _DOTS_SIG),
                      (f"{_MOD}:broyden_update_cuda_kernel", _UPDATE_SIG)],
    example="deqcore.root.broyden_kernels:step_example",
    traffic="deqcore.root.broyden_kernels:step_traffic",
)
