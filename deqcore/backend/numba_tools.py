"""Numba set-up: a writable cache folder, lazy imports, CuPy's stream and launch sizes (kernels launch through
:mod:`deqcore.backend.launch`).

Importing this module imports numba; the rest of deqcore imports it only when a Numba kernel is used.
"""

from __future__ import annotations

import os
import tempfile


def _writable_cache_dir() -> str | None:
    configured = os.environ.get("NUMBA_CACHE_DIR")
    candidates = [configured] if configured else []
    candidates += [
        os.path.join(os.path.expanduser("~"), ".cache", "deqcore", "numba"),
        os.path.join(tempfile.gettempdir(), "deqcore-numba-cache"),
    ]
    for path in candidates:
        try:
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, ".write-probe")
            with open(probe, "w"):
                pass
            os.remove(probe)
            return path
        except OSError:
            continue
    return None


CACHE_DIR = _writable_cache_dir()
if CACHE_DIR is not None:
    os.environ.setdefault("NUMBA_CACHE_DIR", CACHE_DIR)
#: pass as ``cache=CACHE`` to ``numba.njit``: caching only where a writable folder exists
CACHE = CACHE_DIR is not None

import numba  # noqa: E402  (after NUMBA_CACHE_DIR is set)

__all__ = ["numba", "CACHE", "CACHE_DIR", "cuda_simulator_enabled", "cupy_stream", "launch_config"]


def cuda_simulator_enabled() -> bool:
    """True when Numba runs CUDA kernels on its Python simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def cupy_stream():
    """The Numba view of CuPy's current stream (launch kernels there so they order with CuPy work)."""
    import cupy
    from numba import cuda

    return cuda.external_stream(cupy.cuda.get_current_stream().ptr)


def launch_config(n: int, threads: int = 256) -> tuple[int, int]:
    """(blocks, threads) covering ``n`` work items; small under the simulator, which is slow."""
    if cuda_simulator_enabled():
        threads = min(threads, 32)
    blocks = max(1, (n + threads - 1) // threads)
    return blocks, threads
