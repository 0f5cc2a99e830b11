"""Composition: :class:`Chain`, :class:`Parallel` (with connections ``add``, ``concat`` or your own),
and the structural layers :class:`NoOpLayer`, :class:`WrappedFunction`, :class:`Flatten`, :class:`Reshape`.

>>> import numpy as np
>>> from deqcore import nn
>>> model = nn.Parallel(nn.add, nn.Dense(2, 2, use_bias=False), nn.Dense(2, 2, use_bias=False))
>>> params, state = nn.setup(np.random.default_rng(0), model)
>>> z, x = np.zeros((1, 2)), np.ones((1, 2))
>>> model((z, x), params, state)[0].shape           # layer 1 gets z, layer 2 gets x; outputs added
(1, 2)
"""

from __future__ import annotations

import math
import numbers
import operator

from ..backend import get_namespace
from .._checks import check_callable
from .core import (Layer, ShapeError, check_array_input, compose, identity, input_pullback, partial_pullback,
                   shape_error, with_input_only)

__all__ = ["Chain", "Parallel", "Connection", "Add", "Concat", "add", "concat", "NoOpLayer",
           "WrappedFunction", "Flatten", "Reshape"]


def _layer_names(layers):
    return [f"layer_{i}" for i in range(1, len(layers) + 1)]


def _check_layers(layers, owner):
    if not layers:
        raise ValueError(f"{owner} needs at least one layer")
    for i, layer in enumerate(layers, 1):
        if not isinstance(layer, Layer):
            raise TypeError(f"{owner}: layer {i} must be a deqcore.nn.Layer, got {type(layer).__name__}")
    return tuple(layers)


def first_coupling(layers_and_states):
    """The first ``layer.row_coupling(state)`` that is not None over ``(layer, state)`` pairs, else None."""
    for layer, state in layers_and_states:
        reason = layer.row_coupling(state)
        if reason is not None:
            return reason
    return None


def _sub(tree, key):
    return None if tree is None else tree[key]


def _in(owner, name, fn, *args):
    """Run ``fn(*args)``, prefixing shape errors with where in the model they happened."""
    try:
        return fn(*args)
    except ShapeError as err:
        raise ShapeError(f"{owner}.{name}: {err}") from None


def _unbound_vjps(owner, params, state):
    """Each sub-layer's ``x -> layer.vjp(x, params[name], state[name])`` (a container's unbound VJP)."""
    return [(lambda x, layer=layer, p=params[name], s=state[name]: layer.vjp(x, p, s))
            for name, layer in zip(owner.names, owner.layers)]


class Chain(Layer):
    """Layers applied one after another; parameters and state under ``layer_1``, ``layer_2``, ...

    >>> import numpy as np
    >>> from deqcore import nn
    >>> model = nn.Chain(nn.Dense(4, 8, "relu"), nn.Dense(8, 2))
    >>> params, state = nn.setup(np.random.default_rng(0), model)
    >>> list(params), model(np.ones((3, 4)), params, state)[0].shape
    (['layer_1', 'layer_2'], (3, 2))
    """

    def __init__(self, *layers):
        self.layers = _check_layers(layers, "Chain")
        self.names = _layer_names(self.layers)

    def __repr__(self):
        return "Chain(" + ", ".join(map(repr, self.layers)) + ")"

    def row_coupling(self, state):
        return first_coupling((layer, state[name]) for name, layer in zip(self.names, self.layers))

    def init(self, rng):
        pairs = [layer.init(rng) for layer in self.layers]
        params = {n: p for n, (p, _) in zip(self.names, pairs)}
        return params, {n: s for n, (_, s) in zip(self.names, pairs)}

    def __call__(self, x, params, state):
        new_state = {}
        for name, layer in zip(self.names, self.layers):
            x, new_state[name] = _in("Chain", name, layer, x, params[name], state[name])
        return x, new_state

    def bind(self, params, state):
        return compose([layer.bind(params[name], state[name]) for name, layer in zip(self.names, self.layers)])

    def linearize(self, x, params, state):
        tangents = []
        for name, layer in zip(self.names, self.layers):
            x, tangent = _in("Chain", name, layer.linearize, x, params[name], state[name])
            tangents.append(tangent)
        return x, compose(tangents)

    def vjp(self, x, params, state):
        return self._vjp(x, _unbound_vjps(self, params, state))

    def bind_vjp(self, params, state):
        vjps = [layer.bind_vjp(params[name], state[name]) for name, layer in zip(self.names, self.layers)]
        return lambda x: self._vjp(x, vjps)

    def _vjp(self, x, vjps):
        """:meth:`vjp` with ``vjps[i](x) -> (y, pullback, new_state)`` the i-th layer's VJP."""
        pullbacks, new_state = [], {}
        for name, vjp in zip(self.names, vjps):
            x, pb, new_state[name] = _in("Chain", name, vjp, x)
            pullbacks.append(pb)

        def pullback(dy):
            dparams = {}
            for name, pb in zip(reversed(self.names), reversed(pullbacks)):
                dy, dparams[name] = pb(dy)
            return dy, {name: dparams[name] for name in self.names}

        def input_only(dy, wanted=None):
            return input_fn(wanted)(dy)

        def partial(dy, wanted):
            dparams = {}
            for name, pb in zip(reversed(self.names[1:]), reversed(pullbacks[1:])):
                dy, dparams[name] = pb(dy)
            dx, dparams[self.names[0]] = partial_pullback(pullbacks[0], wanted)(dy)
            return dx, {name: dparams[name] for name in self.names}

        def input_fn(wanted=None):
            return compose([input_pullback(pb) for pb in reversed(pullbacks[1:])]
                           + [input_pullback(pullbacks[0], wanted)])

        return x, with_input_only(pullback, input_only, partial, input_fn), new_state

    def jvp(self, x, params, state, dx, dparams=None):
        for name, layer in zip(self.names, self.layers):
            x, dx = _in("Chain", name, layer.jvp, x, params[name], state[name], dx, _sub(dparams, name))
        return x, dx


class Connection:
    """How :class:`Parallel` combines its branches' outputs: ``fn(*ys) -> y`` with its derivatives.

    Args:
        fn: the combination.
        vjp: ``vjp(*ys) -> (y, pullback)`` with ``pullback(dy) -> tuple of dys`` (one per branch).
        jvp: ``jvp(ys, dys) -> (y, dy)``.

    >>> import numpy as np
    >>> mul = Connection(lambda a, b: a * b, vjp=lambda a, b: (a * b, lambda d: (d * b, d * a)),
    ...                  jvp=lambda ys, ds: (ys[0] * ys[1], ds[0] * ys[1] + ys[0] * ds[1]))
    >>> mul.vjp(np.array([2.0]), np.array([3.0]))[1](np.array([1.0]))
    (array([3.]), array([2.]))
    """

    def __init__(self, fn, vjp=None, jvp=None, name=None):
        self.fn = check_callable(fn, "fn")
        self._vjp = None if vjp is None else check_callable(vjp, "vjp")
        self._jvp = None if jvp is None else check_callable(jvp, "jvp")
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def __repr__(self):
        return self.name

    def __call__(self, *ys):
        return self.fn(*ys)

    def vjp(self, *ys):
        if self._vjp is None:
            raise NotImplementedError(f"connection {self.name} has no vjp; pass vjp= to nn.Connection")
        return self._vjp(*ys)

    def jvp(self, ys, dys):
        if self._jvp is None:
            raise NotImplementedError(f"connection {self.name} has no jvp; pass jvp= to nn.Connection")
        return self._jvp(ys, dys)


class Add(Connection):
    """Sum of the branches' outputs (all of one shape); ``nn.add`` is an instance.

    >>> import numpy as np
    >>> add(np.ones(2), np.ones(2))
    array([2., 2.])
    """

    def __init__(self):
        super().__init__(self._sum, name="add")

    def _sum(self, *ys):
        shapes = {tuple(y.shape) for y in ys}
        if len(shapes) != 1:
            raise ShapeError(f"add: the branches' outputs must have one shape; got {sorted(shapes)}")
        return sum(ys[1:], ys[0])

    def vjp(self, *ys):
        return self._sum(*ys), lambda dy: (dy,) * len(ys)

    def jvp(self, ys, dys):
        return self._sum(*ys), sum(dys[1:], dys[0])


class Concat(Connection):
    """Concatenation of the branches' outputs along ``axis`` (default: the last, i.e. features; use
    ``axis=1`` for NCHW channels); ``nn.concat`` concatenates features.

    >>> import numpy as np
    >>> Concat(axis=1)(np.zeros((2, 1, 3, 3)), np.zeros((2, 4, 3, 3))).shape
    (2, 5, 3, 3)
    """

    def __init__(self, axis: int = -1):
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis must be an int, got {type(axis).__name__}")
        self.axis = int(axis)
        super().__init__(self._cat, name=f"Concat(axis={self.axis})")

    def _cat(self, *ys):
        return get_namespace(*ys).concatenate(ys, axis=self.axis)

    def vjp(self, *ys):
        xp = get_namespace(*ys)
        ends = list(_cumsum([y.shape[self.axis] for y in ys]))
        return self._cat(*ys), lambda dy: tuple(xp.split(dy, ends[:-1], axis=self.axis))

    def jvp(self, ys, dys):
        return self._cat(*ys), self._cat(*dys)


def _cumsum(sizes):
    total = 0
    for s in sizes:
        total += s
        yield total


add = Add()
concat = Concat()


def _connection(connection):
    if connection is None or isinstance(connection, Connection):
        return connection
    if connection is operator.add:
        return add
    raise TypeError("connection must be nn.add, nn.concat, nn.Concat(axis), an nn.Connection(fn, vjp=, jvp=) "
                    f"or None (return the tuple of outputs); got {connection!r}")


class Parallel(Layer):
    """Branches applied side by side, combined by ``connection``.

    A tuple input with one element per branch sends element i to branch i (so ``Parallel(add, f, g)`` on
    ``(z, x)`` computes ``f(z) + g(x)``, the DEQ form); any other input goes to every branch.
    ``connection=None`` returns the tuple of outputs. ``operator.add`` is accepted as ``nn.add``.

    >>> import numpy as np
    >>> from deqcore import nn
    >>> model = nn.Parallel(nn.concat, nn.Dense(3, 2), nn.Dense(3, 4))
    >>> params, state = nn.setup(np.random.default_rng(0), model)
    >>> model(np.ones((5, 3)), params, state)[0].shape
    (5, 6)
    """

    def __init__(self, connection, *layers):
        self.connection = _connection(connection)
        self.layers = _check_layers(layers, "Parallel")
        self.names = _layer_names(self.layers)

    def __repr__(self):
        return f"Parallel({self.connection!r}, " + ", ".join(map(repr, self.layers)) + ")"

    init = Chain.init

    def row_coupling(self, state):
        if isinstance(self.connection, Concat) and self.connection.axis == 0:
            return f"{self!r} (concatenates along the batch axis)"
        return Chain.row_coupling(self, state)

    def _inputs(self, x):
        if isinstance(x, (tuple, list)):
            if len(x) != len(self.layers):
                raise ShapeError(f"{self!r}: a tuple input needs one element per branch "
                                 f"({len(self.layers)}); got {len(x)}")
            return tuple(x), True
        return (x,) * len(self.layers), False

    def __call__(self, x, params, state):
        xs, _ = self._inputs(x)
        ys, new_state = [], {}
        for name, layer, xi in zip(self.names, self.layers, xs):
            y, new_state[name] = _in("Parallel", name, layer, xi, params[name], state[name])
            ys.append(y)
        return (tuple(ys) if self.connection is None else self.connection(*ys)), new_state

    def bind(self, params, state):
        fns = [layer.bind(params[name], state[name]) for name, layer in zip(self.names, self.layers)]
        connection, count = self.connection, len(fns)
        if isinstance(connection, Add) and count == 2:             # the DEQ form f(z) + g(x)
            f1, f2 = fns

            def add2(x):
                if isinstance(x, (tuple, list)):
                    return f1(x[0]) + f2(x[1])
                return f1(x) + f2(x)

            return add2
        combine = tuple if connection is None else (lambda ys: connection(*ys))

        def apply(x):
            xs = x if isinstance(x, (tuple, list)) else (x,) * count
            return combine([f(xi) for f, xi in zip(fns, xs)])

        return apply

    def linearize(self, x, params, state):
        xs, routed = self._inputs(x)
        pairs = [_in("Parallel", name, layer.linearize, xi, params[name], state[name])
                 for name, layer, xi in zip(self.names, self.layers, xs)]
        ys, tangents = tuple(y for y, _ in pairs), [t for _, t in pairs]
        count, connection = len(tangents), self.connection

        def dys(dx):
            return tuple(t(d) for t, d in zip(tangents, dx if routed else (dx,) * count))

        if connection is None:
            return ys, dys
        y = connection(*ys)
        if isinstance(connection, Add):
            if count == 2 and routed:
                t1, t2 = tangents
                return y, lambda dx: t1(dx[0]) + t2(dx[1])
            return y, lambda dx: _sum_cotangents(list(dys(dx)))
        return y, lambda dx: connection.jvp(ys, dys(dx))[1]

    def vjp(self, x, params, state):
        return self._vjp(x, _unbound_vjps(self, params, state))

    def bind_vjp(self, params, state):
        vjps = [layer.bind_vjp(params[name], state[name]) for name, layer in zip(self.names, self.layers)]
        return lambda x: self._vjp(x, vjps)

    def _vjp(self, x, vjps):
        """:meth:`vjp` with ``vjps[i](x) -> (y, pullback, new_state)`` the i-th branch's VJP."""
        xs, routed = self._inputs(x)
        ys, pullbacks, new_state = [], [], {}
        for name, vjp, xi in zip(self.names, vjps, xs):
            y, pb, new_state[name] = _in("Parallel", name, vjp, xi)
            ys.append(y)
            pullbacks.append(pb)
        if self.connection is None:
            out, split = tuple(ys), tuple
        else:
            out, split = self.connection.vjp(*ys)

        def pullback(dy):
            parts = [pb(d) for pb, d in zip(pullbacks, split(dy))]
            dparams = {name: dp for name, (_, dp) in zip(self.names, parts)}
            dxs = [dx for dx, _ in parts]
            return (tuple(dxs) if routed else _sum_cotangents(dxs)), dparams

        def input_only(dy, wanted=None):
            return input_fn(wanted)(dy)

        def partial(dy, wanted):
            if routed and not isinstance(wanted, (tuple, list)):
                wanted = (wanted,) * len(pullbacks)
            parts = [partial_pullback(pb, wanted[i] if routed else wanted)(d)
                     for i, (pb, d) in enumerate(zip(pullbacks, split(dy)))]
            dparams = {name: dp for name, (_, dp) in zip(self.names, parts)}
            dxs = [dx for dx, _ in parts]
            return (tuple(dxs) if routed else _sum_cotangents(dxs)), dparams

        def input_fn(wanted=None):
            if routed:
                fns = [input_pullback(pb) if wanted is None or wanted[i] else None for i, pb in enumerate(pullbacks)]
            else:
                fns = [input_pullback(pb, wanted) for pb in pullbacks]
            if isinstance(self.connection, Add):                   # every branch gets dy itself
                if routed and len(fns) == 2:
                    f1, f2 = fns
                    if f2 is None:
                        return (lambda dy: (None, None)) if f1 is None else (lambda dy: (f1(dy), None))
                    return (lambda dy: (None, f2(dy))) if f1 is None else (lambda dy: (f1(dy), f2(dy)))
                if routed:
                    return lambda dy: tuple(None if f is None else f(dy) for f in fns)
                return lambda dy: _sum_cotangents([f(dy) for f in fns])
            if routed:
                return lambda dy: tuple(None if f is None else f(d) for f, d in zip(fns, split(dy)))
            return lambda dy: _sum_cotangents([f(d) for f, d in zip(fns, split(dy))])

        return out, with_input_only(pullback, input_only, partial, input_fn), new_state

    def jvp(self, x, params, state, dx, dparams=None):
        xs, routed = self._inputs(x)
        dxs = tuple(dx) if routed else (dx,) * len(self.layers)
        pairs = [_in("Parallel", name, layer.jvp, xi, params[name], state[name], dxi, _sub(dparams, name))
                 for name, layer, xi, dxi in zip(self.names, self.layers, xs, dxs)]
        ys, dys = tuple(y for y, _ in pairs), tuple(d for _, d in pairs)
        if self.connection is None:
            return ys, dys
        return self.connection.jvp(ys, dys)


def _identity_partial(dy, wanted):
    """The identity's pullback without the input cotangents not wanted (None in their place)."""
    if wanted is False:
        return None, {}
    if isinstance(wanted, (tuple, list)) and isinstance(dy, (tuple, list)):
        return tuple(d if w is not False else None for d, w in zip(dy, wanted)), {}
    return dy, {}


def _sum_cotangents(parts):
    if isinstance(parts[0], tuple):
        return tuple(_sum_cotangents(list(group)) for group in zip(*parts))
    present = [p for p in parts if p is not None]        # None: an element an input pullback was not asked for
    if not present:
        return None
    return sum(present[1:], present[0])


class NoOpLayer(Layer):
    """The identity (also on tuples); used on the diagonal of multiscale mapping matrices.

    >>> import numpy as np
    >>> NoOpLayer()(np.ones(2), {}, {})[0]
    array([1., 1.])
    """

    def __call__(self, x, params, state):
        return x, state

    def bind(self, params, state):
        return identity

    def linearize(self, x, params, state):
        return x, identity

    def vjp(self, x, params, state):
        return x, with_input_only(lambda dy: (dy, {}), lambda dy, wanted=None: dy, _identity_partial,
                                  lambda wanted=None: identity), state

    def jvp(self, x, params, state, dx, dparams=None):
        return x, dx


class WrappedFunction(Layer):
    """A parameter-free function ``fn(x) -> y`` as a layer, with optional derivatives
    ``vjp(x) -> (y, pullback)`` (``pullback(dy) -> dx``) and ``jvp(x, dx) -> (y, dy)``.

    >>> import numpy as np
    >>> double = WrappedFunction(lambda x: 2 * x, vjp=lambda x: (2 * x, lambda d: 2 * d),
    ...                          jvp=lambda x, d: (2 * x, 2 * d))
    >>> double.vjp(np.ones(2), {}, {})[1](np.ones(2))
    (array([2., 2.]), {})
    """

    def __init__(self, fn, vjp=None, jvp=None):
        self.fn = check_callable(fn, "fn")
        self._vjp = None if vjp is None else check_callable(vjp, "vjp")
        self._jvp = None if jvp is None else check_callable(jvp, "jvp")

    def __repr__(self):
        return f"WrappedFunction({getattr(self.fn, '__name__', type(self.fn).__name__)})"

    def __call__(self, x, params, state):
        return self.fn(x), state

    def vjp(self, x, params, state):
        if self._vjp is None:
            raise NotImplementedError(f"{self!r} has no vjp; pass vjp=lambda x: (y, pullback)")
        y, pb = self._vjp(x)

        def pullback(dy):
            dx = pb(dy)
            _check_shaped_like(self, "its vjp's pullback returned dx", dx, "x", x)
            return dx, {}

        return y, pullback, state

    def jvp(self, x, params, state, dx, dparams=None):
        if self._jvp is None:
            raise NotImplementedError(f"{self!r} has no jvp; pass jvp=lambda x, dx: (y, dy)")
        y, dy = self._jvp(x, dx)
        _check_shaped_like(self, "its jvp returned the tangent dy", dy, "y", y)
        return y, dy


def _shapes(tree):
    """The tree of leaf shapes (None for a leaf without one)."""
    if isinstance(tree, (tuple, list)):
        return tuple(_shapes(t) for t in tree)
    return tuple(tree.shape) if hasattr(tree, "shape") else None


def _check_shaped_like(layer, what, got, name, like):
    """A user-given derivative must be shaped like what it is the derivative of: NumPy would otherwise broadcast a
    wrong one silently into the gradient (a (1, n) dx summed over the batch, a transposed dy)."""
    if _shapes(got) != _shapes(like):
        raise ValueError(f"{layer!r}: {what} of shape {_shapes(got)}, but {name} has shape {_shapes(like)}; it must "
                         f"return one array shaped like {name} (a tuple of them for a tuple {name})")


class Reshape(Layer):
    """Reshape every sample: ``(B, ...) -> (B, *shape)`` (one entry may be -1).

    >>> import numpy as np
    >>> Reshape((2, 3))(np.zeros((4, 6)), {}, {})[0].shape
    (4, 2, 3)
    """

    def __init__(self, shape):
        if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
            shape = (shape,)
        if (not isinstance(shape, (tuple, list)) or not shape
                or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape)):
            raise TypeError(f"shape must be an int or a non-empty tuple of ints, got {shape!r}")
        if sum(s == -1 for s in shape) > 1 or any(s < -1 or s == 0 for s in shape):
            raise ValueError(f"shape must hold positive sizes and at most one -1, got {tuple(shape)}")
        self.shape = tuple(int(s) for s in shape)

    def __repr__(self):
        return f"Reshape({self.shape})"

    def _target(self, x):
        check_array_input(self, x)
        known = math.prod(s for s in self.shape if s != -1)
        size = math.prod(x.shape[1:]) if x.ndim >= 1 else 0
        if x.ndim < 1 or (-1 not in self.shape and size != known) or (-1 in self.shape and size % known):
            raise shape_error(self, f"(B, ...) with {known}{' x k' if -1 in self.shape else ''} elements "
                              "per sample", x)
        return (x.shape[0],) + self.shape

    def __call__(self, x, params, state):
        return x.reshape(self._target(x)), state

    def vjp(self, x, params, state):
        shape = x.shape
        return x.reshape(self._target(x)), lambda dy: (dy.reshape(shape), {}), state

    def jvp(self, x, params, state, dx, dparams=None):
        target = self._target(x)
        return x.reshape(target), dx.reshape(target)


class Flatten(Reshape):
    """``(B, ...) -> (B, prod(...))``.

    >>> import numpy as np
    >>> Flatten()(np.zeros((2, 3, 4, 4)), {}, {})[0].shape
    (2, 48)
    """

    def __init__(self):
        super().__init__((-1,))

    def __repr__(self):
        return "Flatten()"
