"""Test configuration.

Numba's CUDA simulator is switched on before numba is imported, so CUDA kernels run (slowly, on tiny
inputs) on machines without a GPU. Set ``DEQCORE_TEST_REAL_CUDA=1`` on a GPU machine to test real kernels.
"""

import os

if os.environ.get("DEQCORE_TEST_REAL_CUDA") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    from tests.cudasim_patch import install as _lock_simulated_shared_arrays  # noqa: E402

    _lock_simulated_shared_arrays()
from hypothesis import HealthCheck, settings  # noqa: E402

# "ci" (the default, used by `make test` and CI): derandomised, so a landing never depends on luck: the same
# examples every run, no example database carried between runs. "thorough" (`make fuzz`): random and many.
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
#: under "thorough", a test's own ``@settings(max_examples=k)`` (which overrides the profile's count) runs
#: ``k × FUZZ_FACTOR`` random examples instead (``FUZZ_FACTOR`` from the environment, default 10)
FUZZ_FACTOR = float(os.environ.get("FUZZ_FACTOR", "10"))


def pytest_collection_modifyitems(items):
    if settings.default.derandomize:
        return
    seen = set()
    for item in items:
        test = getattr(item, "obj", None)
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if own is None or id(test) in seen:
            continue
        seen.add(id(test))
        test._hypothesis_internal_use_settings = settings(
            own, max_examples=max(own.max_examples, int(own.max_examples * FUZZ_FACTOR)), derandomize=False)


def _modules_of(items):
    modules = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and hasattr(module, "start_early"):
            modules.setdefault(module, set()).add(item.originalname)
    return modules


def pytest_collection_finish(session):
    """A test module may start slow subprocess work of its selected tests (``start_early(names)``) as soon as
    the tests are collected, so that it runs on the core the serial test run leaves idle; the tests wait for
    it, and ``stop_early()`` ends what is left when the run ends (tests/background.py)."""
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):   # (not per xdist worker)
        return
    for module, names in _modules_of(session.items).items():
        module.start_early(names)


def pytest_sessionfinish(session):
    for module in _modules_of(getattr(session, "items", [])):
        module.stop_early()


@pytest.fixture(scope="module")
def tc():
    """(torch, deqcore.interop.torch), or the test is skipped without torch."""
    torch = pytest.importorskip("torch")
    from deqcore.interop import torch as dqt
    return torch, dqt


@pytest.fixture
def rng():
    """A seeded NumPy generator."""
    return np.random.default_rng(20261126)


def _cupy_ready():
    from deqcore.backend import cupy_available

    return cupy_available()


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """Each array namespace: NumPy always, CuPy where a GPU is present (skipped otherwise)."""
    if request.param == "numpy":
        return np
    if not _cupy_ready():
        pytest.skip("CuPy with a CUDA device is not available")
    import cupy

    return cupy
