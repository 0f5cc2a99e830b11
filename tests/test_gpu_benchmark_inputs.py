"""The GPU benchmark's inputs, checked here so that its one run on a borrowed GPU cannot fail on them: every
kernel with a CUDA version has a large example (a few MiB, so the timing is not launch-bound) and a memory
traffic model consistent with its arrays."""

import importlib.util
import pathlib

import numpy as np
import pytest

from deqcore.backend import kernels as registry
from tests.test_kernels import SPECS

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CUDA_KERNELS = sorted(name for name, spec in SPECS.items() if spec.numba_cuda)


@pytest.mark.parametrize("name", CUDA_KERNELS)
def test_large_example_and_traffic(name):
    spec = SPECS[name]
    assert spec.example and spec.traffic, f"{name}: the bandwidth benchmark needs an example and a traffic model"
    args = _bench_module().kernel_arguments(spec, np, size="large")
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    total = sum(a.nbytes for a in arrays)
    assert 2**20 <= total <= 2**31, f"{name}: large example of {total} bytes"
    traffic = int(registry.resolve(spec.traffic)(*args))
    # at least one full read of the largest input, at most every array read and written a few times
    assert max(a.nbytes for a in arrays) // 2 <= traffic <= 8 * total


@pytest.mark.parametrize("name", CUDA_KERNELS)
def test_bandwidth_scaling_keeps_the_arguments_consistent(name):
    """The benchmark grows each kernel's batch until the traffic reaches its target: the grown arguments still
    run (through the reference) and the traffic grows with the batch."""
    bench = _bench_module()
    spec = SPECS[name]
    small, base = bench.bandwidth_arguments(spec, 0, size="small")
    grown, traffic = bench.bandwidth_arguments(spec, 3 * base, size="small")
    assert 2.5 * base <= traffic <= 3.5 * base
    batch = next(a.shape[0] for a in small if isinstance(a, np.ndarray))
    assert next(a.shape[0] for a in grown if isinstance(a, np.ndarray)) == 3 * batch
    with np.errstate(all="ignore"):
        spec.reference(*[a.copy() if isinstance(a, np.ndarray) else a for a in grown])


def test_a_failing_row_keeps_the_rows_measured(tmp_path, monkeypatch):
    """Every row is written as soon as it is measured; a solver that fails leaves an error row and the others."""
    bench = _bench_module()

    class Broken:
        def __init__(self):
            raise RuntimeError("no device memory")

    monkeypatch.setattr(bench, "SOLVERS", (("Anderson", bench.dq.Anderson, None), ("broken", Broken, None),
                                           ("FixedPointIteration", bench.dq.FixedPointIteration, None)))
    report = bench.Report(tmp_path / "gpu.md", ["# test"])
    failed = bench.bench_deq(np, report, 4, 8, 4, np.float32, 1e-4, 1)
    text = (tmp_path / "gpu.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| easy")]
    assert failed == 1 and len(rows) == 3
    assert "| broken | error: RuntimeError: no device memory |" in rows[1]
    assert rows[0].split(" | ")[2:4] == ["4", "4"] and rows[2].split(" | ")[2:4] == ["4", "4"]   # all converged


def test_main_reports_each_step_and_keeps_going(tmp_path, monkeypatch, capsys):
    bench = _bench_module()
    monkeypatch.setattr(bench, "bench_deq", lambda *a, **k: 1 / 0)
    assert bench.main(["--xp", "numpy", "--tiny", "--steps", "deq", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "bench_gpu: deq: error: ZeroDivisionError" in out
    assert "## deq: failed" in (tmp_path / "gpu_dry_run.md").read_text()
