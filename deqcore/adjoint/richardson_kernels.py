"""Fused kernel of the adjoint's plain iteration λ ← g + ∂f/∂zᵀ λ (the first phase of the default accurate
:class:`~deqcore.adjoint.SteadyStateAdjoint`).

``richardson_step(trial, u, g, lam, r, rnorm, tol, going, slow, done, rate, next_trial, counts)`` takes the
VJP ``u = ∂f/∂zᵀ trial`` of this step's trial iterate and, for every row still iterating (``going``), in one
pass: the new residual r' = g + u − trial and its L2 norm; a finite norm takes the step (λ ← trial, r ← r',
``rnorm`` ← ‖r'‖); the row converges (``done``) when ‖r'‖ ≤ ``tol``, and slows down (``slow``: it waits for
GMRES) when ‖r'‖ > ``rate``·‖r‖ or its residual is not finite (λ and r then keep their last values). It then
writes the next trial iterate λ + r of every row still iterating (λ for the others) into ``next_trial`` and
the numbers of rows still iterating and waiting into ``counts`` (int64, two entries: the one host read a step).
The NumPy form is about fifteen array operations per step (each a pass over memory, and on a GPU a launch).

>>> import numpy as np
>>> trial, u, g = np.ones((2, 3)), np.full((2, 3), 0.5), np.ones((2, 3))
>>> lam, r, rnorm, tol = np.zeros((2, 3)), np.ones((2, 3)), np.full(2, 3 ** 0.5), np.array([0.0, 1.0])
>>> going, slow, done = np.ones(2, bool), np.zeros(2, bool), np.zeros(2, bool)
>>> out = richardson_step_reference(trial, u, g, lam, r, rnorm, tol, going, slow, done, 0.5, np.empty((2, 3)),
...                                 np.zeros(2, np.int64))
>>> out[2].round(3).tolist(), out[3].tolist(), out[5].tolist(), out[7].tolist()  # ‖r'‖: row 1 converged
([0.866, 0.866], [True, False], [False, True], [1, 0])
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace, register_kernel

__all__ = ["richardson_step_reference"]


def richardson_step_reference(trial, u, g, lam, r, rnorm, tol, going, slow, done, rate, next_trial, counts):
    """Reference (array-namespace) implementation; updates ``lam``, ``r``, ``rnorm``, ``going``, ``slow``,
    ``done``, ``next_trial`` and ``counts`` in place and returns them."""
    xp = get_namespace(trial)
    r_new = g + u
    r_new -= trial
    new = xp.sqrt(xp.einsum("ij,ij->i", r_new, r_new)).astype(rnorm.dtype, copy=False)
    take = going & xp.isfinite(new)
    faster = new.astype(np.float64) <= rate * rnorm.astype(np.float64)
    slow |= going & ~(take & faster)
    xp.copyto(lam, trial, where=take[:, None])
    xp.copyto(r, r_new, where=take[:, None])
    xp.copyto(rnorm, new, where=take)
    done |= take & (rnorm <= tol)
    slow &= ~done
    going &= ~done & ~slow
    next_trial[...] = xp.where(going[:, None], lam + r, lam)
    counts[0] = xp.count_nonzero(going)
    counts[1] = xp.count_nonzero(slow)
    return lam, r, rnorm, going, slow, done, next_trial, counts


def example(rng, dtype, size="small"):
    """Rows that converge, keep going, slow down, hold a non-finite VJP, and rows already done or waiting."""
    batch, n = (12, 37) if size == "small" else (4096, 256)
    lam = rng.standard_normal((batch, n)).astype(dtype)
    r = (0.1 * rng.standard_normal((batch, n))).astype(dtype)
    trial = lam + r
    g = rng.standard_normal((batch, n)).astype(dtype)
    # u chosen so the new residual is r scaled by a factor per row: 0.1 (fast), 0.7 (slow at rate 0.5), 1e-6
    factor = rng.choice([0.1, 0.7, 1e-6], size=(batch, 1))
    u = (trial - g + factor * r).astype(dtype)
    u[3, 5] = np.nan                                                # a non-finite VJP: the row waits, unchanged
    rnorm = np.linalg.norm(r.astype(np.float64), axis=1).astype(dtype)
    tol = np.full(batch, 1e-4, dtype=dtype) * rnorm
    going = np.ones(batch, dtype=bool)
    slow = np.zeros(batch, dtype=bool)
    done = np.zeros(batch, dtype=bool)
    going[0], done[0] = False, True                                 # already converged
    going[1], slow[1] = False, True                                 # waiting for GMRES
    return (trial, u, g, lam, r, rnorm, tol, going, slow, done, 0.5, np.empty_like(lam),
            np.zeros(2, dtype=np.int64))


def traffic(trial, u, g, lam, r, rnorm, tol, going, slow, done, rate, next_trial, counts):
    """Read trial, u and g, write λ, r and the next trial (every row iterating: its worst case)."""
    return 6 * trial.nbytes


_SIG = ("void({t}[:, :], {t}[:, :], {t}[:, :], {t}[:, :], {t}[:, :], {t}[:], {t}[:], boolean[:], boolean[:], "
        "boolean[:], float64, {t}[:, :], int64[:])")
register_kernel(
    "richardson_step",
    reference=richardson_step_reference,
    numba_cpu="deqcore.adjoint.richardson_kernels_numba:richardson_step_numba_cpu",
    numba_cuda="deqcore.adjoint.richardson_kernels_numba:richardson_step_numba_cuda",
    cuda_ptx_targets=[("deqcore.adjoint.richardson_kernels_numba:richardson_step_cuda_kernel", _SIG)],
    example="deqcore.adjoint.richardson_kernels:example",
    traffic="deqcore.adjoint.richardson_kernels:traffic",
)
