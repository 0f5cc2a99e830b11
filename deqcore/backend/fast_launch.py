"""Launching a compiled Numba CUDA kernel through CuPy's driver binding: a few µs of host time a launch.

Numba's own launch wraps each CuPy array as a Numba device array and types every argument again: measured on
an H200 (numba-cuda 0.30, CuPy 14), ~100 µs of host time for a kernel of two arrays and 200-1100 µs for the
solvers' kernels of five to fifteen, while the kernels themselves run for 10-500 µs. After Numba has compiled a
kernel for some argument types, :func:`fast_launcher` loads that overload's PTX into a CuPy module once and
launches it with the arguments flattened the way Numba's kernel ABI passes them (an array is meminfo, parent,
size, itemsize, data pointer, shape, strides; a scalar is its value). The flattening is checked against the
PTX entry's parameter list when the launcher is built: any kernel whose parameters do not match, or whose
module does not load, keeps Numba's launch. ``DEQCORE_CUDA_LAUNCH=numba`` keeps Numba's launch for every
kernel.

>>> entry_parameters('.visible .entry _Z1kPd(\\n .param .u64 _p0,\\n .param .f64 _p1\\n)\\n{')
('_Z1kPd', ['u64', 'f64'])
"""

from __future__ import annotations

import os
import re

import numpy as np

__all__ = ["FastLauncher", "fast_launcher", "entry_parameters", "flat_kinds", "check_parameters", "launch_key", "enabled"]

_ENTRY = re.compile(r"\.entry\s+([\w$.]+)\s*\(([^)]*)\)", re.S)
_PARAM = re.compile(r"^\.param\s+\.([usbf])(8|16|32|64)\s+[\w$.]+$")
_SCALAR_TYPES = {(64, True): np.float64, (32, True): np.float32, (64, False): np.int64, (32, False): np.int32,
                 (16, False): np.int16, (8, False): np.uint8}


def enabled() -> bool:
    """False when ``DEQCORE_CUDA_LAUNCH=numba`` asks for Numba's launch everywhere."""
    return os.environ.get("DEQCORE_CUDA_LAUNCH", "").lower() != "numba"


def entry_parameters(ptx: str):
    """(the kernel's entry name, the PTX types of its parameters) of the single ``.entry`` in ``ptx``."""
    entries = _ENTRY.findall(ptx)
    if len(entries) != 1:
        raise ValueError(f"expected one kernel entry in the PTX, found {len(entries)}")
    name, params = entries[0]
    types = []
    for param in (p.strip() for p in params.split(",") if p.strip()):
        match = _PARAM.match(" ".join(param.split()))
        if match is None:
            raise ValueError(f"unsupported kernel parameter {param!r}")
        types.append(match.group(1) + match.group(2))
    return name, types


def flat_kinds(argtypes) -> list:
    """Per Numba argument type: ``("array", ndim)`` or ``("scalar", bits, is_float)``; ValueError for others."""
    from numba.core import types

    kinds = []
    for ty in argtypes:
        if isinstance(ty, types.Array):
            kinds.append(("array", ty.ndim))
        elif isinstance(ty, types.Float) and ty.bitwidth in (32, 64):
            kinds.append(("scalar", ty.bitwidth, True))
        elif isinstance(ty, types.Boolean):
            kinds.append(("scalar", 8, False))
        elif isinstance(ty, types.Integer) and ty.signed and ty.bitwidth in (16, 32, 64):
            kinds.append(("scalar", ty.bitwidth, False))
        else:
            raise ValueError(f"no fast launch for arguments of type {ty}")
    return kinds


def check_parameters(kinds, ptx_types) -> None:
    """ValueError unless the flattened arguments of ``kinds`` match the PTX parameters one for one in width and
    kind (an array's fields are 64-bit integers and a pointer; a float is ``.f`` or ``.b``, an integer ``.u``,
    ``.s`` or ``.b``)."""
    expected = []
    for kind in kinds:
        if kind[0] == "array":
            expected += [(64, False)] * (5 + 2 * kind[1])   # meminfo, parent, size, itemsize, data, shape, strides
        else:
            expected.append(kind[1:])
    if len(expected) != len(ptx_types):
        raise ValueError(f"{len(expected)} flattened arguments against {len(ptx_types)} PTX parameters")
    for (bits, is_float), ptx in zip(expected, ptx_types):
        if int(ptx[1:]) != bits or ptx[0] not in ("fb" if is_float else "usb"):
            raise ValueError(f"a {bits}-bit {'float' if is_float else 'integer'} against PTX parameter .{ptx}")


def launch_key(args):
    """What decides the compiled overload of a launch on these arguments: per array its dtype, ndim and
    contiguity, per scalar its type; None unless some argument is a CuPy array and every other one a CuPy array
    or a bool, int or float (Python or NumPy)."""
    import sys

    cupy = sys.modules.get("cupy")
    if cupy is None:
        return None
    key = []
    any_cupy = False
    for a in args:
        if isinstance(a, cupy.ndarray):
            any_cupy = True
            flags = a.flags
            key.append((a.dtype.char, a.ndim, flags.c_contiguous, flags.f_contiguous))
        elif isinstance(a, np.generic):
            key.append(a.dtype.char)
        elif type(a) in (bool, int, float):
            key.append(type(a))
        else:                                       # NumPy arrays, other device arrays: Numba's launch
            return None
    return (cupy.cuda.runtime.getDevice(), *key) if any_cupy else None   # (a module is loaded on one device)


class FastLauncher:
    """A compiled overload loaded into CuPy, called as ``launcher(grid, block, args)`` on CuPy's current
    stream. Array fields go to CuPy as Python ints (passed as 64-bit integers) and the array itself (passed as
    its data pointer); scalars as NumPy scalars of their parameter's width."""

    __slots__ = ("function", "kinds", "scalar_types")

    def __init__(self, ptx: str, argtypes):
        from cupy.cuda import function

        name, ptx_types = entry_parameters(ptx)
        self.kinds = flat_kinds(argtypes)
        check_parameters(self.kinds, ptx_types)
        self.scalar_types = [None if kind[0] == "array" else _SCALAR_TYPES[kind[1:]] for kind in self.kinds]
        module = function.Module()
        module.load(ptx.encode())
        self.function = module.get_function(name)

    def flatten(self, args) -> list:
        """The kernel's parameters for ``args``."""
        flat = []
        for a, scalar in zip(args, self.scalar_types):
            if scalar is None:
                flat += (0, 0, a.size, a.itemsize, a)
                flat += a.shape
                flat += a.strides
            else:
                flat.append(scalar(a))
        return flat

    def __call__(self, grid, block, args) -> None:
        self.function(grid if isinstance(grid, tuple) else (grid,), block if isinstance(block, tuple) else (block,),
                      tuple(self.flatten(args)))


def fast_launcher(dispatcher, device_args):
    """A :class:`FastLauncher` for the overload ``dispatcher`` compiled for ``device_args`` (Numba's device-array
    view of the arguments), or None where the kernel keeps Numba's launch."""
    if not enabled():
        return None
    try:
        argtypes = tuple(dispatcher.typeof_pyval(a) for a in device_args)
        return FastLauncher(dispatcher.inspect_asm(argtypes), argtypes)
    except Exception:   # a kernel this does not cover keeps Numba's launch (always correct, only slower)
        return None
