"""A DEQ written in PyTorch, solved and differentiated by deqcore through the adapter, vs pure-torch solvers.

The layer is z = tanh(W z + U x + b) (batch 64, width 256, input 128), f written in torch. Two maps: an
easy one with ||W||_2 = 0.9 and a hard one with spectral radius of W = 1.5. Every method solves to deqcore's
stopping rule (per sample max|f(z) − z| <= tol·max|z|, tol 1e-6 in float64 and 1e-5 in float32, at most
200 f-evaluations; TorchDEQ uses its own, ||f(z) − z||₂ <= tol·||f(z)||₂) and differentiates L = <c, z*>
implicitly:

* deqcore Anderson / Broyden through ``deqcore.interop.torch.DEQ`` (its default adjoint, to the forward's tolerance),
  and Anderson with ``compact=True`` (finished samples stop costing f-evaluations);
* torch fixed-point iteration (the adjoint by the same iteration, λ ← g + ∂fᵀλ);
* torch Anderson written here (history 6, ridge 1e-4, as TorchDEQ's defaults; adjoint by the same solver),
  standing in for TorchDEQ; TorchDEQ's own anderson/broyden (``get_deq(ift=True)``) are added when
  ``torchdeq`` is importable.

On ``--device cuda`` the same torch model runs on the GPU and deqcore works on CuPy views of the CUDA tensors
(DLPack both ways, on the current stream); times are then taken with the device synchronised around each
forward and each backward.

Forward and backward times are medians over repeats (round-robin over the methods), single-threaded, by the
working thread's CPU clock on the CPU (``--clock wall`` for the wall clock; CUDA always uses the wall clock);
NFE counts forward f-evaluations, VJPs the backward's vector-Jacobian products; ``residual`` is the worst
per-sample relative residual of the returned z* (max-norm, as the stopping rule); ``converged`` counts the
samples meeting the tolerance; ``grad err`` is the relative difference of dL/dW from a dense
implicit-function-theorem solve (float64, one LU per sample) at a float64 z* (per sample, Newton's method from
the methods' z* with the smallest residual), so every row's error is against the same exact gradient;
``overhead/NFE`` is the forward time per f-evaluation minus the time of one f alone; ``fwd / NFE·t_f`` and
``bwd / N_vjp·t_vjp`` are the forward and backward times over their floors (t_f: one f without a graph, t_vjp:
one ∂f/∂zᵀ v on a retained graph, both timed in a warm loop in every round of repeats, so that each ratio is taken
against the floors of its own round and the load of a shared machine moves both alike; the tables show the medians
of the ratios and of the floors); ``row evals`` is the number of sample rows f was evaluated on in the forward
(NFE × batch without compaction; deqcore rows only).

``--baseline DIR`` adds the deqcore rows of another checkout (``DIR/deqcore``, e.g. the previous main), run in the
same rounds as this one's: a before/after in one process, under one load. Its package is copied to a folder
under the system's temporary directory as ``deqcore_baseline`` (its kernel registry's module paths renamed, the
files' times kept so that Numba's cache stays valid between runs).

    python benchmarks/bench_torch_deq.py [--device cpu|cuda] [--quick] [--tiny] [--no-torchdeq] [--out DIR]
                                         [--baseline DIR] [--cases easy-float32,...]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # before NumPy loads its BLAS
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import deqcore as dq  # noqa: E402
from deqcore.interop import torch as dqt  # noqa: E402
from deq_maps import deq_map_arrays  # noqa: E402

MAX_STEPS = 200
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5}
#: the clock of the timings: on the CPU the working thread's CPU time (one thread runs torch, BLAS and deqcore here;
#: on a machine shared with other work the wall clock mostly measures the other processes), on CUDA the wall clock
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}
_clock = CLOCKS["cpu"]


class Cell(torch.nn.Module):
    """f(z, x) = tanh(W z + U x + b)."""

    def __init__(self, W, U, b):
        super().__init__()
        self.W, self.U, self.b = (torch.nn.Parameter(t) for t in (W, U, b))

    def forward(self, z, x):
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


def make_problem(kind, dtype, batch, width, inputs, seed=0, device="cpu"):
    rng = np.random.default_rng(seed)
    W, U, b, x = deq_map_arrays(kind, batch, width, inputs, rng)
    c = rng.standard_normal((batch, width))
    as_t = lambda a: torch.tensor(a, dtype=dtype, device=device)  # noqa: E731
    return Cell(as_t(W), as_t(U), as_t(b)), as_t(x), as_t(c)


def sync(device):
    """Wait for the device's queued work (timing on CUDA)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def host(t):
    """A float64 NumPy copy of a tensor on any device."""
    return t.detach().double().cpu().numpy()


def relative_residuals(f, z, x):
    """Per-sample max|f(z) − z| / max|z|."""
    with torch.no_grad():
        fz = f(z, x)
        return (fz - z).abs().amax(1) / z.abs().amax(1).clamp_min(1e-30)


def converged(u, gu, tol):
    """deqcore's per-sample test with atol = 0, for every sample."""
    return bool(((gu - u).abs().amax(1) <= tol * u.abs().amax(1)).all())


# ---- pure-torch baselines: a solver on g(u) = u, and one implicit layer that uses it both ways ----

def torch_iteration(g, u0, tol, max_steps):
    """Plain iteration; returns (u, evaluations)."""
    u = u0
    for k in range(1, max_steps + 1):
        gu = g(u)
        done = converged(u, gu, tol)
        u = gu
        if done:
            break
    return u, k


def torch_anderson(g, u0, tol, max_steps, m=6, lam=1e-4):
    """Anderson acceleration (type II, β = 1) with one small regularised least-squares solve per sample."""
    batch, n = u0.shape
    X = u0.new_zeros(batch, m, n)
    F = u0.new_zeros(batch, m, n)
    X[:, 0], F[:, 0] = u0, g(u0)
    X[:, 1], F[:, 1] = F[:, 0], g(F[:, 0])
    H = u0.new_zeros(batch, m + 1, m + 1)
    H[:, 0, 1:] = H[:, 1:, 0] = 1
    y = u0.new_zeros(batch, m + 1, 1)
    y[:, 0] = 1
    evaluations, u = 2, F[:, 1]
    for k in range(2, max_steps):
        r = min(k, m)
        G = F[:, :r] - X[:, :r]
        H[:, 1:r + 1, 1:r + 1] = G @ G.transpose(1, 2) + lam * torch.eye(r, dtype=u0.dtype, device=u0.device)
        alpha = torch.linalg.solve(H[:, :r + 1, :r + 1], y[:, :r + 1])[:, 1:r + 1, 0]
        u = (alpha[:, None] @ F[:, :r])[:, 0]
        gu = g(u)
        evaluations += 1
        X[:, k % m], F[:, k % m] = u, gu
        if converged(u, gu, tol):
            return gu, evaluations
    return u, evaluations


class TorchImplicit(torch.autograd.Function):
    """z* by ``solver`` under no_grad; backward solves λ = g + ∂f/∂zᵀ λ with the same solver."""

    @staticmethod
    def forward(ctx, f, solver, tol, counts, x, *params):
        with torch.no_grad():
            z, counts["nfe"] = solver(lambda z: f(z, x), torch.zeros_like(x[:, :0]).new_zeros(
                x.shape[0], params[0].shape[0]), tol, MAX_STEPS)
        ctx.f, ctx.solver, ctx.tol, ctx.counts = f, solver, tol, counts
        ctx.save_for_backward(z, x, *params)
        return z

    @staticmethod
    def backward(ctx, grad):
        z, x, *params = ctx.saved_tensors
        with torch.enable_grad():
            z = z.detach().requires_grad_()
            x_in = x.detach().requires_grad_()
            fz = ctx.f(z, x_in)
        lam, ctx.counts["nvjp"] = ctx.solver(
            lambda v: grad + torch.autograd.grad(fz, z, v, retain_graph=True)[0], grad, ctx.tol, MAX_STEPS)
        grads = torch.autograd.grad(fz, (x_in, *params), lam)
        return (None, None, None, None, *grads)


def torch_method(solver):
    def run(f, x, tol):
        counts = {}
        z = TorchImplicit.apply(f, solver, tol, counts, x, *f.parameters())
        return z, counts
    return run


def deqcore_method(solver, compact=False, adapter=None):
    """A deqcore row: ``adapter`` is the ``deqcore.interop.torch`` module to use (default this checkout's)."""
    adapter = dqt if adapter is None else adapter

    def run(f, x, tol, cache={}):
        key = (id(f), tol, compact)
        if key not in cache:
            # the default adjoint: it follows the forward's tolerance and budget (rtol=tol, atol 0, MAX_STEPS)
            options = dict(compact=True) if compact else {}
            cache[key] = adapter.DEQ(f, solver, None, atol=0.0, rtol=tol, max_steps=MAX_STEPS, **options)
        layer = cache[key]
        z = layer(x, torch.zeros(x.shape[0], f.W.shape[0], dtype=x.dtype, device=x.device))
        return z, layer
    return run


def torchdeq_method(name):
    from torchdeq import get_deq

    def run(f, x, tol):
        deq = get_deq(core="indexing", ift=True, f_solver=name, b_solver=name, f_max_iter=MAX_STEPS,
                      b_max_iter=MAX_STEPS, f_tol=tol, b_tol=tol, f_stop_mode="rel", b_stop_mode="rel")
        deq.train()
        counts = {}
        z_out, info = deq(lambda z: f(z, x), torch.zeros(x.shape[0], f.W.shape[0], dtype=x.dtype, device=x.device),
                          backward_writer=lambda stats: counts.update(nvjp=int(stats["nstep"].max())))
        counts["nfe"] = int(info["nstep"].max())
        return z_out[-1], counts
    return run


def methods(with_torchdeq=True, baseline=None):
    """The rows, by name; ``baseline``: another deqcore package (see :func:`import_baseline`), whose Anderson rows
    come right after this checkout's."""
    import inspect

    table = {"deqcore Anderson (adapter)": deqcore_method(dq.Anderson())}
    if baseline is not None:
        table["deqcore Anderson (adapter), baseline"] = deqcore_method(
            baseline.Anderson(), adapter=importlib.import_module(baseline.__name__ + ".interop.torch"))
    if "compact" in inspect.signature(dqt.DEQ).parameters:       # (an older deqcore has no compaction there)
        table["deqcore Anderson (adapter, compact=True)"] = deqcore_method(dq.Anderson(), compact=True)
    table.update({
        "deqcore Broyden (adapter)": deqcore_method(dq.Broyden()),
        "torch fixed-point iteration": torch_method(torch_iteration),
        "torch Anderson (m=6, TorchDEQ stand-in)": torch_method(torch_anderson),
    })
    try:
        import torchdeq  # noqa: F401
    except ImportError:
        return table
    if not with_torchdeq:
        return table
    table["TorchDEQ anderson"] = torchdeq_method("anderson")
    table["TorchDEQ broyden"] = torchdeq_method("broyden")
    return table


def import_baseline(checkout):
    """``checkout``'s deqcore package, imported as ``deqcore_baseline`` beside this one: its files copied (times
    kept) to a folder under the temporary directory, with the kernel registry's module paths (``"deqcore.``)
    renamed; the copy is refreshed on every call."""
    import hashlib
    import shutil
    import tempfile

    source = pathlib.Path(checkout).resolve() / "deqcore"
    if not (source / "__init__.py").is_file():
        raise SystemExit(f"--baseline: {source} is not a deqcore package")
    digest = hashlib.sha1(str(source).encode()).hexdigest()[:10]
    root = pathlib.Path(tempfile.gettempdir()) / "deqcore_baseline" / digest
    target = root / "deqcore_baseline"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        text = path.read_text()
        renamed = text.replace('"deqcore.', '"deqcore_baseline.')
        if renamed != text:
            times = path.stat()
            path.write_text(renamed)
            os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    sys.path.insert(0, str(root))
    return importlib.import_module("deqcore_baseline")


def _describe_checkout(checkout):
    """``commit abc1234`` for a git checkout, else its folder's name."""
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        return f"the checkout at commit {commit}"
    except (OSError, subprocess.CalledProcessError):
        return f"the folder {pathlib.Path(checkout).resolve().name}"


def counts_of(extra):
    """(forward NFE, backward VJPs, forward row evaluations or None) from a method's second return value."""
    if isinstance(extra, dict):
        return extra.get("nfe"), extra.get("nvjp"), None
    nvjp = extra.last_adjoint.nvjp if extra.last_adjoint is not None else None
    stats = extra.last_solution.stats
    return int(stats["nfev"]), nvjp, stats.get("row_evaluations")


def reference_fixed_point(f, x, candidates):
    """z* in float64 per sample: Newton's method on z − tanh(W z + U x + b) with dense Jacobians, started from
    the candidate (one per method) with the smallest residual for that sample; the samples Newton cannot bring
    below 1e-12 keep that candidate."""
    W, U, b, xs = host(f.W), host(f.U), host(f.b), host(x)
    inj = xs @ U.T + b
    zs = np.stack([host(z) for z in candidates])                      # (methods, batch, width)
    res = np.abs(np.tanh(zs @ W.T + inj) - zs).max(axis=2)
    z = zs[res.argmin(axis=0), np.arange(zs.shape[1])]
    eye = np.eye(W.shape[0])
    for i in range(z.shape[0]):
        zi = z[i].copy()
        for _ in range(30):
            fz = np.tanh(W @ zi + inj[i])
            r = zi - fz
            if np.abs(r).max() <= 1e-13:
                break
            zi = zi - np.linalg.solve(eye - (1 - fz ** 2)[:, None] * W, r)
        if np.isfinite(zi).all() and np.abs(np.tanh(W @ zi + inj[i]) - zi).max() <= 1e-12:
            z[i] = zi
    return z


def dense_reference_grad_W(f, x, c, z):
    """dL/dW for L = <c, z*> by the implicit function theorem, one dense solve per sample (float64)."""
    W = host(f.W)
    zs, cs = (z if isinstance(z, np.ndarray) else host(z)), host(c)
    grad = np.zeros_like(W)
    for i in range(zs.shape[0]):
        s = 1 - zs[i] ** 2
        lam = np.linalg.solve((np.eye(W.shape[0]) - s[:, None] * W).T, cs[i])
        grad += np.outer(s * lam, zs[i])
    return grad


def run_once(run, f, x, c, tol):
    """One forward + backward: (forward s, backward s, z*, counts source, dL/dW)."""
    f.zero_grad()
    sync(x.device)
    start = _clock()
    z, extra = run(f, x, tol)
    sync(x.device)
    mid = _clock()
    (z * c).sum().backward()
    sync(x.device)
    end = _clock()
    return mid - start, end - mid, z.detach(), extra, host(f.W.grad).copy()


def bench_case(kind, dtype, sizes, repeats, device="cpu", with_torchdeq=True, baseline=None):
    """One row per method; the repeats go round-robin over the methods so load changes hit all alike, and each
    round times the floors (one f, one VJP) first: a method's ratios in a round are against that round's."""
    f, x, c = make_problem(kind, dtype, *sizes, device=device)
    tol = TOLERANCE[dtype]
    runs = methods(with_torchdeq, baseline)
    times = {name: ([], []) for name in runs}
    floors = []
    last = {}
    for repeat in range(repeats + 1):                  # round 0 warms up and is not timed
        with torch.no_grad():
            floors.append((statistics.median(_timed_f(f, x) for _ in range(10)), _timed_vjp(f, x, 10)))
        for name, run in runs.items():
            fwd, bwd, *last[name] = run_once(run, f, x, c, tol)
            if repeat:
                times[name][0].append(fwd)
                times[name][1].append(bwd)
    floors = floors[1:]
    f_time, vjp_time = (statistics.median(column) for column in zip(*floors))
    rows = []
    z_ref = reference_fixed_point(f, x, [last[name][0] for name in runs])
    reference = dense_reference_grad_W(f, x, c, z_ref)
    for name in runs:
        z, extra, grad_W = last[name]
        nfe, nvjp, row_evals = counts_of(extra)
        err = float(np.linalg.norm(grad_W - reference) / np.linalg.norm(reference))
        res = relative_residuals(f, z, x)
        fwd, bwd = (statistics.median(t) for t in times[name])
        fwd_ratio = statistics.median(t / (nfe * t_f) for t, (t_f, _) in zip(times[name][0], floors))
        bwd_ratio = statistics.median(t / (nvjp * t_v) for t, (_, t_v) in zip(times[name][1], floors))
        rows.append(dict(method=name, fwd=fwd, bwd=bwd, nfe=nfe, nvjp=nvjp, residual=float(res.max()),
                         ok=int((res <= tol * (1 + 1e-3)).sum()), batch=x.shape[0], err=err, f_time=f_time,
                         vjp_time=vjp_time, row_evals=row_evals, fwd_ratio=fwd_ratio, bwd_ratio=bwd_ratio))
    return rows


def _timed_f(f, x):
    z = torch.zeros(x.shape[0], f.W.shape[0], dtype=x.dtype, device=x.device)
    sync(x.device)
    start = _clock()
    f(z, x)
    sync(x.device)
    return _clock() - start


def _timed_vjp(f, x, repeats=20):
    """Median time of one ∂f/∂zᵀ v on a retained graph (what each step of an implicit backward costs)."""
    z = torch.zeros(x.shape[0], f.W.shape[0], dtype=x.dtype, device=x.device).requires_grad_(True)
    with torch.enable_grad():
        fz = f(z, x)
    v = torch.ones_like(fz) / 10
    times = []
    for _ in range(repeats):
        sync(x.device)
        start = _clock()
        torch.autograd.grad(fz, z, v, retain_graph=True)
        sync(x.device)
        times.append(_clock() - start)
    return statistics.median(times)


def table(kind, dtype, rows):
    base = next(r for r in rows if r["method"].startswith("torch Anderson"))
    base_total = base["fwd"] + base["bwd"]
    lines = [f"### {kind} map, {str(dtype).replace('torch.', '')}, tol {TOLERANCE[dtype]:g} "
             f"(one f: {1e3 * rows[0]['f_time']:.2f} ms, one VJP: {1e3 * rows[0]['vjp_time']:.2f} ms)", "",
             "| method | forward ms | backward ms | total ms | vs torch Anderson | NFE | row evals | VJPs "
             "| fwd / NFE·t_f | bwd / N_vjp·t_vjp | overhead/NFE ms | converged | residual | grad err |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        total = r["fwd"] + r["bwd"]
        overhead = r["fwd"] / r["nfe"] - r["f_time"]
        row_evals = "-" if r["row_evals"] is None else str(r["row_evals"])
        lines.append(f"| {r['method']} | {1e3 * r['fwd']:.1f} | {1e3 * r['bwd']:.1f} | {1e3 * total:.1f} | "
                     f"{total / base_total:.2f}x | {r['nfe']} | {row_evals} | {r['nvjp']} | "
                     f"{r['fwd_ratio']:.2f} | {r['bwd_ratio']:.2f} | "
                     f"{1e3 * overhead:.2f} | {r['ok']}/{r['batch']} | {r['residual']:.1e} | {r['err']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the torch model runs (cuda: deqcore on CuPy views through DLPack)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under a minute)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, one repeat: a dry run of the script")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 5)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                        help="cpu: the working thread's CPU time (default on --device cpu); wall (default on cuda)")
    parser.add_argument("--no-torchdeq", action="store_true",
                        help="leave out TorchDEQ's rows (its hard-map Broyden takes seconds a run)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"),
                        help="folder for torch_deq.md")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="a checkout whose deqcore (DIR/deqcore) runs its Anderson rows in the same rounds "
                             "(a before/after in one process)")
    parser.add_argument("--cases", default=None,
                        help="comma-separated cases to run, of easy-float64,hard-float64,easy-float32,hard-float32 "
                             "(default all)")
    args = parser.parse_args(argv)
    baseline = import_baseline(args.baseline) if args.baseline else None
    all_cases = [(kind, dtype) for dtype in (torch.float64, torch.float32) for kind in ("easy", "hard")]
    label_of = lambda kind, dtype: f"{kind}-{str(dtype).replace('torch.', '')}"  # noqa: E731
    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - {label_of(*case) for case in all_cases}
        if unknown:
            parser.error(f"--cases: unknown {sorted(unknown)}")
        all_cases = [case for case in all_cases if label_of(*case) in wanted]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    global _clock
    clock = args.clock or ("wall" if args.device == "cuda" else "cpu")
    if clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu times the working thread alone: run with OMP_NUM_THREADS=1 or pass --clock wall")
    _clock = CLOCKS[clock]
    repeats = args.repeats or (1 if args.quick or args.tiny else 5)
    sizes = (8, 16, 8) if args.tiny else (64, 256, 128)
    try:
        import importlib.metadata

        import torchdeq  # noqa: F401
        torchdeq_line = f"TorchDEQ {importlib.metadata.version('torchdeq')} (not a deqcore dependency)"
    except ImportError:
        torchdeq_line = "TorchDEQ not installed (the torch Anderson row stands in for it)"
    if args.no_torchdeq:
        torchdeq_line = "TorchDEQ's rows left out (--no-torchdeq)"
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        machine = (f"Device: {props.name}, torch CUDA {torch.version.cuda}; host {platform.platform()}, "
                   f"{os.cpu_count()} CPUs")
    else:
        machine = (f"Machine: {platform.platform()}, {os.cpu_count()} CPUs (shared; timings are indicative), "
                   f"{torch.get_num_threads()} thread(s) for torch and BLAS")
    header = [
        "# DEQ in PyTorch: deqcore through the adapter vs pure-torch solvers", "",
        f"z = tanh(W z + U x + b), batch {sizes[0]}, width {sizes[1]}, input {sizes[2]}; L = <c, z*>; forward + "
        f"implicit backward, on {args.device}. Medians of {repeats} timed runs after a warm-up, clock: {clock}"
        f"{' (CPU time of the working thread)' if clock == 'cpu' else ''}"
        f"{' (--quick)' if args.quick else ' (--tiny)' if args.tiny else ''}. Every row has its gradient error "
        "(dL/dW against a dense float64 implicit-function-theorem solve) next to its time.", "",
        f"{machine}. Python {platform.python_version()}, NumPy {np.__version__}, torch {torch.__version__}, "
        f"deqcore {dq.__version__}; {torchdeq_line}.", "",
    ]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "torch_deq" + ("_cuda" if args.device == "cuda" else "") + \
        ("_tiny" if args.tiny else "_quick" if args.quick else "") + ".md"
    if baseline is not None:
        header += [f"Rows marked *baseline*: the deqcore package of {_describe_checkout(args.baseline)}, run in the "
                   "same rounds as this checkout's.", ""]
    sections, failures = [], 0
    for kind, dtype in all_cases:
        start = time.perf_counter()
        label = f"{kind} {str(dtype).replace('torch.', '')}"
        try:
            rows = bench_case(kind, dtype, sizes, repeats, args.device, with_torchdeq=not args.no_torchdeq,
                              baseline=baseline)
            sections.append(table(kind, dtype, rows))
            status = "ok"
        except Exception as err:      # keep the other cases and what they measured
            traceback.print_exc()
            failures += 1
            status = f"error: {type(err).__name__}: {err}".splitlines()[0][:200]
            sections.append(f"### {kind} map, {str(dtype).replace('torch.', '')}: {status}")
        print(sections[-1] + "\n", flush=True)
        (out / name).write_text("\n".join(header + ["\n\n".join(sections), ""]))   # written as measured
        print(f"bench_torch_deq: {label}: {status} ({time.perf_counter() - start:.1f} s)", flush=True)
    print(f"wrote {out / name}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
