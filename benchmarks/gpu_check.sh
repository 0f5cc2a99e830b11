#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA H100/H200 and CuPy 14 (CUDA 13), Numba, numba-cuda, torch and JAX
# already installed. Installs nothing. Runs the test suite on real CUDA (CuPy cases included), then the GPU
# benchmarks, within about 8 minutes; writes logs and Markdown tables into the folder given as $1.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
set -uo pipefail
out="${1:?usage: gpu_check.sh OUT_DIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DEQCORE_TEST_REAL_CUDA=1            # tests/conftest.py: real CUDA kernels, not the simulator
{
  echo "# GPU check"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: n/a"
  "$py" -c "import cupy, numba; print('cupy', cupy.__version__, 'numba', numba.__version__)"
  git rev-parse HEAD 2>/dev/null || echo "commit: n/a"
} > "$out/environment.txt" 2>&1

# 1. Tests: the whole suite, CuPy parametrisations enabled (about 4 minutes at most).
# No -x: one run on a borrowed machine should report every failure.
timeout 240 "$py" -m pytest -q -p no:cacheprovider --timeout 60 -m "not slow" tests > "$out/tests.log" 2>&1
echo "tests exit code: $?" >> "$out/tests.log"

# 2. Benchmarks: DEQ forward+backward at batch 1024, width 1024, float32; kernel bandwidth; torch via DLPack.
timeout 150 "$py" benchmarks/bench_gpu.py --xp cupy --out "$out" > "$out/bench_gpu.log" 2>&1
echo "bench_gpu exit code: $?" >> "$out/bench_gpu.log"
if [ -f benchmarks/bench_torch_deq.py ]; then
  timeout 90 "$py" benchmarks/bench_torch_deq.py --device cuda --quick > "$out/bench_torch_deq.log" 2>&1
  echo "bench_torch_deq exit code: $?" >> "$out/bench_torch_deq.log"
fi
tail -n 3 "$out"/*.log
