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
from dataclasses import dataclass, field
from typing import Callable

from .namespace import is_cupy_namespace

__all__ = ["register_kernel", "get_kernel", "default_kernel", "implementations", "registered_kernels", "KernelSpec", "IMPLS"]

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
    gets the Numba CPU version and CuPy the Numba CUDA version where registered, else the reference.
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
        return spec.load(impl)
    preferred = "numba_cuda" if is_cupy_namespace(xp) else "numba_cpu"
    if getattr(spec, preferred) is not None and _numba_usable():
        return spec.load(preferred)
    return spec.reference
