"""The kernel registry: every fused kernel has a reference implementation on the array namespace (the
ground truth) and, where they pay, a Numba CPU and a Numba CUDA version with the same signature.

Implementations are named by ``"module:attribute"`` strings and imported on first use, so registering a
kernel never imports numba. ``DEQCORE_KERNELS=reference`` forces the reference implementations.

>>> import numpy as np
>>> register_kernel("doc_axpy", reference=lambda a, x, y: a * x + y)
>>> get_kernel("doc_axpy", np, impl="reference")(2.0, np.ones(2), np.ones(2))
array([3., 3.])
>>> sorted(implementations("doc_axpy"))
['reference']
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

from .namespace import is_cupy_namespace

__all__ = ["register_kernel", "get_kernel", "default_kernel", "implementations", "registered_kernels", "KernelSpec", "IMPLS",
           "numba_cuda_problem"]

IMPLS = ("reference", "numba_cpu", "numba_cuda")
#: the float types a signature template's ``{t}`` stands for
FLOAT_TYPES = ("float64", "float32")


@dataclass
class KernelSpec:
    """One registered kernel.

    ``cuda_ptx_targets`` lists ``("module:kernel_pyfunc", "signature")`` pairs: the raw CUDA kernel
    functions with one signature each, compiled to PTX by the test suite to check they build for sm_90. At
    registration a signature holding ``{t}`` becomes one target per float type (float64, float32).
    ``example`` names a function ``example(rng, dtype, size="small") -> tuple of NumPy arguments`` (``size``
    optional; the GPU benchmark asks for ``size="large"``, arguments of a few MiB): the test suite runs
    every implementation on it and compares the outputs with the reference's (kernels that update arrays in
    place return them, so they are compared too). ``traffic`` names a function ``traffic(*args) -> int``: the
    fewest bytes any implementation must read and write for those arguments, which the GPU benchmark divides
    by the kernel's time to compare it with a device-to-device copy.
    """

    name: str
    reference: Callable
    numba_cpu: str | None = None
    numba_cuda: str | None = None
    cuda_ptx_targets: tuple = ()
    example: str | None = None
    traffic: str | None = None
    _loaded: dict = field(default_factory=dict, repr=False)

    def load(self, impl: str) -> Callable:
        if impl == "reference":
            return self.reference
        if impl not in self._loaded:
            target = getattr(self, impl)
            if target is None:
                raise LookupError(f"kernel {self.name!r} has no {impl} implementation")
            self._loaded[impl] = resolve(target)
        return self._loaded[impl]


_REGISTRY: dict[str, KernelSpec] = {}


def resolve(target: str):
    """Import ``"package.module:attr"``."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register_kernel(name: str, *, reference: Callable, numba_cpu: str | None = None,
                    numba_cuda: str | None = None, cuda_ptx_targets=(), example: str | None = None,
                    traffic: str | None = None) -> None:
    """Register (or replace) a kernel."""
    if not callable(reference):
        raise TypeError("reference must be callable")
    targets = []
    for target, signature in cuda_ptx_targets:   # "{t}" in a signature: one target per float type
        types = FLOAT_TYPES if "{t}" in signature else (None,)
        targets += [(target, signature.format(t=t) if t else signature) for t in types]
    _REGISTRY[name] = KernelSpec(name, reference, numba_cpu, numba_cuda, tuple(targets), example, traffic)


def registered_kernels() -> dict[str, KernelSpec]:
    """A copy of the registry."""
    return dict(_REGISTRY)


def implementations(name: str) -> list[str]:
    """The implementations registered for a kernel."""
    spec = _spec(name)
    return [impl for impl in IMPLS if impl == "reference" or getattr(spec, impl) is not None]


def _spec(name: str) -> KernelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LookupError(f"no kernel named {name!r}; registered: {sorted(_REGISTRY)}") from None


def _numba_usable() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


_CUDA_PROBLEM: list = []   # [why Numba's CUDA target cannot compile here, or None], found once


def numba_cuda_problem() -> str | None:
    """Why Numba's CUDA target cannot compile kernels in this environment, or None when it can.

    Found once, by loading what the target's first compilation loads. numba-cuda 0.30 (in maintenance mode)
    fails there under NumPy 2.5, which removed ``np.row_stack``: every CUDA kernel would then fail at its
    first launch. On the CUDA simulator, or where numba-cuda is not installed and no CuPy array is ever
    passed, nothing is loaded.

    >>> numba_cuda_problem() is None or isinstance(numba_cuda_problem(), str)
    True
    """
    if not _CUDA_PROBLEM:
        _CUDA_PROBLEM.append(_find_numba_cuda_problem())
    return _CUDA_PROBLEM[0]


def _find_numba_cuda_problem() -> str | None:
    try:
        from .numba_tools import cuda_simulator_enabled

        if cuda_simulator_enabled():
            return None
        importlib.import_module("numba.cuda.cudaimpl")   # the target's registries (its first compile loads them)
    except Exception as err:   # any failure here would otherwise surface at every kernel's first launch
        import numpy

        from importlib.metadata import PackageNotFoundError, version

        try:
            numba_cuda = f"numba-cuda {version('numba-cuda')}"
        except PackageNotFoundError:
            numba_cuda = "numba-cuda (not installed)"
        advice = ("install numpy<2.5 (numba-cuda 0.30 refers to np.row_stack, removed in NumPy 2.5)"
                  if "row_stack" in str(err) else "install a numba-cuda that matches this CUDA and NumPy")
        return (f"{numba_cuda} cannot compile CUDA kernels with NumPy {numpy.__version__} "
                f"({type(err).__name__}: {err}); {advice}")
    return None


_WARNED_CUDA: list = []


def _warn_cuda_fallback(problem: str) -> None:
    if not _WARNED_CUDA:
        _WARNED_CUDA.append(True)
        warnings.warn(f"deqcore runs its array-code (reference) kernels on CuPy arrays, slower than the fused "
                      f"CUDA kernels: {problem}", RuntimeWarning, stacklevel=4)


_DEFAULTS: dict = {}   # (name, namespace) -> get_kernel's default choice


def default_kernel(name: str, xp) -> Callable:
    """:func:`get_kernel`'s default choice for ``name`` on ``xp``, looked up once (a hot path's few
    microseconds); with ``DEQCORE_KERNELS`` set, looked up on every call, so that the variable keeps choosing."""
    if os.environ.get("DEQCORE_KERNELS"):
        return get_kernel(name, xp)
    kernel = _DEFAULTS.get((name, xp))
    if kernel is None:
        kernel = _DEFAULTS[(name, xp)] = get_kernel(name, xp)
    return kernel


def get_kernel(name: str, xp, impl: str | None = None) -> Callable:
    """The implementation of kernel ``name`` for namespace ``xp``.

    ``impl`` picks one explicitly (``"reference"``, ``"numba_cpu"``, ``"numba_cuda"``); by default NumPy
    gets the Numba CPU version and CuPy the Numba CUDA version where registered, else the reference. Where
    Numba's CUDA target cannot compile (:func:`numba_cuda_problem`), CuPy gets the reference with one
    ``RuntimeWarning`` saying why, and an explicit ``impl="numba_cuda"`` raises ``RuntimeError``.
    """
    spec = _spec(name)
    if impl is None:
        impl = os.environ.get("DEQCORE_KERNELS") or None
        if impl == "auto":
            impl = None
    if impl is not None:
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if impl != "reference" and getattr(spec, impl) is None:
            impl = "reference" if os.environ.get("DEQCORE_KERNELS") else impl
        if impl == "numba_cuda" and numba_cuda_problem() is not None:
            raise RuntimeError(f"kernel {name!r}: impl='numba_cuda' cannot run here: {numba_cuda_problem()}")
        return spec.load(impl)
    preferred = "numba_cuda" if is_cupy_namespace(xp) else "numba_cpu"
    if getattr(spec, preferred) is None or not _numba_usable():
        return spec.reference
    if preferred == "numba_cuda" and numba_cuda_problem() is not None:
        _warn_cuda_fallback(numba_cuda_problem())
        return spec.reference
    return spec.load(preferred)
