"""The tests' lock around the CUDA simulator's static shared arrays (tests/cudasim_patch.py)."""

import os

import numba
import numpy as np
import pytest
from numba import cuda   # a module global: the simulator swaps globals (not closures) for its stand-in

pytestmark = pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1", reason="runs on the CUDA simulator")


def test_each_call_site_has_one_shared_array_per_launch_seen_by_every_thread():
    from numba.cuda.simulator import kernelapi

    assert getattr(kernelapi.FakeCUDAShared, "_deqcore_locked", False)

    @cuda.jit
    def sums(out):
        first = cuda.shared.array(16, numba.float64)
        second = cuda.shared.array(16, numba.float64)
        i = cuda.threadIdx.x
        first[i] = i
        second[i] = 100.0 * i
        cuda.syncthreads()
        if i == 0:
            a = 0.0
            b = 0.0
            for j in range(16):
                a += first[j]
                b += second[j]
            out[cuda.blockIdx.x, 0] = a
            out[cuda.blockIdx.x, 1] = b

    out = np.full((4, 2), np.nan)
    for _ in range(3):
        sums[4, 16](out)
        np.testing.assert_array_equal(out, np.tile([120.0, 12000.0], (4, 1)))   # distinct, shared by all
