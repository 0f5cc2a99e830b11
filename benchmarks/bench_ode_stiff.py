"""Stiff ODEs: deqcore's Radau (Radau IIA, order 5), Rodas5P (Rosenbrock) and BDF (variable-order NDF) against SciPy's Radau, BDF and LSODA at matched error.

    python benchmarks/bench_ode_stiff.py              # the recorded run (a few minutes)
    python benchmarks/bench_ode_stiff.py --quick      # fewer tolerances and one timing per run
    python benchmarks/bench_ode_stiff.py --per-decade 4 --problems robertson,vdp,hires --solvers \
        "Radau (deqcore),BDF (deqcore)" --repeats 1 --out /tmp/fine.md   # quarter decades: the trend

Problems (Hairer–Wanner II): Robertson (t ∈ [0, 1e5]), Van der Pol with μ = 1000 (y'' = μ(1 − y²)y' − y,
t ∈ [0, 3000], two relaxation jumps), HIRES (t ∈ [0, 321.8122]) and the 2-D Brusselator on a periodic
16 × 16 grid (512 unknowns, α = 10, t ∈ [0, 11.5]). Every solver gets the same Jacobian information: none
(finite differences) on the first three, the sparsity pattern on the Brusselator (SciPy's Radau/BDF group
columns with it; LSODA cannot use a pattern and is left out there).

Costs: rhs calls counted by a wrapper around the right-hand side (finite-difference Jacobian columns and
groups included, for every solver alike) and wall time (median of ``--repeats`` runs, all solvers of a
problem timed in one process). Error: max over components of |y(t1) − ref| / (|ref| + floor), the reference
from SciPy's Radau at rtol 1e-13. Every solver runs over the same tolerance sweep (rtol 1e-1 … 1e-9, so that
matched-error interpolation rarely hits a sweep's end), deqcore's solvers also at rtol = ``LOOSE_RTOLS`` (1):
at a given rtol their errors lie up to two decades below SciPy's, so without it their loosest run can be
more accurate than the loosest errors compared (1e-2), and only an upper bound of their cost is known there.
Costs at matched error are read off the work-precision curves by log–log interpolation; a run that fails
(rtol 1 asks for no correct digit) is shown with error nan and left out of the interpolation.
Writes benchmarks/results/ode_stiff.md and one PNG per problem (error against rhs calls and against time).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.integrate import solve_ivp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deqcore as dq  # noqa: E402
from deqcore.demos import stiff_problems  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# ---- problems ----
def robertson():
    def f(t, y):
        return np.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
                         0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2])
    return dict(name="Robertson", f=f, y0=np.array([1.0, 0.0, 0.0]), t1=1e5, atol_ratio=1e-4, floor=1e-10,
                sparsity=None)


def van_der_pol(mu=1000.0):
    def f(t, y):
        return np.array([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])
    return dict(name="Van der Pol (mu=1000)", f=f, y0=np.array([2.0, 0.0]), t1=3000.0, atol_ratio=1.0,
                floor=1e-3, sparsity=None)


def hires():
    f, y0 = stiff_problems.hires, stiff_problems.HIRES_Y0
    return dict(name="HIRES", f=f, y0=y0, t1=stiff_problems.HIRES_T1, atol_ratio=1e-3, floor=1e-6, sparsity=None)


def brusselator_2d():
    f, y0, pattern = stiff_problems.brusselator_2d()
    return dict(name="Brusselator 2-D (512)", f=f, y0=y0, t1=11.5, atol_ratio=1.0, floor=1e-3,
                sparsity=pattern)


# ---- runs ----
class Counted:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.f(t, y)


def run_scipy(problem, method, rtol):
    g = Counted(problem["f"])
    kw = {} if problem["sparsity"] is None or method == "LSODA" else {"jac_sparsity": problem["sparsity"]}
    t0 = time.perf_counter()
    r = solve_ivp(g, (0.0, problem["t1"]), problem["y0"], method=method, rtol=rtol,
                  atol=rtol * problem["atol_ratio"], **kw)
    return r.y[:, -1], g.calls, time.perf_counter() - t0, r.status == 0


def run_deqcore(problem, make, rtol):
    g = Counted(problem["f"])
    t0 = time.perf_counter()
    sol = dq.integrate(g, problem["y0"], (0.0, problem["t1"]), make(problem), rtol=rtol,
                       atol=rtol * problem["atol_ratio"], max_steps=200_000, throw=False)
    return sol.ys[-1], g.calls, time.perf_counter() - t0, sol.success


DEQCORE = {
    "Radau (deqcore)": lambda p: dq.Radau(jac_sparsity=p["sparsity"]),
    "Rodas5P": lambda p: dq.Rodas5P(jac_sparsity=p["sparsity"], autonomous=True),
    "BDF (deqcore)": lambda p: dq.BDF(jac_sparsity=p["sparsity"]),
}


def error(y, ref, floor):
    return float(np.max(np.abs(y - ref) / (np.abs(ref) + floor)))


#: tolerances only deqcore's solvers run at, before the common sweep (see the module docstring)
LOOSE_RTOLS = (1.0,)


def sweep(problem, rtols, repeats, loose=()):
    """The curves (rtol, error, rhs calls, median seconds) of every solver over ``rtols``, deqcore's solvers
    first over ``loose`` too."""
    ref = solve_ivp(problem["f"], (0.0, problem["t1"]), problem["y0"], method="Radau", rtol=1e-13,
                    atol=1e-13 * problem["atol_ratio"],
                    **({} if problem["sparsity"] is None else {"jac_sparsity": problem["sparsity"]})).y[:, -1]
    runners = {name: (lambda rtol, m=name: run_scipy(problem, m, rtol)) for name in ("Radau", "BDF", "LSODA")
               if not (name == "LSODA" and problem["sparsity"] is not None)}
    runners.update({name: (lambda rtol, mk=mk: run_deqcore(problem, mk, rtol)) for name, mk in DEQCORE.items()})
    for run in runners.values():          # warm-up (imports, compiled kernels)
        run(rtols[0])
    curves = {name: [] for name in runners}
    for rtol in list(loose) + list(rtols):
        running = {name: run for name, run in runners.items() if rtol in rtols or name in DEQCORE}
        times = {name: [] for name in running}
        first = {}
        for _ in range(repeats):          # interleaved: load changes hit every solver alike
            for name, run in running.items():
                y, calls, t, ok = run(rtol)
                times[name].append(t)
                first.setdefault(name, (y, calls, ok))
        for name in running:
            y, calls, ok = first[name]
            e = error(y, ref, problem["floor"]) if ok else float("nan")
            curves[name].append((rtol, e, calls, float(np.median(times[name]))))
    return curves


def at_error(curve, target):
    """Cost (rhs calls, seconds, exact) at ``target`` error by log–log interpolation along the sweep. When even
    the loosest run is more accurate than ``target``, its cost is an upper bound (``exact`` False); None when
    the tightest run does not reach ``target``."""
    pts = sorted((e, c, t) for _, e, c, t in curve if e > 0 and np.isfinite(e))
    if not pts or target < pts[0][0]:
        return None
    if target >= pts[-1][0]:
        e, c, t = min(pts, key=lambda p: p[1])
        return c, t, False
    errs = np.log([p[0] for p in pts])
    calls = np.exp(np.interp(np.log(target), errs, np.log([p[1] for p in pts])))
    secs = np.exp(np.interp(np.log(target), errs, np.log([p[2] for p in pts])))
    return calls, secs, True


def matched_table(curves):
    """The Markdown table of costs at matched error for one problem's sweeps."""
    lines = []
    errs = sorted({e for curve in curves.values() for _, e, _, _ in curve if e > 0})
    targets = [10.0 ** k for k in range(-2, -11, -1) if errs and errs[0] <= 10.0 ** k <= errs[-1]]
    lines += ["", "At matched error: rhs calls / time (log–log interpolation along each sweep; ≤: the loosest "
              "run was already more accurate, its cost shown; ratios = deqcore's solver / best SciPy solver at "
              "that error, calls and time taken separately):", "",
              "| error | " + " | ".join(curves) + "".join(f" | {m} / best SciPy (calls, time)" for m in DEQCORE)
              + " | best deqcore / best SciPy (calls, time) |", "|---|" + "---|" * (len(curves) + len(DEQCORE) + 1)]
    for target in targets:
        cells, best_c, best_t = [], np.inf, np.inf
        for name, curve in curves.items():
            v = at_error(curve, target)
            cells.append("—" if v is None else f"{'' if v[2] else '≤ '}{v[0]:.0f} / {v[1]:.3f}s")
            if v is not None and name not in DEQCORE:
                best_c, best_t = min(best_c, v[0]), min(best_t, v[1])
        ratios, our_c, our_t = [], np.inf, np.inf
        for m in DEQCORE:
            ours = at_error(curves[m], target) if m in curves else None
            ratios.append("—" if ours is None or not np.isfinite(best_c) else
                          f"{'' if ours[2] else '≤ '}{ours[0] / best_c:.2f}, {ours[1] / best_t:.2f}")
            if ours is not None:
                our_c, our_t = min(our_c, ours[0]), min(our_t, ours[1])
        ratios.append("—" if not (np.isfinite(our_c) and np.isfinite(best_c)) else
                      f"{our_c / best_c:.2f}, {our_t / best_t:.2f}")
        lines.append(f"| {target:.0e} | " + " | ".join(cells + ratios) + " |")
    return lines


def retable(path):
    """Rewrite the matched-error tables of a recorded results file from its raw sweep rows (no new runs)."""
    text = path.read_text().split("\n")
    out, curves, i = [], None, 0
    while i < len(text):
        line = text[i]
        if line.startswith("| solver | rtol |"):
            curves = {}
            out += [line, text[i + 1]]
            i += 2
            while i < len(text) and text[i].startswith("| "):
                name, rtol, e, c, t = [x.strip() for x in text[i].strip("|").split("|")]
                curves.setdefault(name, []).append((float(rtol), float(e), int(c), float(t)))
                out.append(text[i])
                i += 1
            while i < len(text) and not text[i].startswith("## "):
                i += 1                       # drop the old matched-error table
            out += matched_table(curves) + [""]
            continue
        out.append(line)
        i += 1
    path.write_text("\n".join(out).rstrip("\n") + "\n")


def plot(problem, curves, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, curve in curves.items():
        e = [c[1] for c in curve]
        style = "-o" if name in DEQCORE else "--s"
        axes[0].loglog([c[2] for c in curve], e, style, label=name, ms=4)
        axes[1].loglog([c[3] for c in curve], e, style, label=name, ms=4)
    axes[0].set_xlabel("rhs calls (finite-difference Jacobians included)")
    axes[1].set_xlabel("wall time [s] (median)")
    for ax in axes:
        ax.set_ylabel("error at t1")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{problem['name']}: work-precision")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    global DEQCORE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-decade", type=int, default=1, help="tolerances per decade (4: quarter decades, rtol "
                    "1e-1 … 1e-7; single runs' errors scatter, a denser sweep shows the trend)")
    ap.add_argument("--brusselator-repeats", type=int, default=1, help="timed runs per point there (slow)")
    ap.add_argument("--problems", default="robertson,vdp,hires,brusselator")
    ap.add_argument("--out", default="ode_stiff.md", help="results file under benchmarks/results (or a path); "
                    "the plots are written beside it")
    ap.add_argument("--solvers", default=",".join(DEQCORE), help="the deqcore solvers to run (SciPy's three "
                    "always run), comma-separated, e.g. 'Radau (deqcore)'")
    ap.add_argument("--retable", action="store_true", help="only rebuild the matched-error tables of "
                    "benchmarks/results/ode_stiff.md from its recorded sweeps")
    args = ap.parse_args(argv)
    chosen = [name.strip() for name in args.solvers.split(",")]
    unknown = [name for name in chosen if name not in DEQCORE]
    if unknown:
        ap.error(f"unknown solver(s) {unknown}; choose from {list(DEQCORE)}")
    DEQCORE = {name: DEQCORE[name] for name in chosen}
    out = RESULTS / args.out
    if args.retable:
        retable(out)
        return
    q = args.per_decade
    rtols = [1e-3, 1e-5, 1e-7, 1e-9] if args.quick else \
        [10.0 ** -k for k in range(1, 10)] if q == 1 else [10.0 ** (-k / q) for k in range(q, 7 * q + 1)]
    loose = () if args.quick else LOOSE_RTOLS if q == 1 else tuple(10.0 ** (-k / q) for k in range(q))
    repeats = 1 if args.quick else args.repeats
    makers = {"robertson": robertson, "vdp": van_der_pol, "hires": hires, "brusselator": brusselator_2d}
    lines = ["# Stiff ODEs: Radau, Rodas5P and BDF (deqcore) against SciPy's Radau, BDF and LSODA", "",
             f"Python {platform.python_version()}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
             f"{platform.machine()}; `python benchmarks/bench_ode_stiff.py"
             f"{' --quick' if args.quick else ''}{f' --per-decade {q}' if q != 1 else ''}`; medians of {repeats} timed run(s) per point, solvers "
             f"interleaved (the Brusselator: {args.brusselator_repeats} timed run(s) per point). "
             "rhs calls include finite-difference Jacobian evaluations (a wrapper counts every call). "
             "deqcore's solvers also run at rtol 1 (their errors at a given rtol lie lower: see the "
             "script's docstring; a failed run shows error nan). `Radau (deqcore)` is `dq.Radau()` (Radau IIA, "
             "order 5, the method of SciPy's `Radau`). `Rodas5P` is told the problem is autonomous "
             "(no ∂f/∂t; otherwise one more rhs call per step); `BDF (deqcore)` is `dq.BDF()` (NDF, orders "
             "1–5), SciPy's `BDF` the same family of formulas.", ""]
    for key in args.problems.split(","):
        problem = makers[key]()
        curves = sweep(problem, rtols, args.brusselator_repeats if key == "brusselator" and not args.quick
                       else repeats, loose=loose)
        png = out.parent / f"{out.stem}_{key}.png"
        plot(problem, curves, png)
        lines += [f"## {problem['name']}", "", f"![work-precision]({png.name})", "",
                  "| solver | rtol | error | rhs calls | time [s] |", "|---|---|---|---|---|"]
        for name, curve in curves.items():
            for rtol, e, c, t in curve:
                lines.append(f"| {name} | {rtol:.{0 if q == 1 else 2}e} | {e:.2e} | {c} | {t:.3f} |")
        lines += matched_table(curves)
        lines.append("")
        print("\n".join(lines[-12:]), flush=True)
        if not args.quick:                # written after every problem: a partial run keeps what it has
            out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
