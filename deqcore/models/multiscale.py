"""Multiscale DEQs (Bai et al. 2020), their skip variants (Pal et al. 2022) and the multiscale neural ODE.

All scales are solved together as one state per sample: the flat concatenation of every scale's z. Only
scale 1's main layer receives the injection ``(z₁, x)``; the others receive zᵢ alone. The fused output for
scale k is Σᵢ mapping[i][k](yᵢ) (``nn.NoOpLayer()`` on the diagonal), optionally passed through a post-fuse
layer per scale. The output is a tuple with one array per scale.

>>> import numpy as np, deqcore as dq
>>> from deqcore import nn
>>> main = (nn.Parallel(nn.add, nn.Dense(4, 4, "tanh", use_bias=False), nn.Dense(4, 4, "tanh", use_bias=False)),
...         nn.Dense(3, 3, "tanh"), nn.Dense(2, 2, "tanh"), nn.Dense(1, 1, "tanh"))
>>> sizes = (4, 3, 2, 1)
>>> mapping = [[nn.NoOpLayer() if i == k else nn.Dense(sizes[i], sizes[k], "tanh") for k in range(4)]
...            for i in range(4)]
>>> model = dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, dq.NewtonRaphson(),
...                                             ((4,), (3,), (2,), (1,)))
>>> params, state = nn.setup(np.random.default_rng(0), model)
>>> x = np.random.default_rng(1).random((12, 4))
>>> import warnings
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore")   # random weights: some samples do not converge, and a warning says so
...     ys, state = model(x, params, state)
>>> [y.shape for y in ys]
[(12, 4), (12, 3), (12, 2), (12, 1)]
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

from ..backend import get_namespace
from ..nn.containers import first_coupling
from ..nn.core import Layer
from ..nn.tree import tree_add
from .deq import DeepEquilibriumNetwork

__all__ = [
    "MultiScaleDeepEquilibriumNetwork",
    "MultiScaleSkipDeepEquilibriumNetwork",
    "MultiScaleNeuralODE",
    "MultiScaleMap",
]


def _check_scales(scales):
    if not isinstance(scales, (tuple, list)) or not scales:
        raise ValueError(f"scales must be a non-empty tuple of shape tuples such as ((4,), (3,)); got {scales!r}")
    checked = []
    for i, scale in enumerate(scales, 1):
        if isinstance(scale, numbers.Integral) and not isinstance(scale, bool):
            scale = (int(scale),)
        if (not isinstance(scale, (tuple, list)) or not scale
                or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in scale)):
            raise ValueError(f"scales[{i - 1}] must be a tuple of positive ints (the per-sample shape of scale {i}); "
                             f"got {scale!r}")
        checked.append(tuple(int(d) for d in scale))
    return tuple(checked)


def _check_layer(layer, where):
    if not isinstance(layer, Layer):
        raise TypeError(f"{where} must be an nn.Layer, got {type(layer).__name__}")
    return layer


class MultiScaleMap(Layer):
    """f((z, x)) of a multiscale DEQ, acting on the flat state z (batch, Σ numel(scaleᵢ))."""

    def __init__(self, main_layers: Sequence[Layer], mapping_layers: Sequence[Sequence[Layer]],
                 post_fuse_layers: Sequence[Layer] | None, scales: Sequence[tuple[int, ...]]) -> None:
        self.scales = _check_scales(scales)
        n = len(self.scales)
        if not isinstance(main_layers, (tuple, list)) or len(main_layers) != n:
            raise ValueError(f"main_layers must be a tuple of {n} layers (one per scale); got "
                             f"{len(main_layers) if isinstance(main_layers, (tuple, list)) else main_layers!r}")
        self.main = tuple(_check_layer(layer, f"main_layers[{i}]") for i, layer in enumerate(main_layers))
        if (not isinstance(mapping_layers, (tuple, list)) or len(mapping_layers) != n
                or any(not isinstance(row, (tuple, list)) or len(row) != n for row in mapping_layers)):
            raise ValueError(f"mapping_layers must be a {n}x{n} matrix (a list of {n} rows of {n} layers); "
                             "mapping_layers[i][k] maps scale i to scale k")
        self.mapping = tuple(tuple(_check_layer(layer, f"mapping_layers[{i}][{k}]") for k, layer in enumerate(row))
                             for i, row in enumerate(mapping_layers))
        if post_fuse_layers is None:
            self.post = None
        else:
            if not isinstance(post_fuse_layers, (tuple, list)) or len(post_fuse_layers) != n:
                raise ValueError(f"post_fuse_layer must be None or a tuple of {n} layers (one per scale)")
            self.post = tuple(_check_layer(layer, f"post_fuse_layer[{k}]") for k, layer in enumerate(post_fuse_layers))
        self.sizes = tuple(math.prod(s) for s in self.scales)

    def __repr__(self):
        return f"MultiScaleMap(scales={self.scales})"

    # names of the sub-layers in params/state
    def _units(self):
        n = len(self.scales)
        units = [(f"main_{i + 1}", self.main[i]) for i in range(n)]
        units += [(f"mapping_{i + 1}_{k + 1}", self.mapping[i][k]) for i in range(n) for k in range(n)]
        if self.post is not None:
            units += [(f"post_fuse_{k + 1}", self.post[k]) for k in range(n)]
        return units

    def init(self, rng):
        params, state = {}, {}
        for name, layer in self._units():
            params[name], state[name] = layer.init(rng)
        return params, state

    def row_coupling(self, state):
        return first_coupling((layer, state[name]) for name, layer in self._units())

    def split(self, z):
        """The flat state as a list of per-scale arrays of shape (batch, *scale)."""
        xp = get_namespace(z)
        if getattr(z, "ndim", 0) != 2 or z.shape[1] != sum(self.sizes):
            raise ValueError(f"the multiscale state z must have shape (batch, {sum(self.sizes)}) (one flat row per "
                             f"sample: the scales {self.scales} joined); got shape {tuple(getattr(z, 'shape', ()))}")
        bounds = [sum(self.sizes[:i + 1]) for i in range(len(self.sizes) - 1)]
        return [part.reshape((z.shape[0],) + scale) for part, scale in zip(xp.split(z, bounds, axis=1), self.scales)]

    def join(self, parts):
        """Per-scale arrays back to the flat state."""
        xp = get_namespace(*parts)
        return xp.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1)

    def _check_output(self, layer_name, y, k):
        expected = self.scales[k]
        if tuple(y.shape[1:]) != expected:
            raise ValueError(f"{layer_name} returns per-sample shape {tuple(y.shape[1:])}, but scale {k + 1} has "
                             f"shape {expected}; fix the layer sizes or scales")
        return y

    def _run(self, run, z, x, params, state):
        """Evaluate with ``run(name, layer, input) -> output`` (plain call, vjp or jvp recorder)."""
        n = len(self.scales)
        zs = self.split(z)
        ys = [run("main_1", self.main[0], (zs[0], x))] + [run(f"main_{i + 1}", self.main[i], zs[i])
                                                          for i in range(1, n)]
        fused = []
        for k in range(n):
            total = None
            for i in range(n):
                name = f"mapping_{i + 1}_{k + 1}"
                total = tree_add(total, self._check_output(name, run(name, self.mapping[i][k], ys[i]), k))
            if self.post is not None:
                total = self._check_output(f"post_fuse_{k + 1}", run(f"post_fuse_{k + 1}", self.post[k], total), k)
            fused.append(total)
        return self.join(fused)

    def __call__(self, inputs, params, state):
        z, x = inputs
        return self._run(lambda name, layer, u: layer(u, params[name], state[name])[0], z, x, params, state), state

    def bind(self, params, state):
        fns = {name: layer.bind(params[name], state[name]) for name, layer in self._units()}

        def apply(inputs):
            z, x = inputs
            return self._run(lambda name, layer, u: fns[name](u), z, x, params, state)

        return apply

    def vjp(self, inputs, params, state):
        return self._vjp(inputs, {name: (lambda u, layer=layer, p=params[name], s=state[name]: layer.vjp(u, p, s))
                                  for name, layer in self._units()}, params, state)

    def bind_vjp(self, params, state):
        vjps = {name: layer.bind_vjp(params[name], state[name]) for name, layer in self._units()}
        return lambda inputs: self._vjp(inputs, vjps, params, state)

    def _vjp(self, inputs, vjps, params, state):
        """:meth:`vjp` with ``vjps[name](u) -> (y, pullback, new_state)`` each sub-layer's VJP."""
        z, x = inputs
        pullbacks, new_state = {}, dict(state)

        def run(name, layer, u):
            y, pullbacks[name], new_state[name] = vjps[name](u)
            return y

        out = self._run(run, z, x, params, state)
        n = len(self.scales)

        def pullback(dout):
            dfused = self.split(dout)
            dparams, dys = {}, [None] * n
            for k in range(n):
                d = dfused[k]
                if self.post is not None:
                    d, dparams[f"post_fuse_{k + 1}"] = pullbacks[f"post_fuse_{k + 1}"](d)
                for i in range(n):
                    name = f"mapping_{i + 1}_{k + 1}"
                    du, dparams[name] = pullbacks[name](d)
                    dys[i] = tree_add(dys[i], du)
            (dz1, dx), dparams["main_1"] = pullbacks["main_1"](dys[0])
            dzs = [dz1]
            for i in range(1, n):
                dz_i, dparams[f"main_{i + 1}"] = pullbacks[f"main_{i + 1}"](dys[i])
                dzs.append(dz_i)
            return (self.join(dzs), dx), {name: dparams[name] for name, _ in self._units()}

        return out, pullback, new_state

    def jvp(self, inputs, params, state, dinputs, dparams=None):
        z, x = inputs
        dz, dx = dinputs
        n = len(self.scales)
        zs, dzs = self.split(z), self.split(dz)

        def tangent(name, layer, u, du):
            return layer.jvp(u, params[name], state[name], du, None if dparams is None else dparams[name])

        ys, dys = [], []
        for i in range(n):
            u, du = ((zs[0], x), (dzs[0], dx)) if i == 0 else (zs[i], dzs[i])
            y, dy = tangent(f"main_{i + 1}", self.main[i], u, du)
            ys.append(y)
            dys.append(dy)
        outs, douts = [], []
        for k in range(n):
            total = dtotal = None
            for i in range(n):
                name = f"mapping_{i + 1}_{k + 1}"
                y, dy = tangent(name, self.mapping[i][k], ys[i], dys[i])
                total = tree_add(total, self._check_output(name, y, k))
                dtotal = tree_add(dtotal, dy)
            if self.post is not None:
                total, dtotal = tangent(f"post_fuse_{k + 1}", self.post[k], total, dtotal)
            outs.append(total)
            douts.append(dtotal)
        return self.join(outs), self.join(douts)


class MultiScaleDeepEquilibriumNetwork(DeepEquilibriumNetwork):
    """Multiscale DEQ (Bai et al. 2020); see the module docstring for the structure.

    Args:
        main_layers: a tuple of layers, one per scale (the first is called on ``(z₁, x)``).
        mapping_layers: an n×n matrix of layers; ``mapping_layers[i][k]`` maps scale i's output to scale k.
        post_fuse_layer: None, or a tuple of layers applied per scale after fusion.
        solver: any deqcore root finder or ODE solver.
        scales: per-sample shapes of the scales, e.g. ``((4,), (3,), (2,), (1,))`` or NCHW ``((8, 16, 16), ...)``.
        Other keywords as :class:`DeepEquilibriumNetwork` (init, jacobian_regularization, adjoint, atol, ...).

    >>> import numpy as np, deqcore as dq
    >>> from deqcore import nn
    >>> main = (nn.Parallel(nn.add, nn.Dense(2, 2, "tanh"), nn.Dense(2, 2, "tanh")), nn.Dense(1, 1, "tanh"))
    >>> mapping = [[nn.NoOpLayer(), nn.Dense(2, 1, "tanh")], [nn.Dense(1, 2, "tanh"), nn.NoOpLayer()]]
    >>> model = dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, dq.Anderson(), ((2,), (1,)))
    >>> params, state = nn.setup(np.random.default_rng(0), model)
    >>> [y.shape for y in model(np.ones((5, 2)), params, state)[0]]
    [(5, 2), (5, 1)]
    """

    def __init__(self, main_layers: Sequence[Layer], mapping_layers: Sequence[Sequence[Layer]],
                 post_fuse_layer: Sequence[Layer] | None, solver: Any, scales: Sequence[tuple[int, ...]],
                 **settings: Any) -> None:
        self.map = MultiScaleMap(main_layers, mapping_layers, post_fuse_layer, scales)
        super().__init__(self.map, solver, **settings)

    def _zero_state(self, x):
        xp = get_namespace(x)
        return xp.zeros((x.shape[0], sum(self.map.sizes)), dtype=x.dtype)

    def _initial(self, x, params, state, want_vjp):
        u0, pullback, nfe = super()._initial(x, params, state, want_vjp)
        want = (x.shape[0], sum(self.map.sizes))
        if tuple(getattr(u0, "shape", ())) != want:
            raise ValueError(f"{type(self).__name__}: the init layer returned shape {tuple(getattr(u0, 'shape', ()))}, "
                             f"but the initial state is one flat row per sample, shape {want} (the scales "
                             f"{self.map.scales} joined): make the init layer output {want[1]} features")
        return u0, pullback, nfe

    def output(self, z_star):
        return tuple(self.map.split(z_star))

    def output_vjp(self, dy):
        if not isinstance(dy, (tuple, list)) or len(dy) != len(self.map.scales):
            raise ValueError(f"the cotangent of a multiscale output must be a tuple of {len(self.map.scales)} arrays")
        return self.map.join(list(dy))


class MultiScaleSkipDeepEquilibriumNetwork(MultiScaleDeepEquilibriumNetwork):
    """Multiscale skip DEQ (Pal et al. 2022): ``init`` is a layer mapping x to the flat initial state
    (batch, Σ numel(scaleᵢ)); ``init=None`` gives the Skip-Reg variant, u0 = f((0, x)).

    >>> import numpy as np, deqcore as dq
    >>> from deqcore import nn
    >>> main = (nn.Parallel(nn.add, nn.Dense(2, 2, "tanh"), nn.Dense(2, 2, "tanh")), nn.Dense(1, 1, "tanh"))
    >>> mapping = [[nn.NoOpLayer(), nn.Dense(2, 1, "tanh")], [nn.Dense(1, 2, "tanh"), nn.NoOpLayer()]]
    >>> model = dq.MultiScaleSkipDeepEquilibriumNetwork(main, mapping, None, nn.Dense(2, 3), dq.Anderson(),
    ...                                                 ((2,), (1,)))
    >>> params, state = nn.setup(np.random.default_rng(0), model)
    >>> _, state = model(np.ones((5, 2)), params, state)
    >>> state["solution"].u0.shape, bool(state["solution"].skip_loss >= 0)
    ((5, 3), True)
    """

    def __init__(self, main_layers: Sequence[Layer], mapping_layers: Sequence[Sequence[Layer]],
                 post_fuse_layer: Sequence[Layer] | None, init: Layer | str | None, solver: Any,
                 scales: Sequence[tuple[int, ...]], **settings: Any) -> None:
        super().__init__(main_layers, mapping_layers, post_fuse_layer, solver, scales,
                         init="one_step" if init is None else init, **settings)


class MultiScaleNeuralODE(MultiScaleDeepEquilibriumNetwork):
    """The multiscale model as a neural ODE: dz/dt = f((z, x)) − z integrated over t ∈ [0, 1]; gradients by
    ``dq.GaussAdjoint()`` unless another ODE adjoint is given.

    >>> import numpy as np, deqcore as dq
    >>> from deqcore import nn
    >>> main = (nn.Parallel(nn.add, nn.Dense(2, 2, "tanh"), nn.Dense(2, 2, "tanh")), nn.Dense(1, 1, "tanh"))
    >>> mapping = [[nn.NoOpLayer(), nn.Dense(2, 1, "tanh")], [nn.Dense(1, 2, "tanh"), nn.NoOpLayer()]]
    >>> model = dq.MultiScaleNeuralODE(main, mapping, None, dq.Tsit5(), ((2,), (1,)))
    >>> params, state = nn.setup(np.random.default_rng(0), model)
    >>> ys, pullback, state = nn.vjp(model, np.ones((3, 2)), params, state)
    >>> dx, dparams = pullback(tuple(np.ones_like(y) for y in ys))     # GaussAdjoint through [0, 1]
    >>> [y.shape for y in ys], dx.shape
    ([(3, 2), (3, 1)], (3, 2))
    """

    def __init__(self, main_layers: Sequence[Layer], mapping_layers: Sequence[Sequence[Layer]],
                 post_fuse_layer: Sequence[Layer] | None, solver: Any, scales: Sequence[tuple[int, ...]],
                 **settings: Any) -> None:
        settings.setdefault("problem_type", "ode")
        if settings["problem_type"] != "ode":
            raise ValueError("MultiScaleNeuralODE always has problem_type='ode'")
        super().__init__(main_layers, mapping_layers, post_fuse_layer, solver, scales, **settings)
