"""Array namespaces, dtype/device helpers and the kernel registry (the bottom layer of deqcore)."""

from .kernels import default_kernel, get_kernel, implementations, register_kernel, registered_kernels
from .namespace import (
    check_finite,
    check_float_array,
    cupy_available,
    float_dtype,
    get_namespace,
    is_cupy_array,
    is_cupy_namespace,
    synchronize,
    to_host,
    to_namespace,
)

__all__ = [
    "get_namespace",
    "is_cupy_array",
    "is_cupy_namespace",
    "float_dtype",
    "check_float_array",
    "check_finite",
    "to_host",
    "to_namespace",
    "synchronize",
    "cupy_available",
    "register_kernel",
    "default_kernel",
    "get_kernel",
    "implementations",
    "registered_kernels",
]
