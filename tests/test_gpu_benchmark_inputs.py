"""The GPU benchmark's inputs, checked here so that its one run on a borrowed GPU cannot fail on them: every
kernel with a CUDA version has a large example (a few MiB, so the timing is not launch-bound) and a memory
traffic model consistent with its arrays."""

import importlib.util
import pathlib

import numpy as np
import pytest

from deqcore.backend import kernels as registry
from tests.test_kernels import SPECS

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CUDA_KERNELS = sorted(name for name, spec in SPECS.items() if spec.numba_cuda)


@pytest.mark.parametrize("name", CUDA_KERNELS)
def test_large_example_and_traffic(name):
    spec = SPECS[name]
    assert spec.example and spec.traffic, f"{name}: the bandwidth benchmark needs an example and a traffic model"
    args = _bench_module().kernel_arguments(spec, np, size="large")
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    total = sum(a.nbytes for a in arrays)
    assert 2**20 <= total <= 2**31, f"{name}: large example of {total} bytes"
    traffic = int(registry.resolve(spec.traffic)(*args))
    # at least one full read of the largest input, at most every array read and written a few times
    assert max(a.nbytes for a in arrays) // 2 <= traffic <= 8 * total
