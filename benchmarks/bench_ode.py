"""ODE engine side by side with scipy.integrate.solve_ivp at the same tolerances.

    python benchmarks/bench_ode.py            # B=2048 oscillators; Brusselator 32x32 (2048 unknowns)
    python benchmarks/bench_ode.py --quick    # B=256; Brusselator 16x16 (well under a minute)
    python benchmarks/bench_ode.py --adjoints # only section 4, written into its section of ode.md

1. A batched non-stiff problem (B Van der Pol oscillators with different mu, integrated as one system):
   deqcore Tsit5 / VCABM3 against RK45 — f-evaluations, wall time, error against a DOP853 reference, and the
   per-step overhead outside f as a fraction of one f-evaluation.
2. The steady state of the 2-D Brusselator reaction-diffusion system (periodic grid): deqcore steady_state
   (VCABM3, Tsit5, Rodas3 with matrix-free GMRES) against solve_ivp RK45 and BDF stopped by a terminal event
   at the same residual test max|du/dt| <= atol + rtol max|du/dt at the start|.
3. The step loop's overhead with the fused step kernels (Numba) against the same loop on the reference
   (NumPy) kernels, ``DEQCORE_KERNELS=reference``: the oscillators of 1. as one system (integrate), and a
   batched DEQ-style steady state z = tanh(W z + x) (one step size and controller per sample), timed
   alternately in one process.
4. ODE adjoints on a long span (T = 1000, a few thousand forward steps): GaussAdjoint (dense forward solution
   + Gauss–Legendre quadrature) against BacksolveAdjoint; GaussAdjoint's dense-output lookups are O(log
   steps), so both grow linearly with the number of steps.

Prints a Markdown table (medians of repeated timings) and writes it to benchmarks/results/ode.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.integrate import solve_ivp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deqcore as dq  # noqa: E402


def median_time(fn, repeats):
    out = fn()  # warm-up, and the result reported
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


class TimedRHS:
    """A right-hand side that adds up the time spent inside it, so that a solver's overhead is measured
    against the f-evaluations of the same run (robust to the machine's load changing between runs)."""

    def __init__(self, f):
        self.f, self.seconds = f, 0.0

    def __call__(self, t, y):
        t0 = time.perf_counter()
        out = self.f(t, y)
        self.seconds += time.perf_counter() - t0
        return out


def step_overhead(total, inside, nfev, steps):
    """Time per step outside f, in mean f-evaluations of the same run."""
    return (total - inside) / steps / (inside / nfev)


def timed_solve(solve, timer, count, repeats):
    """(result, median time, median overhead per step in f-evaluations); ``count(result)`` gives
    ``(nfev, steps)``."""
    out = solve()  # warm-up, and the result reported
    times, overheads = [], []
    for _ in range(repeats):
        timer.seconds = 0.0
        t0 = time.perf_counter()
        result = solve()
        times.append(time.perf_counter() - t0)
        overheads.append(step_overhead(times[-1], timer.seconds, *count(result)))
    return out, float(np.median(times)), float(np.median(overheads))


def deq_counts(sol):
    return sol.stats["nfev"], sol.stats["num_steps"]


# ---- 1. batched non-stiff oscillators -------------------------------------------------------------------

def oscillators(batch, rng):
    mu = rng.uniform(0.5, 2.0, batch)

    def rhs(t, y):
        x, v = y[:, 0], y[:, 1]
        return np.stack([v, mu * (1.0 - x * x) * v - x], axis=1)

    y0 = np.stack([rng.uniform(1.0, 2.0, batch), np.zeros(batch)], axis=1)
    return rhs, y0


def nonstiff_rows(batch, tols, repeats):
    rng = np.random.default_rng(0)
    rhs, y0 = oscillators(batch, rng)
    rhs = TimedRHS(rhs)
    flat = TimedRHS(lambda t, y: rhs.f(t, y.reshape(-1, 2)).reshape(-1))
    t1 = 10.0
    ref = solve_ivp(flat, (0, t1), y0.reshape(-1), method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
    _, f_time = median_time(lambda: [rhs.f(0.0, y0) for _ in range(100)], repeats)
    f_time /= 100
    rows = []
    for tol in tols:
        scipy_sol, scipy_time, scipy_overhead = timed_solve(
            lambda: solve_ivp(flat, (0, t1), y0.reshape(-1), method="RK45", rtol=tol, atol=tol), flat,
            lambda s: (s.nfev, s.t.size - 1), repeats)
        scipy_err = np.abs(scipy_sol.y[:, -1] - ref).max()
        rows.append(("RK45 (SciPy)", tol, scipy_sol.nfev, scipy_time, scipy_err, scipy_overhead, 1.0))
        for solver in (dq.Tsit5(), dq.VCABM3()):
            solve = lambda: dq.integrate(rhs, y0, (0.0, t1), solver, atol=tol, rtol=tol)  # noqa: E731
            sol, t, overhead = timed_solve(solve, rhs, deq_counts, repeats)
            err = np.abs(sol.ys[-1].reshape(-1) - ref).max()
            rows.append((f"{type(solver).__name__} (deqcore)", tol, sol.stats["nfev"], t, err, overhead,
                         scipy_time / t))
    return rows, f_time


# ---- 2. Brusselator steady state ------------------------------------------------------------------------

def brusselator(n, a=1.0, b=1.7, alpha=0.002):
    """u_t = a + u²v − (b+1)u + α Δu, v_t = b u − u²v + α Δv on the periodic unit square (b < 1 + a²:
    the homogeneous state (a, b/a) is stable). State shape (2, n, n)."""
    scale = alpha * n * n

    def lap(w):
        return scale * (np.roll(w, 1, 0) + np.roll(w, -1, 0) + np.roll(w, 1, 1) + np.roll(w, -1, 1) - 4 * w)

    def rhs(t, y):
        u, v = y[0], y[1]
        uuv = u * u * v
        return np.stack([a + uuv - (b + 1.0) * u + lap(u), b * u - uuv + lap(v)])

    x = np.linspace(0, 1, n, endpoint=False)
    X, Y = np.meshgrid(x, x, indexing="ij")
    y0 = np.stack([a + 0.5 * np.sin(2 * np.pi * X) * np.cos(2 * np.pi * Y), np.full((n, n), b / a)])
    return rhs, y0, np.stack([np.full((n, n), a), np.full((n, n), b / a)])


def steady_rows(n, tol, repeats):
    rhs, y0, exact = brusselator(n)
    shape = y0.shape
    flat = lambda t, y: rhs(t, y.reshape(shape)).reshape(-1)  # noqa: E731
    rows = []

    res0 = np.abs(flat(0.0, y0.reshape(-1))).max()

    def event(t, y):
        return np.abs(flat(t, y)).max() - (tol + tol * res0)
    event.terminal = True

    for method in ("RK45", "BDF"):
        def run():
            return solve_ivp(flat, (0, 1e4), y0.reshape(-1), method=method, rtol=tol, atol=tol, events=event)
        sol, t = median_time(run, repeats)
        code = "SUCCESS" if sol.status == 1 else "no event"
        rows.append((f"{method} (SciPy, terminal event)", code, sol.nfev, t,
                     np.abs(sol.y[:, -1] - exact.reshape(-1)).max()))
    for solver in (dq.VCABM3(), dq.Tsit5(), dq.Rodas3(dq.GMRES(rtol=1e-3, restart=10))):
        sol, t = median_time(lambda: dq.steady_state(rhs, y0, solver, atol=tol, rtol=tol, max_steps=3000,
                                                     throw=False), repeats)
        name = type(solver).__name__ + (" + GMRES" if isinstance(solver, dq.Rodas3) else "")
        error = np.abs(sol.value - exact).max()
        rows.append((f"{name} (deqcore)", sol.result.name, sol.stats["nfev"], t, error))
    return rows


# ---- 3. fused step kernels against the reference kernels -------------------------------------------------

def deq_map(batch, width, rng):
    W = rng.standard_normal((width, width))
    W *= 0.8 / np.linalg.norm(W, 2)
    X = rng.standard_normal((batch, width))
    return lambda t, z: np.tanh(z @ W.T + X) - z


def alternating_medians(fns, timer, repeats):
    """Median time and overhead per step (f-evaluations) of each solve, timed in turn."""
    results = {name: fn() for name, fn in fns.items()}  # warm-up (and compilation), and the results reported
    times = {name: [] for name in fns}
    overheads = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            timer.seconds = 0.0
            t0 = time.perf_counter()
            sol = fn()
            times[name].append(time.perf_counter() - t0)
            overheads[name].append(step_overhead(times[name][-1], timer.seconds, *deq_counts(sol)))
    return results, ({name: float(np.median(v)) for name, v in times.items()},
                     {name: float(np.median(v)) for name, v in overheads.items()})


def with_kernels(mode, solve):
    def run():
        previous = os.environ.get("DEQCORE_KERNELS")
        os.environ["DEQCORE_KERNELS"] = mode
        try:
            return solve()
        finally:
            if previous is None:
                del os.environ["DEQCORE_KERNELS"]
            else:
                os.environ["DEQCORE_KERNELS"] = previous
    return run


def kernel_rows(batch, deq_batch, width, repeats):
    rng = np.random.default_rng(0)
    rhs, y0 = oscillators(batch, rng)
    rhs = TimedRHS(rhs)
    g = TimedRHS(deq_map(deq_batch, width, rng))
    z0 = np.zeros((deq_batch, width))
    problems = [(f"integrate: {batch} oscillators as one system", rhs, y0,
                 lambda solver, tol: dq.integrate(rhs, y0, (0.0, 10.0), solver, atol=tol, rtol=tol)),
                (f"steady state: batch {deq_batch}, width {width}, per sample", g, z0,
                 lambda solver, tol: dq.steady_state(g, z0, solver, atol=tol, rtol=tol, batched=True,
                                                     max_steps=1000))]
    rows = []
    for label, f, x0, solve in problems:
        _, f_time = median_time(lambda: [f.f(0.0, x0) for _ in range(100)], repeats)
        f_time /= 100
        for solver in (dq.Tsit5(), dq.VCABM3()):
            for tol in (1e-3, 1e-6):
                fns = {mode: with_kernels(mode, lambda: solve(solver, tol)) for mode in ("auto", "reference")}
                sols, (times, over) = alternating_medians(fns, f, repeats)
                nfev, steps = deq_counts(sols["auto"])
                rows.append((label, type(solver).__name__, tol, nfev, steps, f_time, times["auto"],
                             over["auto"], times["reference"], over["reference"]))
    return rows


# ---- 4. ODE adjoints on a long span -----------------------------------------------------------------------

def adjoint_rows(spans, repeats):
    """Seconds of one gradient (median) with each continuous adjoint, and the gradients' agreement."""
    rng = np.random.default_rng(0)
    n = 4
    W, b = rng.standard_normal((n, n)) / np.sqrt(n), rng.standard_normal(n)

    def rhs(t, y, W, b):
        return np.tanh(W @ y + b * np.cos(t)) - 0.3 * y

    def vjp(t, y, args):
        W, b = args
        th = np.tanh(W @ y + b * np.cos(t))

        def pullback(a):
            g = a * (1 - th ** 2)
            return W.T @ g - 0.3 * a, (np.outer(g, y), g * np.cos(t))
        return th - 0.3 * y, pullback

    rows = []
    for T in spans:
        y0 = rng.standard_normal(n)
        tight = dq.integrate(rhs, y0, (0.0, T), args=(W, b), atol=1e-10, rtol=1e-10)
        reference = dq.ode_gradients(vjp, tight, np.ones(n), dq.DiscreteAdjoint())[1][1]
        sol = dq.integrate(rhs, y0, (0.0, T), args=(W, b), atol=1e-6, rtol=1e-6)
        for adjoint in (dq.BacksolveAdjoint(), dq.GaussAdjoint()):
            grads, t = median_time(lambda: dq.ode_gradients(vjp, sol, np.ones(n), adjoint), repeats)
            rows.append((T, len(sol.steps), type(adjoint).__name__, t, np.abs(grads[1][1] - reference).max()))
    return rows


def adjoint_section(rows, repeats):
    lines = ["## ODE adjoints on a long span", "",
             "dL/dθ for L = sum(y(T)) of y' = tanh(W y + b cos t) − 0.3 y (4 unknowns, atol = rtol = 1e-6), "
             f"median of {repeats} gradients. Error: max |dL/db − reference|, the reference being the discrete "
             "adjoint of a forward solve at 1e-10.", "",
             "| T | forward steps | adjoint | time (s) | time / Backsolve | error |", "|---|---|---|---|---|---|"]
    base = {r[0]: r[3] for r in rows if r[2] == "BacksolveAdjoint"}
    for T, steps, name, t, error in rows:
        lines.append(f"| {T:g} | {steps} | {name} | {t:.3f} | {t / base[T]:.2f}x | {error:.1e} |")
    return "\n".join(lines) + "\n"


def write_section(path, section):
    """Replace (or append) the section with the same heading in the results file."""
    text = path.read_text() if path.exists() else ""
    heading = section.splitlines()[0]
    if heading in text:
        start = text.index(heading)
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("" if nxt < 0 else text[nxt + 1:])
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes in well under a minute")
    parser.add_argument("--adjoints", action="store_true", help="only the adjoint section (4.)")
    opts = parser.parse_args()
    out = Path(__file__).resolve().parent / "results" / ("ode_quick.md" if opts.quick else "ode.md")
    if opts.adjoints:
        section = adjoint_section(adjoint_rows((100.0, 1000.0), 3), 3)
        print(section)
        write_section(out, section)
        return
    batch, grid, repeats = (256, 16, 3) if opts.quick else (2048, 32, 5)
    tols = (1e-4, 1e-6, 1e-8)
    nonstiff, f_time = nonstiff_rows(batch, tols, repeats)
    steady = steady_rows(grid, 1e-6, max(1, repeats - 2))
    kernels = kernel_rows(batch, 64 if opts.quick else 256, 32 if opts.quick else 128, 2 * repeats + 1)

    lines = [
        "# ODE engine vs scipy.integrate.solve_ivp",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}, "
        f"NumPy {np.__version__}, SciPy {scipy.__version__}, deqcore {dq.__version__}. "
        f"Medians of {repeats} timings after a warm-up.",
        "",
        f"## Batched non-stiff: {batch} Van der Pol oscillators (mu in [0.5, 2]) on [0, 10], "
        f"{2 * batch} unknowns; one f-evaluation takes {f_time * 1e6:.0f} µs",
        "",
        "Error: max abs deviation from a DOP853 solution at rtol=atol=1e-12. Overhead: time per step outside "
        "f, in f-evaluations (the mean time of one f-evaluation in the same run). Speed-up: RK45 time / this "
        "time.",
        "",
        "| method | atol = rtol | nfev | time (ms) | error | overhead / step (f-evals) | speed-up vs RK45 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, tol, nfev, t, err, over, speed in nonstiff:
        lines.append(f"| {name} | {tol:.0e} | {nfev} | {t * 1e3:.1f} | {err:.1e} | {over:.2f} | "
                     f"{speed:.2f}x |")
    lines += [
        "",
        f"## Steady state of the 2-D Brusselator ({grid}x{grid} periodic grid, {2 * grid * grid} unknowns), "
        "atol = rtol = 1e-6",
        "",
        "Stop when max|du/dt| <= atol + rtol max|du/dt(u0)| (SciPy: a terminal event on the same test; its extra "
        "f-evaluations are not counted in nfev). Error: max deviation from the exact steady state (a, b/a).",
        "",
        "| method | result | nfev | time (ms) | error |",
        "|---|---|---|---|---|",
    ]
    for name, code, nfev, t, err in steady:
        lines.append(f"| {name} | {code} | {nfev} | {t * 1e3:.1f} | {err:.1e} |")
    lines += [
        "",
        "## Step overhead: fused step kernels against the reference kernels",
        "",
        "The same solves with the Numba step kernels (default) and with `DEQCORE_KERNELS=reference` (NumPy "
        "kernels), timed alternately. Overhead: time per attempted step outside f, in f-evaluations (their "
        "mean time in the same run; f column: one f-evaluation timed on its own).",
        "",
        "| problem | method | atol = rtol | nfev | steps | f (µs) | fused time (ms) | "
        "fused overhead / step | reference time (ms) | reference overhead / step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, name, tol, nfev, steps, ft, t_fused, o_fused, t_ref, o_ref in kernels:
        lines.append(f"| {label} | {name} | {tol:.0e} | {nfev} | {steps} | {ft * 1e6:.0f} | "
                     f"{t_fused * 1e3:.1f} | {o_fused:.2f} | {t_ref * 1e3:.1f} | {o_ref:.2f} |")
    table = "\n".join(lines) + "\n\n" + adjoint_section(adjoint_rows((100.0, 1000.0), repeats), repeats)
    print(table)
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)


if __name__ == "__main__":
    main()
