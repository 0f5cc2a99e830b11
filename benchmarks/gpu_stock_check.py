"""A CuPy solve with whatever NumPy and numba-cuda are installed: which kernels deqcore picks, and results
against the same solve on NumPy.

numba-cuda 0.30 cannot compile under NumPy 2.5 (``np.row_stack`` was removed); deqcore then runs its
array-code kernels on CuPy arrays with one warning. This script shows which case a machine is in and that the
results are right either way (Anderson and Broyden, float32 and float64).

    python benchmarks/gpu_stock_check.py
"""

from __future__ import annotations

import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import deqcore as dq  # noqa: E402
from deqcore.backend.kernels import numba_cuda_problem  # noqa: E402


def solve(xp, solver, dtype, batch=64, width=128):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((width, width)) * (0.9 / np.sqrt(width))
    x = rng.standard_normal((batch, width))
    Wx, xx = xp.asarray(W, dtype=dtype), xp.asarray(x, dtype=dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-9
    sol = dq.fixed_point(lambda z, a: xp.tanh(z @ Wx.T + a), xp.zeros_like(xx), solver, args=(xx,),
                         atol=tol, rtol=0.0, max_steps=200, batched=True, throw=False)
    value = sol.value.get() if hasattr(sol.value, "get") else sol.value
    return value, sol, tol


def main() -> int:
    import cupy

    print(f"stock: NumPy {np.__version__}; Numba CUDA target: {numba_cuda_problem() or 'compiles'}", flush=True)
    failures = 0
    for dtype in (np.float64, np.float32):
        for name, make in (("Anderson", dq.Anderson), ("Broyden", dq.Broyden)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                on_gpu, sol, tol = solve(cupy, make(), dtype)
                seconds = time.perf_counter() - start
            on_cpu, _, _ = solve(np, make(), dtype)
            gap = float(np.abs(on_gpu - on_cpu).max())
            ok = bool(np.all(sol.success.get() if hasattr(sol.success, "get") else sol.success)) and gap <= 20 * tol
            failures += not ok
            notes = "; ".join(sorted({str(w.message)[:90] for w in caught})) or "no warning"
            print(f"stock: {name} {np.dtype(dtype).name}: {'ok' if ok else 'FAILED'}, max |GPU - CPU| {gap:.1e} "
                  f"(tolerance {tol:.0e}), {seconds:.2f} s with compilation; {notes}", flush=True)
    print(f"stock: summary: {'OK' if failures == 0 else f'{failures} FAILED'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
