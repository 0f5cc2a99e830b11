"""Functional optimisers with explicit state, gradient clipping and a learning-rate schedule.

An optimiser is a frozen dataclass of settings; ``state = opt.init(params)`` and
``params, state = opt.update(grads, state, params)``. ``lr`` is a number or a schedule ``step -> lr``
(step counts from 0). All arithmetic stays on the parameters' device.

A gradient holding NaN or infinity is not applied: ``update`` then returns ``params`` and ``state`` unchanged
and warns (a :class:`NonFiniteGradientWarning`); the next finite step is the one it would have been without it.

>>> import numpy as np
>>> from deqcore import nn
>>> opt = nn.SGD(lr=0.1, momentum=0.9)
>>> params = {"w": np.array([1.0])}
>>> state = opt.init(params)
>>> params, state = opt.update({"w": np.array([2.0])}, state, params)
>>> params["w"]
array([0.8])
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from .._checks import check_positive_int, check_tolerance
from ..backend import get_namespace
from .tree import tree_leaves, tree_map, tree_norm, tree_paths, zeros_like

__all__ = ["SGD", "Adam", "AdamW", "NonFiniteGradientWarning", "clip_by_global_norm", "cosine_schedule"]


class NonFiniteGradientWarning(RuntimeWarning):
    """An optimiser skipped an update because a gradient held NaN or infinity."""


def _check_lr(lr):
    if callable(lr):
        return lr
    check_tolerance(lr, "lr")
    return lr


def _check_beta(value, name):
    value = check_tolerance(value, name)
    if value >= 1:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return value


def _lr_at(lr, step):
    if not callable(lr):
        return float(lr)
    value = float(lr(step))
    if not (0.0 <= value < math.inf):          # (NaN fails too) a schedule's NaN would silently NaN every parameter
        raise ValueError(f"lr schedule returned {value!r} at step {step}: a learning rate must be a finite number >= 0")
    return value


def _check_grads(grads, params):
    """Each gradient leaf must have its parameter's shape: NumPy would broadcast a (1, n) gradient over an
    (m, n) weight, or a (3,) one over a (1,) bias, and silently change the update (or the parameter's shape);
    and its floating dtype: a float64 gradient would silently turn a float32 parameter into float64."""
    leaves = dict(tree_paths(params))
    grad_leaves = tree_paths(grads)
    present = {path for path, _ in grad_leaves}
    missing = [path for path in leaves if path not in present]
    extra = [path for path, _ in grad_leaves if path not in leaves]
    if missing or extra:
        raise ValueError("grads must have the tree of params (pass the gradients of these params): "
                         + "; ".join(f"{what}: {', '.join(repr(p) for p in found[:5])}"
                                     + (f" and {len(found) - 5} more" if len(found) > 5 else "")
                                     for what, found in (("missing in grads", missing), ("not in params", extra))
                                     if found))
    for path, g in grad_leaves:
        p = leaves[path]
        p_kind = getattr(getattr(p, "dtype", None), "kind", "f")
        if p_kind != "f":
            raise TypeError(f"params[{path!r}] has dtype {p.dtype}: an update would turn it into floats; "
                            "params must be floating arrays (nn.setup makes them float32 or float64)")
        if tuple(getattr(g, "shape", ())) != tuple(getattr(p, "shape", ())):
            raise ValueError(f"grads[{path!r}] has shape {tuple(getattr(g, 'shape', ()))} but the parameter has "
                             f"{tuple(getattr(p, 'shape', ()))}: pass the gradients of these params (same tree, same "
                             "shapes)")
        g_dtype, p_dtype = getattr(g, "dtype", None), getattr(p, "dtype", None)
        if g_dtype is not None and p_dtype is not None and g_dtype != p_dtype and p_dtype.kind == "f":
            raise TypeError(f"grads[{path!r}] has dtype {g_dtype} but the parameter is {p_dtype}: the update would "
                            f"change the parameter's dtype; cast the gradient (g.astype(np.{p_dtype}))")


def _skip_non_finite(grads) -> bool:
    """True (with a warning) when a gradient leaf holds NaN or infinity: the update must leave the parameters and
    the state as they are (one device-to-host transfer of a flag)."""
    leaves = [g for g in tree_leaves(grads) if getattr(g, "size", 1)]
    if not leaves:
        return False
    xp = get_namespace(*leaves)
    if bool(xp.all(xp.stack([xp.isfinite(g).all() for g in leaves]))):
        return False
    warnings.warn("a gradient holds NaN or infinity: the update was skipped (params and optimiser state "
                  "unchanged)", NonFiniteGradientWarning, stacklevel=3)
    return True


@dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent with optional (Nesterov) momentum, PyTorch's convention:
    ``v ← μ v + g``; step ``g + μ v`` (Nesterov) or ``v``; ``p ← p − lr · step``.

    >>> import numpy as np
    >>> opt = SGD(lr=0.1, momentum=0.9, nesterov=True)
    >>> opt.update({"w": np.array([2.0])}, opt.init({"w": np.ones(1)}), {"w": np.ones(1)})[0]
    {'w': array([0.62])}
    """

    lr: Any = 1e-2
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self):
        _check_lr(self.lr)
        _check_beta(self.momentum, "momentum")
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"nesterov must be True or False, got {type(self.nesterov).__name__}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")

    def init(self, params):
        """Optimiser state for ``params``."""
        return {"step": 0, "velocity": zeros_like(params) if self.momentum else None}

    def update(self, grads, state, params):
        """``(new_params, new_state)``; ``(params, state)`` unchanged, with a :class:`NonFiniteGradientWarning`,
        when a gradient holds NaN or infinity."""
        _check_grads(grads, params)
        if _skip_non_finite(grads):
            return params, state
        lr = _lr_at(self.lr, state["step"])
        if not self.momentum:
            return tree_map(lambda p, g: p - lr * g, params, grads), {**state, "step": state["step"] + 1}
        mu = self.momentum
        velocity = tree_map(lambda v, g: mu * v + g, state["velocity"], grads)
        if self.nesterov:
            new = tree_map(lambda p, g, v: p - lr * (g + mu * v), params, grads, velocity)
        else:
            new = tree_map(lambda p, v: p - lr * v, params, velocity)
        return new, {"step": state["step"] + 1, "velocity": velocity}


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015) with bias correction; ``weight_decay`` > 0 gives AdamW's decoupled decay
    ``p ← p − lr · (m̂ / (√v̂ + eps) + weight_decay · p)`` (Loshchilov & Hutter 2019).

    >>> import numpy as np
    >>> opt = Adam(lr=0.1)
    >>> params = {"w": np.ones(1)}
    >>> opt.update({"w": np.array([2.0])}, opt.init(params), params)[0]   # first step: lr·sign(g)
    {'w': array([0.9])}
    """

    lr: Any = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        _check_lr(self.lr)
        _check_beta(self.b1, "b1")
        _check_beta(self.b2, "b2")
        if check_tolerance(self.eps, "eps") == 0:      # 0/0 = NaN in every parameter whose gradient is still 0
            raise ValueError("eps must be > 0 (with eps=0 a parameter whose gradients were all 0 becomes NaN)")
        check_tolerance(self.weight_decay, "weight_decay")

    def init(self, params):
        """Optimiser state for ``params``."""
        return {"step": 0, "m": zeros_like(params), "v": zeros_like(params)}

    def update(self, grads, state, params):
        """``(new_params, new_state)``; ``(params, state)`` unchanged, with a :class:`NonFiniteGradientWarning`,
        when a gradient holds NaN or infinity."""
        _check_grads(grads, params)
        if _skip_non_finite(grads):
            return params, state
        step = state["step"] + 1
        lr = _lr_at(self.lr, state["step"])
        b1, b2, eps, wd = self.b1, self.b2, self.eps, self.weight_decay
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * (g * g), state["v"], grads)
        c1, c2 = 1 - b1 ** step, 1 - b2 ** step

        def move(p, m, v):
            xp = get_namespace(p)
            update = (m / c1) / (xp.sqrt(v / c2) + eps)
            return p - lr * (update + wd * p) if wd else p - lr * update

        return tree_map(move, params, m, v), {"step": step, "m": m, "v": v}


@dataclass(frozen=True)
class AdamW(Adam):
    """:class:`Adam` with decoupled weight decay, 0.01 by default.

    >>> import numpy as np
    >>> opt = AdamW(lr=0.1, weight_decay=0.5)
    >>> params = {"w": np.ones(1)}
    >>> opt.update({"w": np.array([2.0])}, opt.init(params), params)[0]   # 1 − 0.1·(1 + 0.5)
    {'w': array([0.85])}
    """

    weight_decay: float = 1e-2


def clip_by_global_norm(grads, max_norm):
    """``(clipped, norm)``: scale all gradients by ``min(1, max_norm / norm)`` where ``norm`` is the
    Euclidean norm of all leaves together (computed on the device, no transfer).

    A gradient holding NaN or infinity has a non-finite ``norm``: it comes back as zeros (with that ``norm``),
    never as NaN, so an update with it cannot poison the parameters (plain SGD leaves them unchanged; momentum
    and Adam still move by their history). Check ``norm`` to skip such a step (``math.isfinite(float(norm))``), or
    pass the unclipped gradients to the optimiser's ``update``, which skips it.

    >>> import numpy as np
    >>> clipped, norm = clip_by_global_norm({"a": np.array([3.0, 4.0])}, 1.0)
    >>> clipped["a"], float(norm)
    (array([0.6, 0.8]), 5.0)
    >>> clipped, norm = clip_by_global_norm({"a": np.array([np.inf, 4.0])}, 1.0)
    >>> clipped["a"], float(norm)
    (array([0., 0.]), inf)
    """
    max_norm = check_tolerance(max_norm, "max_norm")
    leaves = tree_leaves(grads)
    if not leaves:
        return grads, tree_norm(grads)
    xp = get_namespace(*leaves)
    # the norm of the gradients scaled by their largest entry (a float32 sum of squares overflows from entries of
    # ~1e19 on: an exploding gradient, the very case to clip, would otherwise get norm inf and be zeroed)
    dtype = leaves[0].dtype
    sizes = [xp.max(xp.abs(g)).astype(dtype) for g in leaves if g.size]      # (on the device: no transfer)
    size = xp.max(xp.stack(sizes)) if sizes else xp.zeros((), dtype=dtype)
    finite = xp.isfinite(size)                                     # False when an entry is inf or NaN
    scale = xp.where(finite & (size > 0), size, xp.ones((), dtype=size.dtype))
    kept = tree_map(lambda g: xp.where(finite, g, xp.zeros((), dtype=g.dtype)), grads)   # (no inf·0 = NaN below)
    norm = xp.where(finite, scale * tree_norm(tree_map(lambda g: g / scale.astype(g.dtype), kept)), size)
    factor = xp.where(finite, xp.minimum(1.0, max_norm / xp.maximum(norm, 1e-30)), 0.0)
    return tree_map(lambda g: g * factor.astype(g.dtype), kept), norm


def cosine_schedule(peak_lr, total_steps, warmup_steps=0, final_lr=0.0):
    """``step -> lr``: linear warm-up from 0 to ``peak_lr`` over ``warmup_steps``, then a cosine decay to
    ``final_lr`` at ``total_steps`` (constant afterwards).

    >>> sched = cosine_schedule(1.0, total_steps=10, warmup_steps=2)
    >>> [round(sched(s), 3) for s in (0, 1, 2, 6, 10, 20)]
    [0.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    >>> sched(-1)
    Traceback (most recent call last):
    ...
    ValueError: step must be an integer >= 0, got -1
    """
    peak_lr = check_tolerance(peak_lr, "peak_lr")
    final_lr = check_tolerance(final_lr, "final_lr")
    total_steps = check_positive_int(total_steps, "total_steps")
    warmup_steps = check_positive_int(warmup_steps, "warmup_steps", minimum=0)
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")

    def schedule(step):
        step = check_positive_int(step, "step", minimum=0)   # (a negative or fractional one extrapolates)
        if step < warmup_steps:
            return peak_lr * (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return final_lr + 0.5 * (peak_lr - final_lr) * (1.0 + math.cos(math.pi * progress))

    return schedule
