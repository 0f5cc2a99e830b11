"""How close a DEQ solve comes to its floor: forward time against NFE·t_f and backward time against N_vjp·t_vjp,
for a DEQ written in PyTorch (through ``deqcore.interop.torch.DEQ``) and the same DEQ built from ``deqcore.nn``.

The map is z = tanh(W z + U x + b) (batch 64, width 256, input 128; ``benchmarks/deq_maps.py``), easy
(||W||_2 = 0.9) or hard (spectral radius 1.5). Both paths use deqcore's defaults: Anderson forward, the accurate
default adjoint (``SteadyStateAdjoint()``: GMRES on VJPs to the forward's tolerance), tolerance 1e-5 (float32) /
1e-6 (float64) on max|f(z) − z| relative to max|z| per sample, at most 200 steps; L = <c, z*>.

Each repeat times, back to back, a block of f-evaluations (t_f), a block of VJPs (t_vjp: ∂f/∂zᵀ v only, the one
an adjoint solve needs: ``torch.autograd.grad(f(z), z, v)`` on a retained graph, or the input pullback of the
``deqcore.nn`` model), then one forward and one backward of the DEQ; the ratios of each repeat are taken
against the f and VJP times of that repeat, and the tables show medians over the repeats. Columns:

* ``fwd / NFE·t_f``: forward time over the forward's f-evaluations at their own cost (the issue's floor);
* ``bwd / N_vjp·t_vjp``: backward time over the adjoint's VJPs (``nvjp``);
* ``bwd / full floor``: backward over what any implicit backward must do besides the adjoint's VJPs: one f
  with a graph at z* (torch; the native forward records its pullback there and counts it in its NFE) and
  the final VJP into the parameters (timed as one more VJP);
* ``fwd outside f``, ``bwd outside f, VJPs``, ``step outside f, VJPs``: the share of the forward, the backward
  and both together not spent inside the f-evaluations and VJPs the solves make, timed where they run (inside
  the loops, where f meets the caches the solver leaves; the floors above time f and the VJP in a warm loop);
* ``grad err``: ‖dL/dW − exact‖ / ‖exact‖, exact from a dense per-sample float64 solve at the returned z*.

    python benchmarks/bench_overhead.py [--repeats N] [--quick] [--fused-ab] [--micro]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # before NumPy loads its BLAS
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import deqcore as dq  # noqa: E402
from deqcore import nn  # noqa: E402
from deq_maps import deq_map_arrays  # noqa: E402

SIZES = (64, 256, 128)
MAX_STEPS = 200
TOLERANCE = {"float32": 1e-5, "float64": 1e-6}
BLOCK = 10          # f-evaluations / VJPs per timed block
#: the clock: CPU time of the (single) working thread by default: on a machine shared with other work the wall
#: clock mostly measures the other processes (``--clock wall`` for it)
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}
_clock = CLOCKS["cpu"]


def exact_grad_W(W, z, c):
    """dL/dW for L = <c, z*> by the implicit function theorem, one dense solve per sample (float64)."""
    W = np.asarray(W, dtype=np.float64)
    z, c = np.asarray(z, dtype=np.float64), np.asarray(c, dtype=np.float64)
    grad = np.zeros_like(W)
    for i in range(z.shape[0]):
        s = 1 - z[i] ** 2
        lam = np.linalg.solve((np.eye(W.shape[0]) - s[:, None] * W).T, c[i])
        grad += np.outer(s * lam, z[i])
    return grad


def _block(fn, count=BLOCK):
    start = _clock()
    for _ in range(count):
        fn()
    return (_clock() - start) / count


class TorchCase:
    """The DEQ written in torch, solved through the adapter."""

    name = "torch adapter"

    def __init__(self, kind, dtype):
        import torch
        from deqcore.interop import torch as dqt

        self.torch = torch
        torch.set_num_threads(1)
        rng = np.random.default_rng(0)
        W, U, b, x = deq_map_arrays(kind, *SIZES, rng)
        self.c_np = rng.standard_normal((SIZES[0], SIZES[1]))
        tdtype = getattr(torch, dtype)
        as_t = lambda a: torch.tensor(a, dtype=tdtype)  # noqa: E731

        class Cell(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.W, self.U, self.b = (torch.nn.Parameter(as_t(a)) for a in (W, U, b))

            def forward(self, z, x):
                start = _clock()
                out = torch.tanh(z @ self.W.T + x @ self.U.T + self.b)
                self.spent += _clock() - start
                return out

        self.f, self.x, self.c = Cell(), as_t(x), as_t(self.c_np)
        self.f.spent = 0.0
        import deqcore.interop.torch as adapter

        engine, self.vjp_spent = getattr(adapter, "_ENGINE", None), [0.0]

        def timed_engine(*args, **kwargs):              # every VJP the adapter runs goes through this call
            start = _clock()
            out = engine(*args, **kwargs)
            self.vjp_spent[0] += _clock() - start
            return out

        if engine is not None:
            adapter._ENGINE = timed_engine
        else:                                               # an older deqcore: VJPs not timed in place
            self.vjp_spent[0] = float("nan")
        self.layer = dqt.DEQ(self.f, atol=0.0, rtol=TOLERANCE[dtype], max_steps=MAX_STEPS)
        self.z0 = torch.zeros(SIZES[0], SIZES[1], dtype=tdtype)
        self.W = W
        self._floor_at(self.z0)

    def _floor_at(self, z):
        torch = self.torch
        self.zf = z.detach().clone()
        zg = self.zf.clone().requires_grad_(True)
        self.fz_graph = self.f(zg, self.x)
        self.zg = zg
        self.v = self.torch.ones_like(zg) / 10

    def time_f(self):
        with self.torch.no_grad():
            return _block(lambda: self.f(self.zf, self.x))

    def time_vjp(self):
        grad = self.torch.autograd.grad
        return _block(lambda: grad(self.fz_graph, self.zg, self.v, retain_graph=True))

    def run(self):
        self.f.zero_grad()
        self.f.spent = 0.0
        self.vjp_spent[0] = 0.0 if self.vjp_spent[0] == self.vjp_spent[0] else float("nan")
        start = _clock()
        z = self.layer(self.x, self.z0)
        mid = _clock()
        in_f = self.f.spent
        (z * self.c).sum().backward()
        end = _clock()
        self.z = z.detach()
        self.inside = (in_f, self.f.spent - in_f + self.vjp_spent[0])
        return mid - start, end - mid

    def counts(self):
        return int(self.layer.last_solution.stats["nfev"]), self.layer.last_adjoint.nvjp

    def grad_error(self):
        exact = exact_grad_W(self.W, self.z.double().numpy(), self.c_np)
        got = self.f.W.grad.double().numpy()
        return float(np.linalg.norm(got - exact) / np.linalg.norm(exact))

    def converged(self):
        return int(np.asarray(self.layer.last_solution.success).sum())


class NativeCase:
    """The same DEQ from deqcore.nn: Chain(Parallel(add, Dense(W), NoOpLayer()), tanh) on the injection
    U x + b (a deqcore DEQ starts from zeros shaped like its input, so the input is the width-256 injection,
    computed once, as an encoder layer in front of the DEQ would)."""

    name = "deqcore.nn model"

    def __init__(self, kind, dtype):
        rng = np.random.default_rng(0)
        W, U, b, x = deq_map_arrays(kind, *SIZES, rng)
        c = rng.standard_normal((SIZES[0], SIZES[1]))
        batch, width, inputs = SIZES
        self.f = nn.Chain(nn.Parallel(nn.add, nn.Dense(width, width, use_bias=False), nn.NoOpLayer()),
                          nn.Activation("tanh"))
        self.deq = dq.DeepEquilibriumNetwork(self.f, dq.Anderson(), atol=0.0, rtol=TOLERANCE[dtype],
                                             max_steps=MAX_STEPS)
        self.params, self.state = nn.setup(np.random.default_rng(0), self.deq, dtype=np.dtype(dtype))
        self.params["model"]["layer_1"]["layer_1"]["weight"][...] = W
        self.x, self.c, self.c_np, self.W = (x @ U.T + b).astype(dtype), c.astype(dtype), c, W
        self.z0 = np.zeros((batch, width), dtype=dtype)
        _, pb, _ = self.f.vjp((self.z0, self.x), self.params["model"], self.state["model"])
        try:
            from deqcore.nn.core import input_pullback
        except ImportError:                                   # an older deqcore: the full pullback
            self.vjp_z = lambda v: pb(v)[0]
        else:
            self.vjp_z = input_pullback(pb, (True, False))
        self.v = np.full_like(self.z0, 0.1)
        self.spent = [0.0, 0.0]
        make_f = self.deq._f

        def timed_f(*args):                                  # the map the forward solve evaluates
            f = make_f(*args)

            def run(z):
                start = _clock()
                out = f(z)
                self.spent[0] += _clock() - start
                return out
            return run

        self.deq._f = timed_f
        import deqcore.models.deq as models

        pullback_of = getattr(models, "input_pullback", None)
        if pullback_of is None:                             # an older deqcore: VJPs not timed in place
            self.spent[1] = float("nan")
            return

        def timed_pullback(*args):                           # the VJPs the adjoint solve calls
            vjp = pullback_of(*args)

            def run(v):
                start = _clock()
                out = vjp(v)
                self.spent[1] += _clock() - start
                return out
            return run

        models.input_pullback = timed_pullback

    def time_f(self):
        pm, sm = self.params["model"], self.state["model"]
        return _block(lambda: self.f((self.z0, self.x), pm, sm))

    def time_vjp(self):
        return _block(lambda: self.vjp_z(self.v))

    def run(self):
        self.spent[:] = [0.0, 0.0 if self.spent[1] == self.spent[1] else float("nan")]
        start = _clock()
        z, pullback, state = nn.vjp(self.deq, self.x, self.params, self.state)
        mid = _clock()
        _, self.grads = pullback(self.c)
        end = _clock()
        self.z, self.solution = z, state["solution"]
        self.inside = tuple(self.spent)
        return mid - start, end - mid

    def counts(self):
        return int(self.solution.nfev), self.solution.adjoint.nvjp

    def grad_error(self):
        exact = exact_grad_W(self.W, self.z, self.c_np)
        got = np.asarray(self.grads["model"]["layer_1"]["layer_1"]["weight"], dtype=np.float64)
        return float(np.linalg.norm(got - exact) / np.linalg.norm(exact))

    def converged(self):
        return int(np.asarray(self.solution.success).sum())


def measure(case, repeats):
    """Per-repeat ratios (medians over the repeats) and medians of the raw times."""
    case.run()                                           # warm-up (kernels compiled, graphs built once)
    rows = []
    for _ in range(repeats):
        t_f, t_vjp = case.time_f(), case.time_vjp()
        fwd, bwd = case.run()
        nfe, nvjp = case.counts()
        extra = 2 if case.name == "torch adapter" else 1   # (f with a graph at z*) + parameter VJP; see docstring
        full = (t_f if extra == 2 else 0.0) + (nvjp + 1) * t_vjp
        in_f, in_vjp = case.inside
        rows.append(dict(fwd=fwd, bwd=bwd, t_f=t_f, t_vjp=t_vjp, nfe=nfe, nvjp=nvjp,
                         r_fwd=fwd / (nfe * t_f), r_bwd=bwd / (nvjp * t_vjp), r_full=bwd / full,
                         out_f=1 - in_f / fwd, out_vjp=1 - in_vjp / bwd, out=1 - (in_f + in_vjp) / (fwd + bwd)))
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["err"] = case.grad_error()
    med["ok"] = case.converged()
    return med


def measure_fused_ab(case, repeats):
    """The forward with the fused CPU loop (one compiled call per step, ``deqcore.root.step_kernels``) against the
    unfused loop it replaced (``driver_update`` + the solver's step kernel, switched back on for the comparison),
    interleaved repeat by repeat in this process so both meet the same load. Medians of fwd / NFE·t_f and of the
    forward's time outside f per f-evaluation (µs)."""
    import deqcore.root.driver as driver

    fused_kernel = driver._fused_kernel
    modes = {"fused": fused_kernel, "unfused": lambda solver, xp: None}
    rows = {mode: [] for mode in modes}
    try:
        for mode in modes:
            driver._fused_kernel = modes[mode]
            case.run()
        for r in range(repeats):
            for mode in (("fused", "unfused") if r % 2 else ("unfused", "fused")):
                driver._fused_kernel = modes[mode]
                t_f = case.time_f()
                fwd, _ = case.run()
                nfe = case.counts()[0]
                rows[mode].append((fwd / (nfe * t_f), (fwd - case.inside[0]) / nfe))
    finally:
        driver._fused_kernel = fused_kernel
    return {mode: tuple(statistics.median(c) for c in zip(*rs)) for mode, rs in rows.items()}


def ab_table(results):
    lines = ["| path | map | dtype | fwd / NFE·t_f, unfused → fused | outside f per f-evaluation µs, unfused → fused |",
             "|---|---|---|---:|---:|"]
    for (path, kind, dtype), r in results:
        lines.append(f"| {path} | {kind} | {dtype} | {r['unfused'][0]:.2f} → {r['fused'][0]:.2f} "
                     f"| {1e6 * r['unfused'][1]:.0f} → {1e6 * r['fused'][1]:.0f} |")
    return "\n".join(lines)


def _share(value):
    return "-" if value != value else f"{value:.0%}"


def table(results):
    lines = ["| path | map | dtype | forward ms | NFE | t_f ms | fwd / NFE·t_f | backward ms | N_vjp | t_vjp ms "
             "| bwd / N_vjp·t_vjp | bwd / full floor | fwd outside f | bwd outside f, VJPs | step outside f, VJPs "
             "| converged | grad err |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (path, kind, dtype), r in results:
        lines.append(f"| {path} | {kind} | {dtype} | {1e3 * r['fwd']:.2f} | {r['nfe']:.0f} | {1e3 * r['t_f']:.3f} "
                     f"| {r['r_fwd']:.2f} | {1e3 * r['bwd']:.2f} | {r['nvjp']:.0f} | {1e3 * r['t_vjp']:.3f} "
                     f"| {r['r_bwd']:.2f} | {r['r_full']:.2f} | {_share(r['out_f'])} | {_share(r['out_vjp'])} | {_share(r['out'])} "
                     f"| {r['ok']}/{SIZES[0]} | {r['err']:.1e} |")
    return "\n".join(lines)


def micro(repeats: int = 7) -> str:
    """The solver layers' own costs with a trivially cheap f (medians of ``repeats`` blocks, this script's clock):
    the fused Anderson step (history 10, full ring, every row running; one call from Python) alone and with the
    driver's bookkeeping (the call the loop makes once per step), a ``fixed_point`` solve of one step (argument
    checks, set-up, two fused steps, the Solution) and of 14 steps, at the digits size (64 × 64, float64) and
    this benchmark's (64 × 256, float32); and GMRES at the digits adjoint's size (64 × 64, float64, one cycle of
    18 Arnoldi steps on v ↦ v − v M, the adjoint's call with a fresh operator output), per Arnoldi step outside
    the operator."""
    from deqcore.backend import get_kernel
    from deqcore.linalg import GMRES

    rng = np.random.default_rng(0)
    rows = ["| case | µs |", "|---|---:|"]
    for n, dtype in ((64, np.float32), (64, np.float64), (256, np.float32)):
        batch, m = SIZES[0], 10
        G = rng.standard_normal((batch, m, n)).astype(dtype)
        F = (0.1 * rng.standard_normal((batch, m, n))).astype(dtype)
        H = (F @ F.transpose(0, 2, 1)).astype(dtype)
        y = rng.standard_normal((batch, n)).astype(dtype)
        out = (y + 0.1 * rng.standard_normal((batch, n))).astype(dtype)
        name = f"64 × {n} {np.dtype(dtype).name}"
        kernel = get_kernel("anderson_step", np)

        def step():
            kernel(G, F, H, y, out - y, 3, m, 1.0, 1e-8, 1e-19)
        step()
        per = statistics.median(_block(step, 50) - _block(lambda: out - y, 50) for _ in range(repeats))
        rows.append(f"| anderson_step kernel, {name}, history 10 | {1e6 * per:.0f} |")
        # the driver's fused step with the bookkeeping arrays bound (no row finishes: tol 0, endless patience)
        book = [y.copy(), np.full(batch, np.inf, dtype), np.zeros(batch, np.int64), np.ones(batch, np.int64),
                np.zeros(batch, bool), np.zeros(batch, dtype), 0.0, np.full(batch, 10.0, dtype),
                np.full(batch, np.inf, dtype), np.full(batch, np.inf, dtype), 2 ** 62]
        fused = get_kernel("anderson_driver_step", np).prepare(np.empty_like(y), book, G, F, H, 1.0, 1e-8, 1e-19)

        def driver_step():
            fused(out, True, y, 3, m, m, True)
        driver_step()
        per = statistics.median(_block(driver_step, 50) for _ in range(repeats))
        rows.append(f"| anderson_driver_step (bookkeeping + step, bound once), {name} | {1e6 * per:.0f} |")
    for n, dtype in ((64, np.float64), (256, np.float32)):
        x = rng.standard_normal((SIZES[0], n)).astype(dtype)
        z0 = np.zeros_like(x)
        for steps in (1, 14):
            def solve():
                dq.fixed_point(lambda z, x: 0.5 * z + x, z0, dq.Anderson(), args=(x,), atol=0.0, rtol=0.0,
                               max_steps=steps, batched=True, throw=False)
            solve()
            per = statistics.median(_block(solve, 50) for _ in range(repeats))
            rows.append(f"| fixed_point, 64 × {n} {np.dtype(dtype).name}, {steps} step{'s' * (steps > 1)}, trivial f "
                        f"| {1e6 * per:.0f} |")
    n, steps = 64, 18
    M = rng.standard_normal((n, n)) * (0.95 / np.sqrt(n))
    rhs = rng.standard_normal((SIZES[0], n))
    solver = GMRES(rtol=0.0, atol=0.0, restart=30)

    def operator(v):
        return v - v @ M

    import inspect

    fresh = {"scratch": True} if "scratch" in inspect.signature(solver._run).parameters else {}   # (older deqcore)

    def cycle():
        solver._run(np, operator, None, rhs, None, steps + 2, 30, **fresh)

    def operator_calls():
        for _ in range(steps + 1):
            operator(rhs)

    cycle()
    per = statistics.median(_block(cycle, 5) - _block(operator_calls, 5) for _ in range(repeats)) / steps
    rows.append(f"| GMRES, 64 × 64 float64, one cycle of {steps} steps: per Arnoldi step outside the operator "
                f"| {1e6 * per:.0f} |")
    if "shifted" in inspect.signature(solver._run).parameters:      # the adjoint's form: Arnoldi on v M itself
        def shifted_cycle():
            solver._run(np, lambda v: v @ M, None, rhs, None, steps + 2, 30, shifted=True)

        shifted_cycle()
        per = statistics.median(_block(shifted_cycle, 5) - _block(operator_calls, 5) for _ in range(repeats)) / steps
        rows.append(f"| GMRES as above, Arnoldi on v ↦ v M (shifted, as the adjoint runs it): per Arnoldi step "
                    f"outside the operator | {1e6 * per:.0f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per row (default 15)")
    parser.add_argument("--quick", action="store_true", help="5 repeats, easy float32 rows only")
    parser.add_argument("--paths", default="torch,native", help="comma-separated: torch, native")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: the working thread's CPU time (default); wall: elapsed time")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"), help="folder for overhead.md")
    parser.add_argument("--fused-ab", action="store_true",
                        help="also time the forward with the fused CPU loop and with the unfused loop, interleaved")
    parser.add_argument("--micro", action="store_true",
                        help="only the solver layers' own costs with a trivial f (see micro()), printed")
    args = parser.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    if args.micro:
        print(micro())
        return 0
    repeats = 5 if args.quick else args.repeats
    combos = [("easy", "float32")] if args.quick else [("easy", "float32"), ("easy", "float64"), ("hard", "float32")]
    cases = {"torch": TorchCase, "native": NativeCase}
    results, ab = [], []
    warnings.simplefilter("ignore", RuntimeWarning)
    for kind, dtype in combos:
        for path in args.paths.split(","):
            case = cases[path](kind, dtype)
            results.append(((case.name, kind, dtype), measure(case, repeats)))
            print(table(results[-1:]).splitlines()[-1], flush=True)
            if args.fused_ab:
                ab.append(((case.name, kind, dtype), measure_fused_ab(case, repeats)))
                print(ab_table(ab[-1:]).splitlines()[-1], flush=True)
    text = "\n".join([
        "# Overhead of a DEQ solve over its f-evaluations and VJPs", "",
        f"z = tanh(W z + U x + b), batch {SIZES[0]}, width {SIZES[1]}, input {SIZES[2]}; Anderson forward, default "
        f"accurate adjoint; medians of {repeats} repeats, each ratio against the f/VJP times of its own repeat "
        f"(see the docstring of benchmarks/bench_overhead.py); clock: {args.clock} "
        f"({'CPU time of the working thread' if args.clock == 'cpu' else 'elapsed time'}).", "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs shared with other work (ratios are measured in one "
        f"run; absolute times are indicative), one thread. Python {platform.python_version()}, NumPy "
        f"{np.__version__}, deqcore {dq.__version__}.", "",
        table(results), ""] + ([
        "Fused CPU loop against the unfused one (`--fused-ab`: the same cases, interleaved repeat by repeat in one "
        "process; see `measure_fused_ab`):", "", ab_table(ab), ""] if ab else []))
    print(text)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("overhead_quick.md" if args.quick else "overhead.md")).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
