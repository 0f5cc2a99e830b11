"""Where Numba's CUDA target cannot compile (numba-cuda 0.30 under NumPy 2.5), CuPy arrays get the array-code
kernels with one warning saying why, instead of every kernel failing at its first launch."""

import types
import warnings

import numpy as np
import pytest

from deqcore.backend import kernels, numba_tools

FAKE_CUPY = types.SimpleNamespace(__name__="cupy")
PROBLEM = "numba-cuda 0.30.4 cannot compile CUDA kernels with NumPy 2.5.2 (...); install numpy<2.5"


@pytest.fixture
def broken_cuda(monkeypatch):
    monkeypatch.setattr(kernels, "_CUDA_PROBLEM", [PROBLEM])
    monkeypatch.setattr(kernels, "_WARNED_CUDA", [])
    monkeypatch.delenv("DEQCORE_KERNELS", raising=False)


def test_cupy_gets_the_reference_kernels_with_one_warning(broken_cuda):
    spec = kernels.registered_kernels()["anderson_step"]
    assert spec.numba_cuda is not None
    with pytest.warns(RuntimeWarning, match="install numpy<2.5") as record:
        first = kernels.get_kernel("anderson_step", FAKE_CUPY)
        second = kernels.get_kernel("driver_update", FAKE_CUPY)
    assert first is spec.reference
    assert second is kernels.registered_kernels()["driver_update"].reference
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    # NumPy keeps its Numba CPU kernels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.get_kernel("anderson_step", np) is not spec.reference


def test_an_explicit_cuda_request_raises_naming_the_problem(broken_cuda):
    with pytest.raises(RuntimeError, match="impl='numba_cuda' cannot run here: numba-cuda 0.30.4"):
        kernels.get_kernel("anderson_step", FAKE_CUPY, impl="numba_cuda")


def test_the_numpy_2_5_failure_is_named_with_its_fix(monkeypatch):
    def failing_import(name):
        assert name == "numba.cuda.cudaimpl"
        raise AttributeError("module 'numpy' has no attribute 'row_stack'")

    monkeypatch.setattr(numba_tools, "cuda_simulator_enabled", lambda: False)
    monkeypatch.setattr(kernels.importlib, "import_module", failing_import)
    problem = kernels._find_numba_cuda_problem()
    assert f"NumPy {np.__version__}" in problem and "row_stack" in problem and "install numpy<2.5" in problem


def test_a_working_target_reports_no_problem(monkeypatch):
    monkeypatch.setattr(numba_tools, "cuda_simulator_enabled", lambda: False)
    monkeypatch.setattr(kernels.importlib, "import_module", lambda name: types.ModuleType(name))
    assert kernels._find_numba_cuda_problem() is None
