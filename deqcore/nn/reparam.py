"""How a layer's weight matrix is made from its parameters: plainly, by weight normalisation
(Salimans & Kingma 2016) or by spectral normalisation (Miyato et al. 2018) with a power iteration in state.

Each scheme gives the effective weight, its exact pullback to the raw parameters and its tangent. The weight
is read as a matrix with one row per output (``(out, -1)``), so Dense and Conv2d share the code.

Spectral normalisation uses σ(W) = ‖Wᵀu‖ with ``u`` (the left singular-vector estimate) taken from the
state: a smooth function of W whose gradient is exactly u vᵀ with v = Wᵀu/σ, so the derivatives are exact
for the function computed. In training mode each call returns one more power-iteration step of ``u`` in the
new state; calls with the same state use the same ``u`` (as a DEQ's fixed-point iterations need).
"""

from __future__ import annotations

import threading

import numpy as np

from ..backend import get_namespace

__all__ = ["PlainWeight", "WeightNorm", "SpectralNorm", "weight_scheme", "shared_weights"]

_POWER_ITERATIONS_AT_INIT = 30


def _rows(w):
    return w.reshape(w.shape[0], -1)


def _normalise(v, eps=1e-12):
    xp = get_namespace(v)
    return v / xp.maximum(xp.linalg.norm(v), eps)


class _Shared(threading.local):
    memo = None     # inside shared_weights(): id(weight_v) -> (weight_v, weight_g, the parts and the weight)


_SHARED = _Shared()


class shared_weights:
    """``with shared_weights(): ...``: inside the block a weight normalisation of the same parameter arrays
    (the same objects) is computed once and its result reused, bit for bit the value computed again. A DEQ's
    forward binds f to its parameters (the weight) and then its VJP at z* (the weight and its pullback): one
    normalisation instead of two. Blocks nest (the outermost one's results are shared). The block must not
    change the parameter arrays in place (a model's forward does not).

    >>> import numpy as np
    >>> from deqcore import nn
    >>> layer = nn.Dense(3, 3, weight_norm=True)
    >>> params, state = nn.setup(np.random.default_rng(0), layer)
    >>> with shared_weights():
    ...     w1, _ = layer._scheme.weight(params, state)
    ...     w2, _ = layer._scheme.weight(params, state)
    >>> w1 is w2, bool(np.array_equal(w1, layer._scheme.weight(params, state)[0]))
    (True, True)
    """

    __slots__ = ("outer",)

    def __enter__(self):
        self.outer = _SHARED.memo
        if self.outer is None:
            _SHARED.memo = {}
        return self

    def __exit__(self, *exc):
        if self.outer is None:
            _SHARED.memo = None
        return False


class PlainWeight:
    """The weight is the parameter ``weight``."""

    def init(self, w, rng):
        return {"weight": w}, {}

    def weight(self, params, state):
        return params["weight"], state

    def weight_vjp(self, params, state):
        return params["weight"], lambda dw: {"weight": dw}, state

    def weight_jvp(self, params, state, dparams):
        return params["weight"], None if dparams is None else dparams["weight"]


class WeightNorm:
    """W = g · V / ‖V‖ row-wise; parameters ``weight_v`` (like W) and ``weight_g`` (one per output). A zero row
    of V gives a zero row of W (‖V‖ taken as 1 there), with finite gradients."""

    def init(self, w, rng):
        return {"weight_v": w, "weight_g": np.linalg.norm(_rows(w), axis=1)}, {}

    @staticmethod
    def _parts(params):
        v, g = params["weight_v"], params["weight_g"]
        xp = get_namespace(v)
        shape = (-1,) + (1,) * (v.ndim - 1)
        norm = xp.sqrt(xp.sum(_rows(v) ** 2, axis=1)).reshape(shape)
        norm = xp.where(norm > 0, norm, xp.ones((), dtype=norm.dtype))   # a zero row of v: a zero row of W, not NaN
        return v, g.reshape(shape), norm, shape

    def _weight_parts(self, params):
        """``(w, v, g, norm, shape)``: the weight and :meth:`_parts`, computed once per parameter arrays
        inside a :class:`shared_weights` block."""
        memo = _SHARED.memo
        if memo is not None:
            v, g = params["weight_v"], params["weight_g"]
            hit = memo.get(id(v))
            if hit is not None and hit[0] is v and hit[1] is g:
                return hit[2]
        parts = self._parts(params)
        v_rows, g_rows, norm, shape = parts
        out = (g_rows * v_rows / norm, v_rows, g_rows, norm, shape)
        if memo is not None:
            memo[id(v)] = (v, g, out)
        return out

    def weight(self, params, state):
        return self._weight_parts(params)[0], state

    def weight_vjp(self, params, state):
        w, v, g, norm, shape = self._weight_parts(params)

        def pullback(dw):
            xp = get_namespace(dw)
            inner = xp.sum(_rows(dw * v), axis=1).reshape(shape) / norm  # = ∂L/∂g
            dv = (g / norm) * (dw - v * (inner / norm))
            return {"weight_v": dv, "weight_g": inner.reshape(-1)}

        return w, pullback, state

    def weight_jvp(self, params, state, dparams):
        w, v, g, norm, shape = self._weight_parts(params)
        if dparams is None:
            return w, None
        xp = get_namespace(v)
        dv, dg = dparams["weight_v"], dparams["weight_g"].reshape(shape)
        radial = xp.sum(_rows(v * dv), axis=1).reshape(shape) / norm ** 2
        return w, dg * v / norm + (g / norm) * (dv - v * radial)


class SpectralNorm:
    """W / σ with σ = ‖Wᵀu‖ ≈ the largest singular value; ``u`` and ``training`` live in the state. σ = 0 (a
    zero weight) is taken as 1: the weight stays zero, with finite gradients."""

    def init(self, w, rng):
        m = _rows(w)
        u = _normalise(rng.standard_normal(m.shape[0]))
        for _ in range(_POWER_ITERATIONS_AT_INIT):
            u = _normalise(m @ _normalise(m.T @ u))
        return {"weight": w}, {"u": u, "training": True}

    @staticmethod
    def _parts(params, state):
        w, u = params["weight"], state["u"]
        xp = get_namespace(w)
        t = _rows(w).T @ u
        sigma = xp.sqrt(t @ t)
        sigma = xp.where(sigma > 0, sigma, xp.ones((), dtype=sigma.dtype))   # a zero weight stays zero, not NaN
        return w, u, t / sigma, sigma

    @staticmethod
    def _next_state(w, v, state):
        if not state.get("training", True):
            return state
        return {**state, "u": _normalise(_rows(w) @ v)}

    def weight(self, params, state):
        w, u, v, sigma = self._parts(params, state)
        return w / sigma, self._next_state(w, v, state)

    def weight_vjp(self, params, state):
        w, u, v, sigma = self._parts(params, state)

        def pullback(dw):
            xp = get_namespace(dw)
            inner = xp.sum(dw * w) / sigma ** 2
            return {"weight": dw / sigma - inner * xp.outer(u, v).reshape(w.shape)}

        return w / sigma, pullback, self._next_state(w, v, state)

    def weight_jvp(self, params, state, dparams):
        w, u, v, sigma = self._parts(params, state)
        if dparams is None:
            return w / sigma, None
        dw = dparams["weight"]
        dsigma = u @ (_rows(dw) @ v)
        return w / sigma, dw / sigma - w * (dsigma / sigma ** 2)


def weight_scheme(weight_norm: bool, spectral_norm: bool):
    """The scheme object for a layer's options (both at once is an error)."""
    for name, value in (("weight_norm", weight_norm), ("spectral_norm", spectral_norm)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    if weight_norm and spectral_norm:
        raise ValueError("weight_norm and spectral_norm cannot both be True; choose one")
    if weight_norm:
        return WeightNorm()
    if spectral_norm:
        return SpectralNorm()
    return PlainWeight()
