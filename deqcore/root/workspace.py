"""Large NumPy work arrays reused from one solve to the next.

A solver's history ring (Anderson's G and F, a few hundred KiB to a few MiB) is allocated once per solve. glibc
serves such sizes with fresh pages from the operating system and returns them on free, so every solve paid a
page fault per 4 KiB page on first touch (measured: 0.5-0.6 ms for Anderson's two rings at batch 64 × width
256, float32, history 10 — about three f-evaluations of that DEQ). :func:`take` hands out an array that a
previous solve used and nobody references any more (the pool's own references only), else a new one it keeps
for later (at most :data:`KEEP` per shape and dtype, and only arrays up to :data:`MAX_BYTES`). The contents are
whatever the last user left: callers write before they read.

>>> import numpy as np
>>> a = take((4, 3), np.float32)
>>> b = take((4, 3), np.float32)
>>> a is b                      # a is still referenced: a second array
False
>>> del a
>>> take((4, 3), np.float32).shape
(4, 3)
"""

from __future__ import annotations

import sys
import threading

import numpy as np

__all__ = ["take", "KEEP", "MAX_BYTES"]

#: arrays kept per (shape, dtype): a solution held by the caller (a model's last solution, an adjoint's
#: reference to the forward) keeps its ring, and the next solve takes another
KEEP = 3
#: shapes kept (the least recently added are dropped first)
SHAPES = 8
#: larger arrays are not kept (memory held between solves stays bounded: KEEP × this per shape)
MAX_BYTES = 32 * 2 ** 20

_pool: dict = {}
_lock = threading.Lock()


def _free_refcount():
    held = [np.empty(1)]
    for a in held:
        return sys.getrefcount(a)


#: sys.getrefcount of a pooled array inside :func:`take`'s loop when nothing else references it
_FREE = _free_refcount()


def take(shape, dtype):
    """An uninitialised NumPy array of ``shape`` and ``dtype``, reused where one is free."""
    dtype = np.dtype(dtype)
    key = (tuple(shape), dtype.str)
    with _lock:
        held = _pool.get(key)
        if held is not None:
            for a in held:
                if sys.getrefcount(a) == _FREE:
                    return a
        a = np.empty(shape, dtype=dtype)
        if a.nbytes <= MAX_BYTES:
            if key not in _pool and len(_pool) >= SHAPES:
                del _pool[next(iter(_pool))]
            held = _pool.setdefault(key, [])
            if len(held) < KEEP:
                held.append(a)
        return a
