"""Helpers shared by the tests: finite differences, tolerances by dtype, the contractive test maps, solver
lists and moving arguments between NumPy and CuPy."""

from __future__ import annotations

import numpy as np

import deqcore as dq
from deqcore import nn
from deqcore.backend import to_host

#: every fixed-point / root solver, and their test ids
FIXED_POINT_SOLVERS = [dq.FixedPointIteration(), dq.Anderson(), dq.Broyden(), dq.LimitedMemoryBroyden(),
                       dq.NewtonRaphson(), dq.TrustRegion()]
FIXED_POINT_IDS = [type(s).__name__ for s in FIXED_POINT_SOLVERS]
#: the explicit ODE methods
EXPLICIT_ODE_SOLVERS = [dq.Tsit5(), dq.VCAB3(), dq.VCABM3()]


def tolerance(dtype, float32: float, float64: float) -> float:
    """``float32`` for single precision, ``float64`` otherwise."""
    return float32 if np.dtype(dtype) == np.float32 else float64


def fd_gradient(loss, x, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of the scalar ``loss(x)`` with respect to each element of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = eps
        grad[idx] = (loss(x + step) - loss(x - step)) / (2 * eps)
    return grad


def fd_jvp(fn, x, v, eps: float = 1e-6):
    """Central finite difference of ``fn`` at ``x`` along ``v``: ≈ J(x) v."""
    return (fn(x + eps * v) - fn(x - eps * v)) / (2 * eps)


def fd_jvp_tree(fn, x, v, eps: float = 1e-6):
    """:func:`fd_jvp` on parameter trees: ``x`` and ``v`` are trees of the same structure (a tuple of trees for
    several arguments), ``fn(x)`` returns a tree; the result is that tree's directional derivative along ``v``."""
    plus = fn(nn.tree_map(lambda a, d: a + eps * d, x, v))
    minus = fn(nn.tree_map(lambda a, d: a - eps * d, x, v))
    return nn.tree_map(lambda a, b: (a - b) / (2 * eps), plus, minus)


def contractive_map(rng, batch, n, dtype=np.float64, contraction=0.8, xp=np, spectral=False):
    """z ↦ tanh(z Wᵀ + x) for a batch ``(batch, n)``, with ‖W‖₂ = ``contraction`` (a contraction below 1),
    or with ``spectral`` W's spectral radius = ``contraction`` (above 1: a hard map for plain iteration)."""
    W = rng.standard_normal((n, n))
    if spectral:
        W *= contraction / np.abs(np.linalg.eigvals(W)).max()
    else:
        W *= contraction / max(np.linalg.norm(W, 2), 1e-12)
    x = rng.standard_normal((batch, n))
    W, x = xp.asarray(W.astype(dtype)), xp.asarray(x.astype(dtype))
    return lambda z: xp.tanh(z @ W.T + x)


def tanh_fixed_point(W, u, iters: int = 500) -> np.ndarray:
    """The fixed point of z ↦ tanh(z Wᵀ + u) for rows ``u`` (shape ``(batch, n)``) by plain iteration from zero:
    a reference computed without deqcore's solvers (``iters`` steps, enough for ‖W‖₂ well below 1)."""
    z = np.zeros(np.shape(u))
    for _ in range(iters):
        z = np.tanh(z @ W.T + u)
    return z


def steady_state_rhs(rng, batch, n, contraction=0.8, xp=np):
    """The ODE right-hand side f(z) − z of :func:`contractive_map` (its steady state is the fixed point)."""
    f = contractive_map(rng, batch, n, np.float64, contraction, xp)
    return lambda t, z: f(z) - z


def unrolled(f, x, z0, steps: int):
    """z after ``steps`` plain iterations z = f(z, x) (a reference that autograd can differentiate)."""
    z = z0
    for _ in range(steps):
        z = f(z, x)
    return z


def on(xp, args):
    """Fresh copies of ``args`` with the arrays on ``xp`` (other values as they are): kernels may write into
    their arguments."""
    return [xp.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]


def host(out):
    """``out`` (an array or a tuple of them) as NumPy arrays."""
    if isinstance(out, tuple):
        return tuple(host(o) for o in out)
    return to_host(out.copy_to_host() if hasattr(out, "copy_to_host") else out)


def assert_same(out, ref, dtype=np.float64, float32=1e-5, float64=1e-12):
    """Outputs equal on the host: integers and booleans exactly, floats to the dtype's tolerance."""
    tol = tolerance(dtype, float32, float64)
    outs = host(out if isinstance(out, tuple) else (out,))
    refs = host(ref if isinstance(ref, tuple) else (ref,))
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape
        if o.dtype == bool or o.dtype.kind in "iu":
            np.testing.assert_array_equal(o, r)
        else:
            np.testing.assert_allclose(o, r, rtol=tol, atol=tol)
