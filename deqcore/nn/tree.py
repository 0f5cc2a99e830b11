"""Parameter trees: nested dicts (and lists/tuples) of arrays, as returned by :func:`deqcore.nn.setup`.

``tree_map``, ``tree_leaves``, ``tree_add`` and ``tree_scale`` are the engine's own helpers (re-exported);
this module adds flattening with paths, raveling to one vector, inner products and device moves.

>>> import numpy as np
>>> tree = {"w": np.ones((2, 2)), "b": np.zeros(2)}
>>> vec, unravel = ravel(tree)
>>> vec.shape, float(unravel(2 * vec)["w"][0, 0])
((6,), 2.0)
>>> float(tree_norm(tree))
2.0
"""

from __future__ import annotations

import numpy as np

from .._tree import tree_add, tree_leaves, tree_map, tree_scale
from ..backend import get_namespace, is_cupy_array
from ..backend import to_namespace as _array_to_namespace

__all__ = [
    "tree_map",
    "tree_leaves",
    "tree_add",
    "tree_sub",
    "tree_scale",
    "tree_dot",
    "tree_norm",
    "tree_flatten",
    "tree_unflatten",
    "tree_paths",
    "zeros_like",
    "ravel",
    "unravel",
    "to_namespace",
    "is_array",
]

_LEAF = object()  # placeholder for a leaf inside a tree definition


def is_array(x) -> bool:
    """True for NumPy and CuPy arrays (Python scalars in states are not array leaves)."""
    return isinstance(x, np.ndarray) or is_cupy_array(x)


def tree_sub(a, b):
    """Leaf-wise difference ``a - b``.

    >>> tree_sub({"w": np.ones(2)}, {"w": np.ones(2)})
    {'w': array([0., 0.])}
    """
    return tree_map(lambda x, y: x - y, a, b)


def tree_dot(a, b):
    """Sum over leaves of ``sum(a * b)``, as a 0-d array on the trees' device (no host transfer).

    >>> float(tree_dot({"w": np.ones(3)}, {"w": np.arange(3.0)}))
    3.0
    """
    la, lb = tree_leaves(a), tree_leaves(b)
    if len(la) != len(lb):
        raise ValueError(f"trees have different numbers of leaves ({len(la)} and {len(lb)})")
    if not la:
        return np.zeros(())
    xp = get_namespace(*la)
    return sum((xp.vdot(x.ravel(), y.ravel()) for x, y in zip(la, lb)), xp.zeros((), dtype=la[0].dtype))


def tree_norm(tree):
    """Euclidean norm of all leaves together (the "global norm"), a 0-d array on the tree's device.

    >>> float(tree_norm({"a": np.array([3.0]), "b": np.array([4.0])}))
    5.0
    """
    leaves = tree_leaves(tree)
    if not leaves:
        return np.zeros(())
    xp = get_namespace(*leaves)
    return xp.sqrt(tree_dot(tree, tree))


def zeros_like(tree):
    """A tree of zeros shaped like ``tree`` (Python scalars stay as they are).

    >>> zeros_like({"w": np.ones(2), "inner": {}})
    {'w': array([0., 0.]), 'inner': {}}
    """
    return tree_map(lambda a: get_namespace(a).zeros_like(a) if is_array(a) else a, tree)


def tree_flatten(tree):
    """``(leaves, treedef)``; :func:`tree_unflatten` rebuilds the tree from ``treedef`` and new leaves.

    >>> leaves, treedef = tree_flatten({"a": np.ones(1), "b": (np.zeros(2), None)})
    >>> len(leaves), tree_unflatten(treedef, [np.full(1, 5.0), np.ones(2)])["a"]
    (2, array([5.]))
    """
    return tree_leaves(tree), tree_map(lambda _: _LEAF, tree)


def tree_unflatten(treedef, leaves):
    """Inverse of :func:`tree_flatten`.

    >>> tree_unflatten(tree_flatten({"a": 1, "b": [2, 3]})[1], [4, 5, 6])
    {'a': 4, 'b': [5, 6]}
    """
    leaves = list(leaves)
    it = iter(leaves)
    count = sum(1 for _ in tree_leaves(treedef))
    if count != len(leaves):
        raise ValueError(f"tree_unflatten: the tree definition has {count} leaves, got {len(leaves)}")
    return tree_map(lambda _: next(it), treedef)


def tree_paths(tree, prefix: str = ""):
    """``[(path, leaf), ...]`` with '/'-joined keys (sequence positions as numbers).

    >>> [p for p, _ in tree_paths({"layer_1": {"weight": 1, "bias": 2}, "layer_2": {}})]
    ['layer_1/weight', 'layer_1/bias']
    """
    if tree is None:
        return []
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return [(prefix, tree)]
    out, seen = [], {}
    for key, sub in items:
        name = str(key)
        if "/" in name:
            raise ValueError(f"tree key {name!r} contains '/', which separates path components")
        if name in seen:     # {1: a, "1": b}: one path for two leaves (a file would keep only one)
            raise ValueError(f"tree keys {seen[name]!r} and {key!r} give the same path component {name!r}")
        seen[name] = key
        key = name
        out.extend(tree_paths(sub, f"{prefix}/{key}" if prefix else key))
    return out


class _Unraveler:
    """Callable that turns a flat vector back into the tree it came from."""

    def __init__(self, treedef, shapes, dtypes):
        self.treedef, self.shapes, self.dtypes = treedef, shapes, dtypes
        self.sizes = [int(np.prod(s)) for s in shapes]
        self.size = sum(self.sizes)

    def __call__(self, vector):
        if getattr(vector, "ndim", None) != 1 or vector.shape[0] != self.size:
            raise ValueError(f"unravel expects a vector of length {self.size}, got shape "
                             f"{getattr(vector, 'shape', None)}")
        leaves, start = [], 0
        for shape, size, dtype in zip(self.shapes, self.sizes, self.dtypes):
            leaves.append(vector[start:start + size].reshape(shape).astype(dtype, copy=False))
            start += size
        return tree_unflatten(self.treedef, leaves)


def ravel(tree):
    """``(vector, unravel)``: all leaves concatenated into one 1-d array, and the function undoing it.

    >>> vec, back = ravel({"w": np.ones((2, 3))})
    >>> vec.shape, back(vec)["w"].shape
    ((6,), (2, 3))
    """
    leaves, treedef = tree_flatten(tree)
    xp = get_namespace(*leaves)
    unraveler = _Unraveler(treedef, [a.shape for a in leaves], [a.dtype for a in leaves])
    if not leaves:
        return xp.zeros(0), unraveler
    return xp.concatenate([a.ravel() for a in leaves]), unraveler


def unravel(vector, like):
    """The tree shaped like ``like`` whose leaves are consecutive pieces of ``vector``.

    >>> unravel(np.arange(3.0), {"a": np.zeros(1), "b": np.zeros(2)})["b"]
    array([1., 2.])
    """
    return ravel(like)[1](vector)


def to_namespace(tree, xp, dtype=None):
    """Move every array leaf to ``xp`` (numpy or cupy), optionally casting floating leaves to ``dtype``.

    Python scalars (counters, flags in states) are left alone.

    >>> to_namespace({"w": np.ones(2), "training": True}, np, dtype=np.float32)["w"].dtype
    dtype('float32')
    """
    def move(a):
        if not is_array(a):
            return a
        a = _array_to_namespace(a, xp)
        if dtype is not None and a.dtype.kind == "f":
            a = a.astype(dtype, copy=False)
        return a

    return tree_map(move, tree)
