"""A lock around the CUDA simulator's static shared arrays.

Numba's simulator runs each thread of a block as a Python thread and creates a static shared array
(``cuda.shared.array(shape, dtype)``) for a block on the first thread that reaches the call, keyed by the call's
file and line, without a lock: two threads that reach it at once can each create their own array, and the block
then reads memory that none of its threads wrote (a rare, load-dependent NaN in a reduction). :func:`install`
replaces the allocation by one that creates the array under a lock; dynamic shared memory is left as it is.
"""

from __future__ import annotations

import sys
import threading

import numpy as np


def install() -> bool:
    """Patch the simulator (when it is importable); True if patched."""
    try:
        from numba import types
        from numba.cuda.simulator import kernelapi
        from numba.np import numpy_support
    except ImportError:
        return False
    fake_shared = kernelapi.FakeCUDAShared
    if getattr(fake_shared, "_deqcore_locked", False):
        return True
    unpatched = fake_shared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:          # dynamic shared memory, or the simulator's refusal
            return unpatched(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            found = self._allocations.get(key)
            if found is None:
                kind = numpy_support.as_dtype(dtype) if isinstance(dtype, types.Type) else dtype
                found = self._allocations[key] = np.empty(shape, kind)
        return found

    fake_shared.array = array
    fake_shared._deqcore_locked = True
    return True
