"""Minimal pytree helpers (nested dicts, lists and tuples of arrays; None is an empty leaf).

The engine layers (adjoint, ode) use these to carry parameter cotangents without importing ``deqcore.nn``.

>>> import numpy as np
>>> tree_map(lambda a, b: a + b, {"w": np.ones(2), "b": (1.0, None)}, {"w": np.ones(2), "b": (2.0, None)})
{'w': array([2., 2.]), 'b': (3.0, None)}
"""

from __future__ import annotations

__all__ = ["tree_map", "tree_leaves", "tree_add", "tree_scale"]


def tree_map(fn, tree, *rest):
    """Apply ``fn`` leaf-wise over trees of the same structure (None stays None).

    >>> import numpy as np, deqcore as dq
    >>> dq.tree_map(lambda a: 2 * a, {"w": np.array([1.0, 2.0]), "b": [3.0, None]})
    {'w': array([2., 4.]), 'b': [6.0, None]}
    """
    if tree is None:
        return None
    if isinstance(tree, dict):
        for other in rest:
            if not isinstance(other, dict) or other.keys() != tree.keys():
                raise ValueError("trees have different structures (dict keys differ)")
        return {k: tree_map(fn, tree[k], *(o[k] for o in rest)) for k in tree}
    if isinstance(tree, (list, tuple)):
        for other in rest:
            if not isinstance(other, (list, tuple)) or len(other) != len(tree):
                raise ValueError("trees have different structures (sequence lengths differ)")
        mapped = [tree_map(fn, t, *(o[i] for o in rest)) for i, t in enumerate(tree)]
        return type(tree)(mapped) if isinstance(tree, list) else tuple(mapped)
    return fn(tree, *rest)


def tree_leaves(tree) -> list:
    """The leaves of a tree in a fixed order (dict keys in insertion order).

    >>> import numpy as np, deqcore as dq
    >>> dq.tree_leaves({"w": 1.0, "b": (2.0, None, [3.0])})
    [1.0, 2.0, 3.0]
    """
    if tree is None:
        return []
    if isinstance(tree, dict):
        return [leaf for k in tree for leaf in tree_leaves(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [leaf for t in tree for leaf in tree_leaves(t)]
    return [tree]


def tree_add(a, b):
    """Leaf-wise sum; ``None`` on either side counts as zero.

    >>> import numpy as np, deqcore as dq
    >>> dq.tree_add({"w": np.ones(2), "b": 1.0}, {"w": np.arange(2.0), "b": 2.0})
    {'w': array([1., 2.]), 'b': 3.0}
    >>> dq.tree_add(None, (1.0, 2.0))
    (1.0, 2.0)
    """
    if a is None:
        return b
    if b is None:
        return a
    return tree_map(lambda x, y: x + y, a, b)


def tree_scale(tree, factor):
    """Every leaf times ``factor``.

    >>> import numpy as np, deqcore as dq
    >>> dq.tree_scale({"w": np.array([1.0, -2.0]), "b": None}, 0.5)
    {'w': array([ 0.5, -1. ]), 'b': None}
    """
    return tree_map(lambda x: x * factor, tree)
