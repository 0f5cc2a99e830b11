#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA H100/H200 and CuPy 14 (CUDA 13), Numba, numba-cuda, torch and JAX
# already installed. Installs nothing. Five steps, each under its own time limit, within 8.5 minutes in all:
#
#   1. preflight   toolchain versions and one kernel launch on a CuPy array (about 10 s)
#   2. tests       the GPU tests (CUDA kernels on real CUDA, CuPy cases, torch on CUDA), verbose
#   3. bench_gpu   DEQ forward + backward at batch 1024 x width 1024, fused-kernel bandwidth
#   4. torch       the torch DEQ benchmark on CUDA (deqcore through DLPack vs pure-torch solvers)
#   5. jax         the JAX adapter tests, last and on their own (JAX must not preallocate the GPU)
#
# Each step writes its log (and tables) into OUT_DIR and prints one summary line; a step that fails or times out
# does not stop the others. The limits send SIGINT first (pytest then prints what ran and what failed), SIGKILL
# 10 s later.
#
#   bash benchmarks/gpu_check.sh OUT_DIR                   # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run OUT_DIR         # anywhere: simulator, tiny sizes, tests collected only
#   bash benchmarks/gpu_check.sh --dry-run --with-tests OUT_DIR   # ... and the selected tests run on the simulator
set -uo pipefail
dry_run=0
with_tests=0
while [ $# -gt 1 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --with-tests) with_tests=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
out="${1:?usage: gpu_check.sh [--dry-run [--with-tests]] OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-${TMPDIR:-/tmp}/deqcore-gpu-check-numba}"   # not in OUT_DIR: logs only
start_all=$SECONDS
: > "$out/summary.txt"

# The GPU tests: the CUDA kernels' tests, the CuPy cases of the xp fixture (marker gpu), the torch CUDA tests.
# Not the PTX compilation (the kernels compile for real here), not the JAX tests (step 5).
select="(cuda or cupy or gpu) and not ptx and not benchmark_inputs"
pytest_opts=(-p no:cacheprovider -rfE -v -m "not slow")
if "$py" -c "import pytest_timeout" 2>/dev/null; then
  pytest_opts+=(--timeout 60 --timeout-method thread)   # a hung test is reported, and the rest still run
else
  echo "gpu_check: pytest-timeout is not installed: no per-test limits, only each step's" | tee -a "$out/summary.txt"
fi
# The GPU tests mostly wait on kernel compilation (NVVM, NVRTC): on the device they run in worker processes
# (pytest-xdist, where installed; GPU_CHECK_WORKERS=0 runs them in one process).
test_workers=()
if [ "$dry_run" = 1 ]; then
  workers="${GPU_CHECK_WORKERS:-0}"
else
  workers="${GPU_CHECK_WORKERS:-4}"
fi
if [ "$workers" -gt 0 ] && "$py" -c "import xdist" 2>/dev/null; then
  test_workers=(-n "$workers")
fi
if [ "$dry_run" = 1 ]; then
  export NUMBA_ENABLE_CUDASIM=1
  unset DEQCORE_TEST_REAL_CUDA
  limits=(60 900 300 300 300)
  bench_opts=(--xp numpy --tiny)
  torch_opts=(--device cpu --tiny)
else
  export DEQCORE_TEST_REAL_CUDA=1          # tests/conftest.py: real CUDA kernels, not the simulator
  limits=(45 150 130 60 100)
  bench_opts=(--xp cupy)
  torch_opts=(--device cuda --quick)
fi

summary() {  # step name, exit code, seconds, detail
  local status="ok"
  case "$2" in 0) ;; 124|130|137) status="TIMED OUT (exit $2)" ;; *) status="FAILED (exit $2)" ;; esac
  echo "gpu_check: $1: $status in $3 s; $4" | tee -a "$out/summary.txt"
}

pytest_tail() {  # the pytest result line of a log
  grep -E "(passed|failed|error|skipped|deselected|no tests ran|collected)" "$1" | tail -n 1 | sed 's/=//g;s/^ *//'
}

{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)$([ "$dry_run" = 1 ] && echo ' (dry run)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: n/a"
  git rev-parse HEAD 2>/dev/null || echo "commit: n/a"
} > "$out/environment.txt" 2>&1

# 1. preflight
t=$SECONDS
pre_opts=(--env-out "$out/preflight.env")
[ "$dry_run" = 1 ] && pre_opts+=(--dry-run)
timeout -s INT -k 10 "${limits[0]}" "$py" benchmarks/gpu_preflight.py "${pre_opts[@]}" > "$out/preflight.log" 2>&1
rc=$?
cat "$out/preflight.log" >> "$out/environment.txt"
[ -f "$out/preflight.env" ] && . "$out/preflight.env"
summary preflight $rc $((SECONDS - t)) "$(grep 'preflight: summary' "$out/preflight.log" | tail -n 1) -> preflight.log"

# 2. the GPU tests
t=$SECONDS
if [ "$dry_run" = 1 ] && [ "$with_tests" = 0 ]; then
  "$py" -m pytest "${pytest_opts[@]}" --collect-only -q -k "$select" tests --ignore=tests/test_interop_jax.py \
    > "$out/tests.log" 2>&1
  rc=$?
  detail="collected only: $(pytest_tail "$out/tests.log")"
else
  timeout -s INT -k 10 "${limits[1]}" "$py" -m pytest "${pytest_opts[@]}" "${test_workers[@]}" -k "$select" tests \
    --ignore=tests/test_interop_jax.py > "$out/tests.log" 2>&1
  rc=$?
  detail="$(pytest_tail "$out/tests.log")"
fi
summary tests $rc $((SECONDS - t)) "$detail -> tests.log"

# 3. bench_gpu: its tables are written as they are measured, so a time-out keeps what was measured
t=$SECONDS
timeout -s INT -k 10 "${limits[2]}" "$py" benchmarks/bench_gpu.py "${bench_opts[@]}" --out "$out" \
  > "$out/bench_gpu.log" 2>&1
rc=$?
summary bench_gpu $rc $((SECONDS - t)) "$(grep '^bench_gpu: ' "$out/bench_gpu.log" | sed 's/^bench_gpu: //' | tr '\n' ';') -> bench_gpu.log"

# 4. the torch benchmark on the device (DLPack between torch and CuPy)
t=$SECONDS
timeout -s INT -k 10 "${limits[3]}" "$py" benchmarks/bench_torch_deq.py "${torch_opts[@]}" --out "$out" \
  > "$out/bench_torch_deq.log" 2>&1
rc=$?
summary torch $rc $((SECONDS - t)) "$(grep '^bench_torch_deq: ' "$out/bench_torch_deq.log" | sed 's/^bench_torch_deq: //' | tr '\n' ';') -> bench_torch_deq.log"

# 5. the JAX adapter, last and alone: JAX would otherwise take most of the GPU's memory at import
t=$SECONDS
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -s INT -k 10 "${limits[4]}" "$py" -m pytest "${pytest_opts[@]}" \
  "${test_workers[@]}" tests/test_interop_jax.py > "$out/jax.log" 2>&1
rc=$?
summary jax $rc $((SECONDS - t)) "$(pytest_tail "$out/jax.log") -> jax.log"

echo "gpu_check: all steps in $((SECONDS - start_all)) s; logs and tables in $out" | tee -a "$out/summary.txt"
