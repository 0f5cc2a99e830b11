"""The fast CUDA launch's argument flattening and its checks (the launches themselves run on a GPU:
tests/test_kernels.py's CuPy cases; every registered kernel's PTX is checked against the flattening in
test_cuda_kernels_compile_to_ptx)."""

import numpy as np
import pytest
from numba.core import types

from deqcore.backend import fast_launch
from deqcore.backend.fast_launch import FastLauncher, check_parameters, entry_parameters, flat_kinds

PTX = """
.visible .entry _Z6kernel(
	.param .u64 _p0, .param .u64 _p1, .param .u64 _p2, .param .u64 _p3, .param .u64 _p4,
	.param .u64 _p5, .param .u64 _p6, .param .u64 _p7, .param .u64 _p8,
	.param .f32 _p9, .param .u64 _p10, .param .u8 _p11
)
{ ret; }
"""
ARGTYPES = (types.Array(types.float32, 2, "C"), types.float32, types.int64, types.boolean)


def test_parameters_are_read_from_the_ptx_entry():
    name, ptx_types = entry_parameters(PTX)
    assert name == "_Z6kernel"
    assert ptx_types == ["u64"] * 9 + ["f32", "u64", "u8"]
    check_parameters(flat_kinds(ARGTYPES), ptx_types)


@pytest.mark.parametrize("argtypes,message", [
    ((types.Array(types.float32, 3, "C"), types.float32, types.int64, types.boolean), "flattened arguments"),
    ((types.Array(types.float32, 2, "C"), types.float64, types.int64, types.boolean), "64-bit float against"),
    ((types.Array(types.float32, 2, "C"), types.int32, types.int64, types.boolean), "32-bit integer against"),
])
def test_a_mismatch_with_the_ptx_is_refused(argtypes, message):
    with pytest.raises(ValueError, match=message):
        check_parameters(flat_kinds(argtypes), entry_parameters(PTX)[1])


def test_unsupported_arguments_and_entries_are_refused():
    with pytest.raises(ValueError, match="no fast launch"):
        flat_kinds((types.complex128,))
    with pytest.raises(ValueError, match="one kernel entry"):
        entry_parameters(PTX + PTX)
    with pytest.raises(ValueError, match="unsupported kernel parameter"):
        entry_parameters(".entry k(.param .align 8 .b8 s[16])")


def test_flattening_follows_numbas_kernel_abi():
    """An array is meminfo, parent, size, itemsize, data, shape, strides (in bytes); a scalar its value at its
    parameter's width."""
    launcher = object.__new__(FastLauncher)
    launcher.kinds = flat_kinds(ARGTYPES)
    launcher.scalar_types = [None, np.float32, np.int64, np.uint8]
    a = np.zeros((3, 4), dtype=np.float32)[:, ::2]          # strided: (16, 8) bytes
    flat = launcher.flatten((a, 0.5, 7, True))
    assert flat[:4] == [0, 0, 6, 4] and flat[4] is a
    assert flat[5:9] == [3, 2, 16, 8]
    assert [type(v) for v in flat[9:]] == [np.float32, np.int64, np.uint8] and flat[9:] == [0.5, 7, 1]


def test_numbas_launch_is_kept_where_asked_or_where_the_kernel_is_not_covered(monkeypatch):
    class Dispatcher:
        def typeof_pyval(self, value):
            return types.complex128                             # not covered: Numba's launch is kept

        def inspect_asm(self, argtypes):
            raise AssertionError("not reached")

    assert fast_launch.fast_launcher(Dispatcher(), (1j,)) is None
    monkeypatch.setenv("DEQCORE_CUDA_LAUNCH", "numba")
    assert not fast_launch.enabled()
    assert fast_launch.fast_launcher(object(), ()) is None


def test_the_launch_key_is_none_without_cupy_arrays():
    assert fast_launch.launch_key((np.ones(3), 2.0)) is None


def test_the_launch_key_tells_types_apart_and_refuses_other_arguments(monkeypatch):
    """On stand-ins for CuPy arrays (no CuPy arrays without a GPU): dtype, ndim and contiguity decide the key,
    scalars by type; any other argument (a NumPy array, another library's device array) keeps Numba's launch."""
    import sys
    import types as pytypes

    class FakeArray:
        def __init__(self, a):
            self.dtype, self.ndim, self.flags = a.dtype, a.ndim, a.flags

    fake = pytypes.SimpleNamespace(ndarray=FakeArray, cuda=pytypes.SimpleNamespace(
        runtime=pytypes.SimpleNamespace(getDevice=lambda: 0)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    c, f = FakeArray(np.zeros((3, 4))), FakeArray(np.zeros((3, 4), order="F"))
    key = fast_launch.launch_key((c, 1.0, 2, True, np.float32(1)))
    assert key == (0, ("d", 2, True, False), float, int, bool, "f")
    assert fast_launch.launch_key((f,)) != fast_launch.launch_key((c,))
    assert fast_launch.launch_key((FakeArray(np.zeros((3, 4), np.float32)),)) != fast_launch.launch_key((c,))
    assert fast_launch.launch_key((c, np.ones(2))) is None
    assert fast_launch.launch_key((c, object())) is None
    assert fast_launch.launch_key((1.0, 2)) is None
