"""A DEQ written in JAX: deqcore through ``deqcore.interop.jax`` vs jaxopt's and optimistix's fixed-point solvers.

The layer is z = tanh(W z + U x + b) (batch 64, width 256, input 128, the maps of ``deq_maps.py``); the loss
is L = <c, z*> and every row times ``jax.jit(jax.value_and_grad(L))`` with respect to (W, U, b), forward +
implicit backward, and ``jax.jit(L)`` alone (forward). Two layouts:

* unmapped: the whole (64, 256) batch is one system (f written on the batch);
* vmapped: f written for one sample and ``jax.vmap``-ed over the batch (one system per sample; W, U, b shared).

deqcore runs with its defaults (Anderson, the accurate implicit adjoint) at atol = 0, rtol = tol. The peers stop
on their own tests (jaxopt: the L2 norm of f(z) − z over a system; optimistix: max|f(z) − z| <= rtol·max|z|):
each peer's tolerance is calibrated before timing to the loosest of a few values whose result meets the same
measured residual as deqcore's (per system max|f(z) − z| <= tol·max|z|), so rows compare at equal measured
residual. Their backward passes are their defaults (jaxopt: normal-equation CG; optimistix: ImplicitAdjoint,
with lineax GMRES on the unmapped layout, where its default would materialise a 16384² Jacobian).

Columns: medians of round-robin repeats; NFE counts forward f-evaluations (deqcore: calls of f inside the
callback, plus the one JAX makes at z*, where it also linearises f for the adjoint); VJPs the adjoint's (plus
JAX's pullback to the arguments); ``residual`` the worst relative residual; ``grad err`` the relative error of
dL/dW against the exact implicit gradient (a dense float64 solve per sample at a Newton-refined z*); ``floor``
= NFE·t_f + VJPs·t_vjp, with t_f one jitted f and t_vjp one application of f's VJP linearised once
(``jax.vjp`` at a point, its pullback applied to a vector: the work of one adjoint step), each on the batch
alone. For deqcore a second table splits one fwd+grad run into the time inside f and the VJPs, the host
solvers' own work and everything outside the callbacks.

    python benchmarks/bench_jax_deq.py [--quick] [--tiny] [--repeats N] [--out DIR]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # before NumPy loads its BLAS
    os.environ.setdefault(_var, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", True)

import deqcore as dq  # noqa: E402
from deqcore.interop import jax as dqj  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from deq_maps import deq_map_arrays  # noqa: E402

MAX_STEPS = 200
TOL = 1e-6


def f_batch(z, a):
    (W, U, b), x = a
    return jnp.tanh(z @ W.T + x @ U.T + b)


def f_one(z, a):
    (W, U, b), x = a
    return jnp.tanh(W @ z + U @ x + b)


# ---- solvers: each maker(tol) returns solve(f, z0, args) -> z* -------------------------------------------

def deqcore_maker(solver=None, engine="auto"):
    def make(tol):
        return lambda f, z0, a: dqj.fixed_point(f, z0, a, solver, atol=0.0, rtol=tol, max_steps=MAX_STEPS,
                                                engine=engine)
    return make


def jaxopt_maker(name):
    import jaxopt

    def make(tol):
        cls = getattr(jaxopt, name)

        def run(f, z0, a):
            return cls(fixed_point_fun=f, tol=tol, maxiter=MAX_STEPS).run(z0, a).params
        return run
    return make


def optimistix_maker(unmapped):
    import lineax as lx
    import optimistix as optx

    def make(tol):
        adjoint = optx.ImplicitAdjoint(lx.GMRES(rtol=TOL, atol=0.0, restart=30, max_steps=MAX_STEPS)) \
            if unmapped else optx.ImplicitAdjoint()

        def run(f, z0, a):
            solver = optx.FixedPointIteration(rtol=tol, atol=0.0, norm=optx.max_norm)
            return optx.fixed_point(f, solver, z0, a, max_steps=MAX_STEPS, adjoint=adjoint, throw=False).value
        return run
    return make


def methods(unmapped):
    table = {"deqcore Anderson (default: XLA engine)": (deqcore_maker(), [TOL]),
             "deqcore FixedPointIteration (XLA engine)": (deqcore_maker(dq.FixedPointIteration()), [TOL]),
             "deqcore Anderson (host engine)": (deqcore_maker(engine="host"), [TOL]),
             "deqcore Broyden (host engine)": (deqcore_maker(dq.Broyden()), [TOL])}
    n = 64 * 256 if unmapped else 256
    l2 = [TOL * np.sqrt(n) * s for s in (1.0, 0.25, 1 / 16, 1 / 64)] + [TOL]      # L2 tolerances, loosest first
    try:
        import jaxopt  # noqa: F401
        table["jaxopt FixedPointIteration"] = (jaxopt_maker("FixedPointIteration"), l2)
        table["jaxopt AndersonAcceleration"] = (jaxopt_maker("AndersonAcceleration"), l2)
    except ImportError:
        pass
    try:
        import optimistix  # noqa: F401
        table["optimistix FixedPointIteration"] = (optimistix_maker(unmapped), [TOL, TOL / 4, TOL / 16])
    except ImportError:
        pass
    return table


# ---- problem, loss, measurements ---------------------------------------------------------------------------

def make_problem(kind, sizes, seed=0):
    rng = np.random.default_rng(seed)
    W, U, b, x = deq_map_arrays(kind, *sizes, rng)
    c = rng.standard_normal((sizes[0], sizes[1]))
    return tuple(jnp.asarray(a) for a in (W, U, b)), jnp.asarray(x), jnp.asarray(c)


def loss_of(solve, unmapped, x, c):
    z0 = jnp.zeros_like(c)
    if unmapped:
        return lambda p: jnp.sum(c * solve(f_batch, z0, (p, x)))
    return lambda p: jnp.sum(c * jax.vmap(lambda xi, zi: solve(f_one, zi, (p, xi)))(x, z0))


def solution_of(solve, unmapped, params, x, c):
    z0 = jnp.zeros_like(c)
    if unmapped:
        return jax.jit(lambda p: solve(f_batch, z0, (p, x)))(params)
    return jax.jit(lambda p: jax.vmap(lambda xi, zi: solve(f_one, zi, (p, xi)))(x, z0))(params)


def relative_residuals(params, x, z, unmapped):
    """Per system max|f(z) − z| / max|z| (the whole batch is one system when unmapped)."""
    W, U, b = (np.asarray(a) for a in params)
    z = np.asarray(z, np.float64)
    r = np.abs(np.tanh(z @ W.T + np.asarray(x) @ U.T + b) - z)
    if unmapped:
        return np.array([r.max() / np.abs(z).max()])
    return r.max(axis=1) / np.abs(z).max(axis=1)


def reference_grad_W(params, x, c, candidates):
    """dL/dW by the implicit function theorem (one dense float64 solve per sample) at z* refined by Newton's
    method from the candidate with the smallest residual per sample."""
    W, U, b = (np.asarray(a, np.float64) for a in params)
    inj = np.asarray(x) @ U.T + b
    zs = np.stack([np.asarray(z, np.float64) for z in candidates])
    res = np.abs(np.tanh(zs @ W.T + inj) - zs).max(axis=2)
    z = zs[res.argmin(axis=0), np.arange(zs.shape[1])]
    eye = np.eye(W.shape[0])
    grad = np.zeros_like(W)
    cs = np.asarray(c)
    for i in range(z.shape[0]):
        zi = z[i].copy()
        for _ in range(30):
            fz = np.tanh(W @ zi + inj[i])
            if np.abs(zi - fz).max() <= 1e-13:
                break
            zi = zi - np.linalg.solve(eye - (1 - fz ** 2)[:, None] * W, zi - fz)
        if not (np.isfinite(zi).all() and np.abs(np.tanh(W @ zi + inj[i]) - zi).max() <= 1e-12):
            zi = z[i]
        s = 1 - np.tanh(W @ zi + inj[i]) ** 2
        lam = np.linalg.solve((eye - s[:, None] * W).T, cs[i])
        grad += np.outer(s * lam, zi)
    return grad


class Counter:
    """Counts deqcore's host-side f-evaluations and VJPs (the adapter's _HostProblem methods) in one run, and
    times where the host-side work goes: inside f, inside the VJPs, and the whole forward and adjoint callbacks
    (whose remainder is the host solvers' own work and the callback's plumbing)."""

    def __enter__(self):
        self.nfe = self.nvjp = 0
        self.t = dict(f=0.0, vjp=0.0, linearise=0.0, forward=0.0, adjoint=0.0)
        self.saved = (dqj._HostProblem.f, dqj._HostProblem.pullback_at, dqj._host_solve, dqj._host_adjoint,
                      getattr(dqj._HostProblem, "pullback_with", None))
        f, pullback_at, host_solve, host_adjoint, pullback_with = self.saved

        def timed(key, fn):
            def run(*args):
                start = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    self.t[key] += time.perf_counter() - start
            return run

        def counted_f(problem, z):
            self.nfe += 1
            return timed("f", f)(problem, z)

        def counted_pullback_at(problem, z):
            pullback = timed("linearise", pullback_at)(problem, z)

            def counted(v):
                self.nvjp += 1
                return timed("vjp", pullback)(v)
            return counted
        def counted_pullback_with(problem, apply):          # a pullback linearised by XLA outside the callback
            pullback = pullback_with(problem, apply)

            def counted(v):
                self.nvjp += 1
                return timed("vjp", pullback)(v)
            return counted
        dqj._HostProblem.f, dqj._HostProblem.pullback_at = counted_f, counted_pullback_at
        if pullback_with is not None:
            dqj._HostProblem.pullback_with = counted_pullback_with
        dqj._host_solve, dqj._host_adjoint = timed("forward", host_solve), timed("adjoint", host_adjoint)
        dqj._host_callable.cache_clear()                    # the callbacks bind the host functions when traced
        return self

    def __exit__(self, *exc):
        dqj._HostProblem.f, dqj._HostProblem.pullback_at, dqj._host_solve, dqj._host_adjoint = self.saved[:4]
        if self.saved[4] is not None:
            dqj._HostProblem.pullback_with = self.saved[4]
        dqj._host_callable.cache_clear()


def xla_counts(solver, tol, unmapped, params, x, c):
    """(NFE, VJPs) of one fwd+grad on the XLA engine: the forward's evaluations (its steps + the start point's +
    the linearisation at z*) and the adjoint's VJPs (its steps, solving for g = c exactly as the gradient does,
    + the pullback to the arguments); vmapped, those of the slowest system (the loop runs until it finishes)."""
    from deqcore.interop import jax_xla

    z0 = jnp.zeros_like(c)
    spec = jax_xla.linear_spec(dq.SteadyStateAdjoint().with_forward(0.0, tol, MAX_STEPS))
    opts = dict(atol=0.0, rtol=tol, max_steps=MAX_STEPS)
    if unmapped:
        out = dqj.fixed_point_solution(f_batch, z0, (params, x), solver, **opts)
        lam = jax_xla.linear_run(f_batch, spec, True)(out.value, (params, x), c)
    else:
        out = jax.jit(jax.vmap(lambda zi, xi: dqj.fixed_point_solution(f_one, zi, (params, xi), solver, **opts)))(
            z0, x)
        lam = jax.jit(jax.vmap(lambda zi, xi, ci: jax_xla.linear_run(f_one, spec, True)(zi, (params, xi), ci)))(
            out.value, x, c)
    return int(jnp.max(out.num_steps)) + 2, int(jnp.max(lam.num_steps)) + 1


def peer_count(name, make, tol, unmapped, params, x, c):
    """Forward f-evaluations of a peer (None when it does not report them)."""
    z0 = jnp.zeros_like(c)
    try:
        if name.startswith("jaxopt"):
            import jaxopt
            cls = getattr(jaxopt, name.split()[1])
            if unmapped:
                state = cls(fixed_point_fun=f_batch, tol=tol, maxiter=MAX_STEPS).run(z0, (params, x)).state
                return int(state.num_fun_eval)
            run = jax.vmap(lambda xi, zi: cls(fixed_point_fun=f_one, tol=tol, maxiter=MAX_STEPS).run(
                zi, (params, xi)).state.num_fun_eval)
            return int(jnp.max(run(x, z0)))
        if name.startswith("optimistix"):
            import optimistix as optx
            solver = optx.FixedPointIteration(rtol=tol, atol=0.0, norm=optx.max_norm)
            if unmapped:
                return int(optx.fixed_point(f_batch, solver, z0, (params, x), max_steps=MAX_STEPS,
                                            throw=False).stats["num_steps"])
            steps = jax.vmap(lambda xi, zi: optx.fixed_point(f_one, solver, zi, (params, xi), max_steps=MAX_STEPS,
                                                             throw=False).stats["num_steps"])(x, z0)
            return int(jnp.max(steps))
    except Exception:                                   # counts are informative only
        return None
    return None


def timed(fn, arg):
    start = time.perf_counter()
    jax.block_until_ready(fn(arg))
    return time.perf_counter() - start


def bench_case(kind, unmapped, sizes, repeats):
    params, x, c = make_problem(kind, sizes)
    z0 = jnp.zeros_like(c)
    fj = jax.jit(f_batch)
    # one VJP as an adjoint step makes it: f linearised once (jax.vjp), its transpose applied to each vector
    pullback = jax.jit(lambda z, a: jax.vjp(lambda zz: f_batch(zz, a), z)[1])(z0, (params, x))
    vj = jax.jit(lambda linear, v: linear(v)[0])
    t_f = statistics.median(timed(lambda a: fj(z0, a), (params, x)) for _ in range(30))
    t_vjp = statistics.median(timed(lambda v: vj(pullback, v), c) for _ in range(30))
    rows, runs = [], {}
    for name, (make, tolerances) in methods(unmapped).items():
        chosen, z = None, None
        for tol in tolerances:                              # calibration: loosest tolerance meeting TOL
            try:
                z = solution_of(make(tol), unmapped, params, x, c)
            except Exception as err:
                print(f"  {name} tol {tol:.2g}: {type(err).__name__}: {str(err).splitlines()[0][:150]}")
                z = None
                continue
            chosen = tol
            worst = relative_residuals(params, x, z, unmapped).max()
            if worst <= TOL * (1 + 1e-3) or worst > 100 * TOL:        # met, or not converging at all
                break
        if chosen is None:
            rows.append(dict(method=name, error="failed"))
            continue
        loss = loss_of(make(chosen), unmapped, x, c)
        runs[name] = dict(tol=chosen, z=z, vg=jax.jit(jax.value_and_grad(loss)), fwd=jax.jit(loss),
                          make=make, t=[], tf=[])
        timed(runs[name]["vg"], params)
        timed(runs[name]["fwd"], params)
    for _ in range(repeats):                                # round-robin: load changes hit all rows alike
        for name, run in runs.items():
            run["t"].append(timed(run["vg"], params))
            run["tf"].append(timed(run["fwd"], params))
    reference = reference_grad_W(params, x, c, [run["z"] for run in runs.values()])
    for name, run in runs.items():
        grad_W = np.asarray(run["vg"](params)[1][0])
        err = float(np.linalg.norm(grad_W - reference) / np.linalg.norm(reference))
        res = relative_residuals(params, x, run["z"], unmapped)
        split = None
        if "XLA" in name:
            nfe, nvjp = xla_counts(dq.FixedPointIteration() if "FixedPoint" in name else None, run["tol"],
                                   unmapped, params, x, c)
            split = None
        elif name.startswith("deqcore"):
            parts = []
            for _ in range(5):                              # the host-side split: medians of a few timed runs
                vg = jax.jit(jax.value_and_grad(loss_of(run["make"](run["tol"]), unmapped, x, c)))
                with Counter() as count:
                    jax.block_until_ready(vg(params))       # traced and compiled with the timers in place
                    count.t = dict.fromkeys(count.t, 0.0)
                    start = time.perf_counter()
                    jax.block_until_ready(vg(params))
                    count.t["total"] = time.perf_counter() - start
                parts.append(count.t)
            split = sorted(parts, key=lambda p: p["total"])[len(parts) // 2]     # the run of median total
            nfe, nvjp = count.nfe // 2 + 1, count.nvjp // 2 + 1   # + JAX's evaluation of f at z* and its pullback
        else:
            nfe, nvjp = peer_count(name, run["make"], run["tol"], unmapped, params, x, c), None
        rows.append(dict(method=name, total=statistics.median(run["t"]), fwd=statistics.median(run["tf"]),
                         tol=run["tol"], nfe=nfe, nvjp=nvjp, residual=float(res.max()),
                         ok=int((res <= TOL * (1 + 1e-3)).sum()), systems=res.size, err=err, split=split))
    return rows, t_f, t_vjp


def qualifies(row):
    return "error" not in row and row["ok"] == row["systems"] and row["err"] <= 1e-3


def table(kind, unmapped, rows, t_f, t_vjp):
    layout = "unmapped (one system)" if unmapped else "vmapped (one system per sample)"
    peers = [r for r in rows if r["method"].startswith("jaxopt") and qualifies(r)]
    base = min(peers, key=lambda r: r["total"]) if peers else None
    lines = [f"### {kind} map, {layout}; one f {1e3 * t_f:.2f} ms, one VJP {1e3 * t_vjp:.2f} ms", "",
             f"`vs jaxopt`: total time over {base['method'] if base else '(no jaxopt row qualifies)'}'s, the "
             "fastest jaxopt row that converged with grad err <= 1e-3.", "",
             "| method | tol used | forward ms | fwd+grad ms | vs jaxopt | NFE | VJPs | floor ms | converged "
             "| residual | grad err |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | — | — | — | — | — | — | — | failed | — | — |")
            continue
        ratio = f"{r['total'] / base['total']:.2f}x" if base else "—"
        floor = "—"
        if r["nfe"] is not None and r["nvjp"] is not None:
            floor = f"{1e3 * (r['nfe'] * t_f + r['nvjp'] * t_vjp):.1f}"
        lines.append(f"| {r['method']} | {r['tol']:.2g} | {1e3 * r['fwd']:.1f} | {1e3 * r['total']:.1f} | {ratio} | "
                     f"{r['nfe'] if r['nfe'] is not None else '—'} | {r['nvjp'] if r['nvjp'] is not None else '—'} | "
                     f"{floor} | {r['ok']}/{r['systems']} | {r['residual']:.1e} | {r['err']:.1e} |")
    split = [r for r in rows if r.get("split")]
    if split:
        lines += ["", "Where a deqcore fwd+grad goes (ms; of 5 runs timed from inside the callbacks, the one of median "
                  "total): the forward "
                  "callback's f-evaluations and the rest of it (the host solver and the callback's own work), the "
                  "adjoint callback's VJPs, its linearisation of f at z* and the rest of it (the adjoint iteration or "
                  "GMRES), and everything outside the callbacks (XLA: f at z*, the pullback to the arguments, the "
                  "loss; the callbacks' transfers and dispatch).", "",
                  "| method | total | fwd: in f | fwd: rest | adjoint: in VJPs | adjoint: linearise | adjoint: rest "
                  "| outside the callbacks |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in split:
            t = {k: 1e3 * v for k, v in r["split"].items()}
            outside = t["total"] - t["forward"] - t["adjoint"]
            lines.append(f"| {r['method']} | {t['total']:.1f} | {t['f']:.1f} | {t['forward'] - t['f']:.1f} | "
                         f"{t['vjp']:.1f} | {t['linearise']:.1f} | {t['adjoint'] - t['vjp'] - t['linearise']:.1f} | "
                         f"{outside:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, one repeat: a dry run of the script")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per row (default 7)")
    parser.add_argument("--kinds", default="easy,hard", help="comma-separated maps (easy, hard)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"), help="folder for jax_deq.md")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.tiny else 3 if args.quick else 7)
    sizes = (8, 16, 8) if args.tiny else (64, 256, 128)
    versions = []
    for mod in ("jaxopt", "optimistix", "lineax"):
        try:
            import importlib.metadata
            versions.append(f"{mod} {importlib.metadata.version(mod)}")
        except Exception:
            versions.append(f"{mod} not installed")
    header = [
        "# DEQ in JAX: deqcore through the adapter vs jaxopt and optimistix", "",
        f"z = tanh(W z + U x + b), batch {sizes[0]}, width {sizes[1]}, input {sizes[2]}, float64; L = <c, z*>; "
        f"jit(value_and_grad) with respect to (W, U, b); target residual max|f(z) − z| <= {TOL:g}·max|z| per "
        f"system. Medians of {repeats} round-robin repeats after a warm-up"
        f"{' (--quick)' if args.quick else ' (--tiny)' if args.tiny else ''}. Every row has its gradient error "
        "(dL/dW against a dense float64 implicit-function-theorem solve) next to its time.", "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs (shared; timings are indicative, ratios are from "
        f"one run). Python {platform.python_version()}, NumPy {np.__version__}, jax {jax.__version__}, "
        f"deqcore {dq.__version__}; {', '.join(versions)} (not deqcore dependencies).", "",
    ]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "jax_deq" + ("_tiny" if args.tiny else "_quick" if args.quick else "") + ".md"
    sections, summary, failures = [], [], 0
    for kind in args.kinds.split(","):
        totals = {}
        for unmapped in (True, False):
            start = time.perf_counter()
            try:
                rows, t_f, t_vjp = bench_case(kind, unmapped, sizes, repeats)
                sections.append(table(kind, unmapped, rows, t_f, t_vjp))
                totals[unmapped] = {r["method"]: r for r in rows if "error" not in r}
                status = "ok"
            except Exception as err:
                traceback.print_exc()
                failures += 1
                status = f"error: {type(err).__name__}: {err}".splitlines()[0][:200]
                sections.append(f"### {kind} map, {'unmapped' if unmapped else 'vmapped'}: {status}")
            print(sections[-1] + "\n", flush=True)
            print(f"bench_jax_deq: {kind} {'unmapped' if unmapped else 'vmapped'}: {status} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
        if len(totals) == 2:
            for method in totals[True]:
                if method in totals[False]:
                    a, b = totals[True][method], totals[False][method]
                    summary.append(f"| {kind} | {method} | {1e3 * a['total']:.1f} | {1e3 * b['total']:.1f} | "
                                   f"{b['total'] / a['total']:.2f}x |")
        body = list(sections)
        if summary:
            body.append("### vmapped vs unmapped (fwd+grad, same run)\n\n| map | method | unmapped ms | vmapped ms "
                        "| ratio |\n|---|---|---:|---:|---:|\n" + "\n".join(summary))
        (out / name).write_text("\n".join(header + ["\n\n".join(body), ""]))
    print(f"wrote {out / name}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
