"""The layer protocol and the functions that drive it: :func:`setup`, :func:`vjp`, :func:`jvp`.

A layer is a description (sizes, options; no arrays). Its parameters and state live in nested dicts that
the caller passes in and gets back, so every call is a pure function of ``(x, params, state)``.

>>> import numpy as np
>>> from deqcore import nn
>>> model = nn.Dense(3, 2)
>>> params, state = nn.setup(np.random.default_rng(0), model)
>>> y, state = model(np.ones((5, 3)), params, state)
>>> y, pullback, _ = nn.vjp(model, np.ones((5, 3)), params, state)
>>> dx, dparams = pullback(np.ones_like(y))
>>> dx.shape, dparams["weight"].shape
((5, 3), (2, 3))
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod

import numpy as np

from .tree import to_namespace, tree_paths

__all__ = ["Layer", "ShapeError", "setup", "vjp", "jvp", "testmode", "trainmode", "input_pullback",
           "partial_pullback", "bind", "check_params", "check_input_dtype"]


class ShapeError(ValueError):
    """An input whose shape does not fit a layer; the message names the layer and the expected shape.

    >>> issubclass(ShapeError, ValueError)
    True
    """


class Layer(ABC):
    """Base class of every layer (and of models built from layers, such as DEQs).

    A subclass implements four methods, all pure functions of their arguments:

    * ``init(rng) -> (params, state)``: NumPy float64 arrays in nested dicts (``nn.setup`` casts and moves
      them); the default returns ``({}, {})`` for layers without parameters or state;
    * ``__call__(x, params, state) -> (y, state)``;
    * ``vjp(x, params, state) -> (y, pullback, state)`` with ``pullback(dy) -> (dx, dparams)``, where
      ``dparams`` has the structure of ``params``;
    * ``jvp(x, params, state, dx, dparams=None) -> (y, dy)``; ``dparams=None`` means a zero tangent.

    ``x`` is an array with the batch on the leading axis, or a tuple of arrays (then ``dx`` is a tuple).

    Two optional methods make the many calls of one solve cheap (the defaults run the four above):
    ``bind(params, state) -> (x -> y)`` does the parameter-only work once (a weight normalisation), and
    ``linearize(x, params, state) -> (y, dx -> dy)`` sets up the JVP at one point. A pullback may carry
    ``input_fn(wanted) -> (dy -> dx)``, its input part built once (see :func:`input_pullback`).

    >>> import numpy as np
    >>> class Double(Layer):
    ...     def __call__(self, x, params, state):
    ...         return 2 * x, state
    ...     def vjp(self, x, params, state):
    ...         return 2 * x, lambda dy: (2 * dy, {}), state
    ...     def jvp(self, x, params, state, dx, dparams=None):
    ...         return 2 * x, 2 * dx
    >>> Double().vjp(np.ones((1, 2)), {}, {})[1](np.ones((1, 2)))
    (array([[2., 2.]]), {})
    """

    def init(self, rng: np.random.Generator):
        """Fresh ``(params, state)`` on the host (float64 NumPy arrays)."""
        return {}, {}

    @abstractmethod
    def __call__(self, x, params, state):
        """``(y, state)``."""

    @abstractmethod
    def vjp(self, x, params, state):
        """``(y, pullback, state)`` with ``pullback(dy) -> (dx, dparams)``."""

    @abstractmethod
    def jvp(self, x, params, state, dx, dparams=None):
        """``(y, dy)``: the output and its directional derivative along ``(dx, dparams)``."""

    def bind(self, params, state):
        """``x -> y``: this layer's output at fixed ``(params, state)``, with everything that depends on them
        alone (a weight normalisation, a transposed weight) computed once, here, instead of on every call. For
        the many evaluations of one solve (a DEQ's f); the result equals ``self(x, params, state)[0]``
        bit for bit. The bound function skips the input checks of ``__call__``: call the layer once on the
        inputs' shapes first (the DEQs do). The state is not advanced (a spectral norm's vector stays as in
        ``state``, as in every call with that state). Default: the unbound call.

        >>> import numpy as np
        >>> from deqcore import nn
        >>> model = nn.Chain(nn.Dense(3, 3, weight_norm=True), nn.Activation("tanh"))
        >>> params, state = nn.setup(np.random.default_rng(0), model)
        >>> f = model.bind(params, state)
        >>> bool(np.array_equal(f(np.ones((2, 3))), model(np.ones((2, 3)), params, state)[0]))
        True
        """
        return lambda x: self(x, params, state)[0]

    def bind_vjp(self, params, state):
        """``x -> (y, pullback, new_state)``: :meth:`vjp` at fixed ``(params, state)`` with the parameter-only work
        (a weight normalisation and its pullback's set-up) done once, here, instead of on every call: for the many
        VJPs at one set of parameters (a phantom gradient, a fixed-depth chain, a Jacobian regulariser). Each call
        equals ``self.vjp(x, params, state)`` bit for bit, its pullback's too, input checks included.
        Default: the unbound VJP.

        >>> import numpy as np
        >>> from deqcore import nn
        >>> model = nn.Chain(nn.Dense(3, 3, weight_norm=True), nn.Activation("tanh"))
        >>> params, state = nn.setup(np.random.default_rng(0), model)
        >>> y, pullback, _ = model.bind_vjp(params, state)(np.ones((2, 3)))
        >>> dx, dparams = pullback(np.ones((2, 3)))
        >>> bool(np.array_equal(dx, model.vjp(np.ones((2, 3)), params, state)[1](np.ones((2, 3)))[0]))
        True
        """
        return lambda x: self.vjp(x, params, state)

    def linearize(self, x, params, state):
        """``(y, tangent)`` with ``tangent(dx) -> dy``, the JVP along ``dx`` at this point with the parameters
        fixed (``self.jvp(x, params, state, dx)[1]`` bit for bit), everything but the tangent's own products
        computed once: for the many JVPs of one linear solve. Default: the JVP itself.

        >>> import numpy as np
        >>> from deqcore import nn
        >>> model = nn.Dense(2, 2, "tanh")
        >>> params, state = nn.setup(np.random.default_rng(0), model)
        >>> y, tangent = model.linearize(np.ones((1, 2)), params, state)
        >>> bool(np.array_equal(tangent(np.ones((1, 2))), nn.jvp(model, np.ones((1, 2)), params, state,
        ...                                                        np.ones((1, 2)))[1]))
        True
        """
        return self(x, params, state)[0], lambda dx: self.jvp(x, params, state, dx)[1]

    def row_coupling(self, state):
        """None when each output row depends on its own input row alone (with this ``state``), so the layer may
        run on some rows of a batch; else a short reason naming the layer (a DEQ with ``compact=True`` then
        evaluates every row). Default None; a layer that mixes samples (batch statistics) or depends on a
        sample's position in the batch (a dropout mask drawn over the whole batch) overrides it, and containers
        ask their sub-layers.

        >>> import numpy as np
        >>> from deqcore import nn
        >>> model = nn.Chain(nn.Dense(2, 2), nn.BatchNorm(2))
        >>> params, state = nn.setup(np.random.default_rng(0), model)
        >>> model.row_coupling(state)
        'BatchNorm(2) in training mode (batch statistics)'
        >>> model.row_coupling(nn.testmode(state)) is None
        True
        """
        return None

    def __repr__(self):
        return type(self).__name__ + "()"


def _check_layer(model):
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a deqcore.nn.Layer, got {type(model).__name__}")


def setup(rng, model, *, xp=None, dtype=np.float64):
    """Initialise ``model``: ``(params, state)`` as nested dicts of arrays.

    Args:
        rng: a ``numpy.random.Generator`` (an int seed is accepted too).
        model: a :class:`Layer`.
        xp: the array namespace for the result, ``numpy`` (default) or ``cupy``.
        dtype: floating dtype of the parameters (float64 default, or float32).

    >>> import numpy as np
    >>> from deqcore import nn
    >>> params, state = nn.setup(np.random.default_rng(0), nn.Dense(2, 3), dtype=np.float32)
    >>> params["weight"].shape, params["weight"].dtype
    ((3, 2), dtype('float32'))
    """
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        rng = np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (or an int seed), got {type(rng).__name__}")
    _check_layer(model)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    params, state = model.init(rng)
    xp = np if xp is None else xp
    return to_namespace(params, xp, dtype), to_namespace(state, xp, dtype)


def vjp(model, x, params, state):
    """``(y, pullback, state)``: run ``model`` and return ``pullback(dy) -> (dx, dparams)``.

    >>> import numpy as np
    >>> from deqcore import nn
    >>> model = nn.Dense(2, 1, use_bias=False)
    >>> params = {"weight": np.array([[3.0, 4.0]])}
    >>> y, pullback, _ = nn.vjp(model, np.ones((1, 2)), params, {})
    >>> pullback(np.ones((1, 1)))
    (array([[3., 4.]]), {'weight': array([[1., 1.]])})
    """
    _check_layer(model)
    y, pullback, state = model.vjp(x, params, state)
    return y, _checked_pullback(pullback, y, model), state


def _checked_pullback(pullback, y, model):
    """``pullback`` refusing a cotangent shaped unlike ``y`` (NumPy would broadcast a (1, n) or (B, 1) one
    through an activation or a norm and return a gradient of the wrong problem without a word)."""
    shapes = [(path, tuple(leaf.shape)) for path, leaf in tree_paths(y) if hasattr(leaf, "shape")]
    dtypes = dict((path, leaf.dtype) for path, leaf in tree_paths(y) if hasattr(leaf, "dtype"))

    def checked(dy, *args, **kwargs):
        got = dict((path, tuple(leaf.shape)) for path, leaf in tree_paths(dy) if hasattr(leaf, "shape"))
        for path, shape in shapes:
            if path in got and got[path] != shape:
                where = f"dy[{path}]" if path else "dy"
                raise ValueError(f"{where} has shape {got[path]} but {model!r} returned shape {shape}: the "
                                 "cotangent must have the output's shape")
        return pullback(_cast_like(dy, dtypes), *args, **kwargs)

    for name in ("input_only", "partial", "input_fn"):      # what input_pullback / partial_pullback use
        if hasattr(pullback, name):
            setattr(checked, name, getattr(pullback, name))
    return checked


def _cast_like(dy, dtypes, path=""):
    """``dy`` with each floating leaf cast to the dtype of the output leaf at its path (a float64 cotangent of a
    float32 output would make every gradient float64; the DEQ models cast it too)."""
    if isinstance(dy, (tuple, list)):
        return type(dy)(_cast_like(d, dtypes, f"{path}/{i}" if path else str(i)) for i, d in enumerate(dy))
    if isinstance(dy, dict):
        return {k: _cast_like(d, dtypes, f"{path}/{k}" if path else str(k)) for k, d in dy.items()}
    want = dtypes.get(path)
    dtype = getattr(dy, "dtype", None)
    if want is not None and dtype is not None and dtype != want and dtype.kind == "f" and want.kind == "f":
        return dy.astype(want)
    return dy


def jvp(model, x, params, state, dx, dparams=None):
    """``(y, dy)``: the forward-mode derivative of ``model`` along ``dx`` (and ``dparams``; None = zero).

    >>> import numpy as np
    >>> from deqcore import nn
    >>> params = {"weight": np.array([[3.0, 4.0]])}
    >>> nn.jvp(nn.Dense(2, 1, use_bias=False), np.ones((1, 2)), params, {}, np.array([[1.0, 0.0]]))
    (array([[7.]]), array([[3.]]))
    """
    _check_layer(model)
    dx = _checked_tangent(dx, x, "dx", "x")
    if dparams is not None:
        dparams = _checked_tangent(dparams, params, "dparams", "params")
    return model.jvp(x, params, state, dx, dparams)


def _checked_tangent(tangent, primal, name, primal_name):
    """``tangent`` with the tree and shapes of ``primal`` (NumPy would broadcast a (1, n) tangent through the
    layer and return the tangent of another problem without a word), floating leaves cast to the primal's
    dtypes (as a cotangent is: a float64 tangent would make a float32 layer's output tangent float64)."""
    primal_leaves = [(path, leaf) for path, leaf in tree_paths(primal) if hasattr(leaf, "shape")]
    tangent_leaves = dict((path, leaf) for path, leaf in tree_paths(tangent) if hasattr(leaf, "shape"))
    missing = [path or name for path, _ in primal_leaves if path not in tangent_leaves]
    if missing:
        raise ValueError(f"{name} must have the tree of {primal_name}; missing: {', '.join(map(repr, missing[:5]))}")
    for path, leaf in primal_leaves:
        got = tangent_leaves[path]
        if tuple(got.shape) != tuple(leaf.shape):
            where = f"{name}[{path!r}]" if path else name
            raise ValueError(f"{where} has shape {tuple(got.shape)} but {primal_name} has {tuple(leaf.shape)}: a "
                             "tangent must have its primal's shape")
    return _cast_like(tangent, dict((path, leaf.dtype) for path, leaf in primal_leaves if hasattr(leaf, "dtype")))


def bind(model, params, state):
    """``x -> y``: ``model`` at fixed ``(params, state)`` with its parameter-only work done once (see
    :meth:`Layer.bind`).

    >>> import numpy as np
    >>> from deqcore import nn
    >>> f = nn.bind(nn.Dense(2, 1, use_bias=False), {"weight": np.array([[3.0, 4.0]])}, {})
    >>> f(np.ones((1, 2)))
    array([[7.]])
    """
    _check_layer(model)
    return model.bind(params, state)


def input_pullback(pullback, wanted=None):
    """``dy -> dx``: the input part of ``pullback(dy) -> (dx, dparams)`` without computing ``dparams`` when the
    layer knows how (the built-in layers do: an adjoint solve needs many input cotangents and no parameter
    cotangents until its last step). ``wanted``: for a layer called on a tuple, one bool per element; the
    elements not wanted may come back as None. A pullback without the shortcut runs in full.

    >>> import numpy as np
    >>> from deqcore import nn
    >>> model = nn.Parallel(nn.add, nn.Dense(2, 2, use_bias=False), nn.Dense(2, 2))
    >>> params, state = nn.setup(np.random.default_rng(0), model)
    >>> y, pullback, _ = model.vjp((np.ones((1, 2)), np.ones((1, 2))), params, state)
    >>> dz, dx = input_pullback(pullback, (True, False))(np.ones((1, 2)))
    >>> bool(np.allclose(dz, pullback(np.ones((1, 2)))[0][0])), dx
    (True, None)
    """
    make = getattr(pullback, "input_fn", None)
    if make is not None:
        return make(wanted)
    fast = getattr(pullback, "input_only", None)
    if fast is not None:
        return lambda dy: fast(dy, wanted)
    return lambda dy: pullback(dy)[0]


def with_input_only(pullback, input_only, partial=None, input_fn=None):
    """``pullback`` carrying ``input_only(dy, wanted) -> dx`` for :func:`input_pullback` (and, when given,
    ``partial(dy, wanted) -> (dx, dparams)`` for :func:`partial_pullback`, and ``input_fn(wanted) -> (dy -> dx)``,
    the input pullback built once for the many calls of an adjoint solve: :func:`input_pullback` prefers it);
    returns it."""
    pullback.input_only = input_only
    if partial is not None:
        pullback.partial = partial
    if input_fn is not None:
        pullback.input_fn = input_fn
    return pullback


def identity(x):
    """``x`` (the bound form and input pullback of the identity)."""
    return x


def compose(fns):
    """``x -> fns[-1](...fns[0](x))``: one closure for a chain of bound layers or of input pullbacks (the
    common lengths without a loop).

    >>> compose([lambda x: x + 1, lambda x: 2 * x])(1)
    4
    """
    fns = [f for f in fns if f is not identity]
    if not fns:
        return identity
    if len(fns) == 1:
        return fns[0]
    if len(fns) == 2:
        f1, f2 = fns
        return lambda x: f2(f1(x))
    if len(fns) == 3:
        f1, f2, f3 = fns
        return lambda x: f3(f2(f1(x)))

    def composed(x):
        for f in fns:
            x = f(x)
        return x

    return composed


def partial_pullback(pullback, wanted=None):
    """``dy -> (dx, dparams)``: ``pullback`` without the input cotangents that are not ``wanted`` (they may come
    back as None), when the layer knows how (the built-in layers do: the last VJP of an implicit adjoint needs
    the parameters' and x's cotangents, not z's). ``wanted``: None (every input), a bool for a layer called on
    one array, or one bool per element for a layer called on a tuple. A pullback without the shortcut runs in
    full.

    >>> import numpy as np
    >>> from deqcore import nn
    >>> model = nn.Parallel(nn.add, nn.Dense(2, 2, use_bias=False), nn.Dense(2, 2))
    >>> params, state = nn.setup(np.random.default_rng(0), model)
    >>> y, pullback, _ = model.vjp((np.ones((1, 2)), np.ones((1, 2))), params, state)
    >>> (dz, dx), dparams = partial_pullback(pullback, (False, True))(np.ones((1, 2)))
    >>> (_, dx_full), dparams_full = pullback(np.ones((1, 2)))
    >>> dz, bool(np.array_equal(dx, dx_full)), bool(np.array_equal(dparams["layer_1"]["weight"],
    ...                                                            dparams_full["layer_1"]["weight"]))
    (None, True, True)
    """
    fast = getattr(pullback, "partial", None)
    if fast is not None and wanted is not None:
        return lambda dy: fast(dy, wanted)
    return pullback


def _set_training(state, flag):
    if isinstance(state, dict):
        return {k: (flag if k == "training" else _set_training(v, flag)) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_set_training(v, flag) for v in state)
    return state


def testmode(state):
    """A copy of ``state`` with every ``training`` flag off (dropout off, spectral norm's vector frozen).

    >>> testmode({"layer_1": {"training": True, "seed": 3}})
    {'layer_1': {'training': False, 'seed': 3}}
    """
    return _set_training(state, False)


testmode.__test__ = False      # not a test: pytest would collect it by its name (in core.py's doctests, or on import)


def trainmode(state):
    """A copy of ``state`` with every ``training`` flag on.

    >>> trainmode({"layer_1": {"training": False}})
    {'layer_1': {'training': True}}
    """
    return _set_training(state, True)


def shape_error(layer, expected: str, x) -> ShapeError:
    """The error for an input ``x`` that does not fit ``layer`` (used by the layers' input checks)."""
    got = f"shape {tuple(x.shape)}" if hasattr(x, "shape") else f"a {type(x).__name__}"
    return ShapeError(f"{layer!r}: expected an input of shape {expected}; got {got}")


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_params(layer, params, shapes):
    """Raise an error naming ``params[key]`` when ``params`` lacks a key of ``shapes`` (``{key: shape}``) or holds
    another shape there (NumPy would broadcast a (1, n) bias, or fail with its own message); return params."""
    if not isinstance(params, dict):
        raise TypeError(f"{layer!r}: params must be a dict (from nn.setup), got {type(params).__name__}")
    for key, shape in shapes.items():
        leaf = params.get(key)
        if leaf is None:
            raise ValueError(f"{layer!r}: params has no {key!r}; set the parameters up with nn.setup(rng, model)")
        if tuple(getattr(leaf, "shape", ())) != shape:
            raise ValueError(f"{layer!r}: params[{key!r}] has shape {tuple(getattr(leaf, 'shape', ()))}, "
                             f"expected {shape}")
    return params


def check_input_dtype(layer, x, held):
    """Raise a TypeError naming x when its dtype is not ``held``, the dtype of what ``layer`` holds (parameters,
    running statistics): NumPy would promote the float32 side, a float64 output and float64 gradients."""
    if x.dtype != held:
        raise TypeError(f"{layer!r}: x has dtype {x.dtype} but the parameters are {held}: cast x "
                        f"(x.astype(np.{held})) or set the parameters up in {x.dtype} "
                        f"(nn.setup(rng, model, dtype=np.{x.dtype}))")


def check_array_input(layer, x):
    """Reject tuples and non-arrays with a message naming the layer; return x."""
    if isinstance(x, (tuple, list)):
        raise TypeError(f"{layer!r} takes one array, got a {type(x).__name__} of {len(x)}; route tuples "
                        "with nn.Parallel")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{layer!r} takes a NumPy or CuPy array, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:     # (complex would pass through silently, float16 and ints be upcast)
        raise TypeError(f"{layer!r}: x has dtype {x.dtype}; layers take float32 or float64 inputs "
                        "(x.astype(np.float32))")
    return x
