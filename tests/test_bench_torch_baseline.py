"""bench_torch_deq.py's ``--baseline``: another checkout's deqcore imported beside this one, as its own package
(its kernels its own, not this checkout's), with the copied files' times kept for Numba's cache."""

import importlib.util
import pathlib
import sys
import tempfile

import numpy as np
import pytest

pytest.importorskip("torch")

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bench_module(monkeypatch):
    monkeypatch.syspath_prepend(str(_ROOT / "benchmarks"))       # (it imports deq_maps beside it)
    spec = importlib.util.spec_from_file_location("bench_torch_deq_under_test", _ROOT / "benchmarks" /
                                                  "bench_torch_deq.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_baseline_is_a_separate_package_with_its_own_kernels(tmp_path, monkeypatch):
    bench = _bench_module(monkeypatch)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    path_before = list(sys.path)
    try:
        base = bench.import_baseline(_ROOT)
        import deqcore

        assert base.__name__ == "deqcore_baseline" and base is not deqcore
        assert pathlib.Path(base.__file__).is_relative_to(tmp_path)
        spec = base.backend.kernels.registered_kernels()["all_finite"]
        assert spec.numba_cpu.startswith("deqcore_baseline.")
        kernel = base.backend.kernels.get_kernel("all_finite", np)
        assert kernel.__module__.startswith("deqcore_baseline.")
        assert kernel(np.array([1.0, -0.0])) and not kernel(np.array([1.0, np.nan]))
        copied = pathlib.Path(base.__file__).parent / "root" / "driver_kernels.py"
        assert copied.stat().st_mtime_ns == (_ROOT / "deqcore" / "root" / "driver_kernels.py").stat().st_mtime_ns
        assert '"deqcore_baseline.root.driver_kernels_numba' in copied.read_text()
        adapter = importlib.import_module("deqcore_baseline.interop.torch")
        assert adapter.DEQ is not importlib.import_module("deqcore.interop.torch").DEQ
    finally:
        sys.path[:] = path_before
        for name in [name for name in sys.modules if name.split(".")[0] == "deqcore_baseline"]:
            del sys.modules[name]
    with pytest.raises(SystemExit, match="is not a deqcore package"):
        bench.import_baseline(tmp_path / "nowhere")
