"""Save and load parameter trees as ``.npz`` files without pickle: keys are '/'-joined tree paths.

>>> import numpy as np, tempfile, os
>>> params = {"layer_1": {"weight": np.ones((2, 3)), "bias": np.zeros(2)}}
>>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
>>> save(path, params)
>>> load(path, params)["layer_1"]["weight"].shape
(2, 3)
"""

from __future__ import annotations

import os

import numpy as np

from ..backend import get_namespace, to_host
from .tree import tree_map, tree_paths

__all__ = ["save", "load"]


def save(path, params) -> None:
    """Write every array leaf of ``params`` to ``path`` (an ``.npz``, uncompressed), keyed by its path.

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "p.npz")
    >>> save(path, {"dense": {"weight": np.ones((2, 2))}})
    >>> np.load(path, allow_pickle=False).files
    ['dense/weight']
    """
    entries = tree_paths(params)
    for key, leaf in entries:
        if not hasattr(leaf, "shape"):
            raise TypeError(f"params leaf {key!r} is a {type(leaf).__name__}, not an array")
    np.savez(os.fspath(path), **{key: to_host(leaf) for key, leaf in entries})


def load(path, template):
    """Read parameters saved by :func:`save` into the structure, dtypes and device of ``template``.

    Raises ``ValueError`` listing every missing key, unexpected key and shape mismatch.

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "p.npz")
    >>> save(path, {"weight": np.ones((2, 2))})
    >>> load(path, {"weight": np.zeros((3, 2))})
    Traceback (most recent call last):
    ...
    ValueError: cannot load '...p.npz' into the template: weight: file has shape (2, 2), template ...
    """
    expected = dict(tree_paths(template))
    with np.load(os.fspath(path), allow_pickle=False) as data:
        stored = {key: data[key] for key in data.files}
    problems = []
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    if missing:
        problems.append("missing in the file: " + ", ".join(missing))
    if unexpected:
        problems.append("not in the template: " + ", ".join(unexpected))
    for key, leaf in expected.items():
        if key in stored and tuple(stored[key].shape) != tuple(leaf.shape):
            problems.append(f"{key}: file has shape {tuple(stored[key].shape)}, template expects "
                            f"{tuple(leaf.shape)}")
    if problems:
        raise ValueError(f"cannot load {os.fspath(path)!r} into the template: " + "; ".join(problems))
    leaves = iter(key for key, _ in tree_paths(template))

    def fill(leaf):
        xp = get_namespace(leaf)
        return xp.asarray(stored[next(leaves)], dtype=leaf.dtype)

    return tree_map(fill, template)
