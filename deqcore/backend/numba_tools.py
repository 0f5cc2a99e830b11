"""Numba set-up: a writable cache folder, lazy imports, CuPy's stream and launch sizes (kernels launch through
:mod:`deqcore.backend.launch`).

Importing this module imports numba; the rest of deqcore imports it only when a Numba kernel is used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time


def sources_key(root: str | None = None) -> str:
    """A digest of deqcore's own source files (their paths and contents).

    Numba checks a cached function against the time stamp of the file that defines it only, so a compiled loop
    that inlines helpers from other modules (the step-size rule, the Newton tests) would keep running an edited
    helper's old code. Caching under this key makes any change of the package's sources recompile everything.

    >>> key = sources_key()
    >>> len(key), key == sources_key()
    (16, True)
    """
    if root is None:                                  # (the package's folder; another one in tests)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha1()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as source:
                    digest.update(source.read())
    return digest.hexdigest()[:16]


def _prune_stale(base: str, keep: str, max_age_days: float = 14.0) -> None:
    """Remove the cache folders of other source keys under ``base`` untouched for ``max_age_days``."""
    cutoff = time.time() - max_age_days * 86400.0
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        if entry.name != keep and entry.name.startswith("src-") and entry.is_dir(follow_symlinks=False):
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                continue


def _writable_cache_dir() -> str | None:
    """A writable folder for Numba's cache, one per :func:`sources_key` (``$NUMBA_CACHE_DIR``, else
    ``~/.cache/deqcore/numba``, else the temporary folder's ``deqcore-numba-cache``), or None."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    candidates = [configured] if configured else []
    candidates += [
        os.path.join(os.path.expanduser("~"), ".cache", "deqcore", "numba"),
        os.path.join(tempfile.gettempdir(), "deqcore-numba-cache"),
    ]
    key = "src-" + sources_key()
    for base in candidates:
        # (a child process inherits the keyed folder itself)
        path = base if os.path.basename(os.path.normpath(base)) == key else os.path.join(base, key)
        try:
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, ".write-probe")
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError:
            continue
        if path != base:
            _prune_stale(base, key)
        return path
    return None


CACHE_DIR = _writable_cache_dir()
if CACHE_DIR is not None:
    os.environ["NUMBA_CACHE_DIR"] = CACHE_DIR       # (the keyed folder, also under a caller's NUMBA_CACHE_DIR)
#: pass as ``cache=CACHE`` to ``numba.njit``: caching only where a writable folder exists
CACHE = CACHE_DIR is not None

import numba  # noqa: E402  (after NUMBA_CACHE_DIR is set)

if CACHE_DIR is not None:
    numba.config.CACHE_DIR = CACHE_DIR               # (numba may have read its configuration before us)

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
