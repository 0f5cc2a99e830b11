"""Per-step cost of the stiff ODE path on small problems: deqcore's Radau, BDF and Rodas5P before and after a change
(two versions of the package side by side in one run), against SciPy's Radau, BDF and LSODA at the same rtol.

    python benchmarks/bench_ode_overhead.py                 # before = commit 1ecd85d, after = this checkout
    python benchmarks/bench_ode_overhead.py --before PATH   # a folder holding an older deqcore/ package
    python benchmarks/bench_ode_overhead.py --quick         # fewer rounds, no file written
    python benchmarks/bench_ode_overhead.py --fixed-cost    # the fixed cost of one solve (printed only)

Problems (Hairer–Wanner II; as in ``bench_ode_stiff.py``): Robertson (n = 3, t ∈ [0, 1e5]), Van der Pol
μ = 1000 (n = 2, t ∈ [0, 3000]) and HIRES (n = 8, t ∈ [0, 321.8122]). Each solver runs with an analytic
Jacobian (``jac``) and with finite differences (SciPy's solvers get the same). Every version runs in its own
process (``PYTHONPATH`` pointing at it); the processes alternate for ``--rounds`` rounds, each timing every
configuration ``--repeats`` times after a warm-up; the medians of all timings are reported. µs per rhs call and
per step divide the wall time of the whole solve (rhs time included) by the counts of that solve.
Writes benchmarks/results/ode_overhead.md.

``--fixed-cost``: what a solve costs before its steps, measured on Robertson over a tiny span (t1 = 1e-9: one
step) at rtol 1e-2, atol 1e-8, for deqcore's Radau and BDF (finite-difference Jacobian) against SciPy's
solvers: the median and the 10th percentile of ``--fixed-repeats`` solves, before and after in alternating
processes; µs outside the rhs subtract the bare rhs calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEFORE = "1ecd85d"


# ---- problems (with their Jacobians) ------------------------------------------------------------------------
def robertson():
    def f(t, y):
        return np.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
                         0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2])

    def jac(t, y):
        return np.array([[-0.04, 1e4 * y[2], 1e4 * y[1]],
                         [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]],
                         [0.0, 6e7 * y[1], 0.0]])
    return dict(f=f, jac=jac, y0=np.array([1.0, 0.0, 0.0]), t1=1e5, atol_ratio=1e-4)


def van_der_pol(mu=1000.0):
    def f(t, y):
        return np.array([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])

    def jac(t, y):
        return np.array([[0.0, 1.0], [-2.0 * mu * y[0] * y[1] - 1.0, mu * (1.0 - y[0] ** 2)]])
    return dict(f=f, jac=jac, y0=np.array([2.0, 0.0]), t1=3000.0, atol_ratio=1.0)


def hires():
    from deqcore.demos.stiff_problems import HIRES_T1, HIRES_Y0, hires as f

    def jac(t, y):
        J = np.zeros((8, 8))
        J[0, :3] = -1.71, 0.43, 8.32
        J[1, :2] = 1.71, -8.75
        J[2, 2:5] = -10.03, 0.43, 0.035
        J[3, 1:4] = 8.32, 1.71, -1.12
        J[4, 4:7] = -1.745, 0.43, 0.43
        J[5, 3:8] = 0.69, 1.71, -0.43 - 280.0 * y[7], 0.69, -280.0 * y[5]
        J[6, 5:8] = 280.0 * y[7], -1.81, 280.0 * y[5]
        J[7, 5:8] = -280.0 * y[7], 1.81, -280.0 * y[5]
        return J
    return dict(f=f, jac=jac, y0=HIRES_Y0, t1=HIRES_T1, atol_ratio=1e-3)


PROBLEMS = {"Robertson": robertson, "Van der Pol": van_der_pol, "HIRES": hires}
DEQCORE = ("Radau", "BDF", "Rodas5P")
SCIPY = ("Radau", "BDF", "LSODA")
#: the solvers that run their whole step loop in compiled code on these problems
COMPILED_LOOPS = ("Radau", "BDF")


class Counted:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.f(t, y)


def _solve(problem, solver, jac, rtol, atol=None):
    """(wall seconds, CPU seconds, rhs calls, steps, y(t1)) of one solve."""
    g = Counted(problem["f"])
    atol = rtol * problem["atol_ratio"] if atol is None else atol
    if solver.startswith("scipy "):
        from scipy.integrate import solve_ivp

        kw = {"jac": problem["jac"]} if jac else {}
        t0, c0 = time.perf_counter(), time.process_time()
        r = solve_ivp(g, (0.0, problem["t1"]), problem["y0"], method=solver[6:], rtol=rtol, atol=atol, **kw)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        steps = r.t.size - 1          # accepted steps (SciPy does not report rejected ones)
        return elapsed, cpu, g.calls, steps, r.y[:, -1]
    import deqcore as dq

    method = {"Radau": dq.Radau, "BDF": dq.BDF}.get(solver, lambda: dq.Rodas5P(autonomous=True))()
    t0, c0 = time.perf_counter(), time.process_time()
    sol = dq.integrate(g, problem["y0"], (0.0, problem["t1"]), method, rtol=rtol, atol=atol,
                       jac=problem["jac"] if jac else None, max_steps=200_000)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return elapsed, cpu, g.calls, sol.stats["num_steps"], sol.ys[-1]


def configurations(rtols, with_scipy):
    out = []
    for name in PROBLEMS:
        for rtol in rtols:
            for jac in (True, False):
                out += [(name, s, jac, rtol) for s in DEQCORE]
                if with_scipy:
                    out += [(name, "scipy " + s, jac, rtol) for s in SCIPY]
    return out


def rhs_cost(problem, calls=3000):
    """Seconds per call of the bare right-hand side at y0 (median of 5 batches)."""
    f, y, times = problem["f"], problem["y0"], []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            f(0.0, y)
        times.append((time.perf_counter() - t0) / calls)
    return float(np.median(times))


def worker(rtols, repeats, with_scipy):
    """Time every configuration on the deqcore found on sys.path; print one JSON line."""
    problems = {name: make() for name, make in PROBLEMS.items()}
    out = {json.dumps(["rhs", name]): dict(times=[rhs_cost(p)]) for name, p in problems.items()}
    for name, solver, jac, rtol in configurations(rtols, with_scipy):
        p = problems[name]
        _solve(p, solver, jac, rtol)                     # warm-up: imports, compiled kernels
        times, cpus = [], []
        for _ in range(repeats):
            elapsed, cpu, calls, steps, y = _solve(p, solver, jac, rtol)
            times.append(elapsed)
            cpus.append(cpu)
        out[json.dumps([name, solver, jac, rtol])] = dict(times=times, cpus=cpus, calls=calls, steps=steps,
                                                         y=y.tolist())
    print(json.dumps(out))


def fixed_cost_worker(repeats, with_scipy):
    """Time one-step solves (Robertson, t1 = 1e-9) on the deqcore found on sys.path; print one JSON line."""
    problem = dict(robertson(), t1=1e-9)
    out = {"rhs": rhs_cost(problem)}
    solvers = list(COMPILED_LOOPS) + (["scipy " + s for s in SCIPY] if with_scipy else [])
    for solver in solvers:
        for _ in range(20):                              # warm-up: imports, compiled kernels
            _solve(problem, solver, False, 1e-2, atol=1e-8)
        times, calls = [], 0
        for _ in range(repeats):
            elapsed, _, calls, _, _ = _solve(problem, solver, False, 1e-2, atol=1e-8)
            times.append(elapsed)
        out[solver] = dict(times=times, calls=calls)
    print(json.dumps(out))


def fixed_cost(before, rounds, repeats):
    """The fixed-cost table (printed)."""
    runs = {"before": [], "after": []}
    for _ in range(rounds):
        for version, path in (("before", before), ("after", ROOT)):
            env = dict(os.environ, PYTHONPATH=str(path))
            env.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "deqcore-bench-numba"))
            cmd = [sys.executable, str(Path(__file__).resolve()), "--fixed-worker", "--fixed-repeats",
                   str(repeats)]
            cmd += ["--scipy"] if version == "after" else []
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
            if proc.returncode:
                raise RuntimeError(proc.stderr[-3000:])
            runs[version].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rhs = float(np.median([r["rhs"] for r in runs["after"]]))
    lines = ["| solver | version | rhs calls | median [µs] | 10th percentile [µs] | median outside the rhs [µs] |",
             "|---|---|---|---|---|---|"]
    for version in ("before", "after"):
        for solver in runs[version][0]:
            if solver == "rhs":
                continue
            times = 1e6 * np.array([t for r in runs[version] for t in r[solver]["times"]])
            calls = runs[version][0][solver]["calls"]
            lines.append(f"| {solver} | {version if not solver.startswith('scipy') else ''} | {calls} | "
                         f"{np.median(times):.0f} | {np.percentile(times, 10):.0f} | "
                         f"{np.median(times) - 1e6 * calls * rhs:.0f} |")
    print(f"Fixed cost per solve: Robertson, t1 = 1e-9, rtol 1e-2, atol 1e-8 (finite-difference Jacobians); "
          f"{rounds} × {repeats} solves per version; bare rhs {1e6 * rhs:.1f} µs per call\n")
    print("\n".join(lines))


def _run_worker(path, rtols, repeats, with_scipy):
    env = dict(os.environ, PYTHONPATH=str(path))
    env.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "deqcore-bench-numba"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--rtols", ",".join(map(str, rtols)),
           "--repeats", str(repeats)] + (["--scipy"] if with_scipy else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _checkout(rev, into):
    """The ``deqcore`` package of commit ``rev`` extracted into the folder ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "deqcore"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _reference(problem):
    from scipy.integrate import solve_ivp

    return solve_ivp(problem["f"], (0.0, problem["t1"]), problem["y0"], method="Radau", rtol=1e-13,
                     atol=1e-13 * problem["atol_ratio"], jac=problem["jac"]).y[:, -1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE, help="a git revision or a folder holding deqcore/")
    ap.add_argument("--rtols", default="1e-4,1e-7")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scipy", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fixed-cost", action="store_true", help="the fixed cost of one solve (printed)")
    ap.add_argument("--fixed-repeats", type=int, default=400)
    ap.add_argument("--fixed-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    rtols = [float(r) for r in args.rtols.split(",")]
    if args.worker:
        worker(rtols, args.repeats, args.scipy)
        return
    if args.fixed_worker:
        fixed_cost_worker(args.fixed_repeats, args.scipy)
        return
    if args.fixed_cost:
        with tempfile.TemporaryDirectory() as tmp:
            before = Path(args.before) if Path(args.before).is_dir() else _checkout(args.before, Path(tmp))
            fixed_cost(before, 1 if args.quick else args.rounds, args.fixed_repeats)
        return
    rounds, repeats = (1, 1) if args.quick else (args.rounds, args.repeats)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(args.before) if Path(args.before).is_dir() else _checkout(args.before, Path(tmp))
        runs = {"before": [], "after": []}
        for _ in range(rounds):            # alternating: load on the machine hits both versions alike
            runs["before"].append(_run_worker(before, rtols, repeats, False))
            runs["after"].append(_run_worker(ROOT, rtols, repeats, True))
    load = (load_before, os.getloadavg()[0])
    sys.path.insert(0, str(ROOT))

    def merged(version, key):
        rows = [r[key] for r in runs[version] if key in r]
        if not rows:
            return None
        return dict(time=float(np.median([t for r in rows for t in r["times"]])),
                    cpu=float(np.median([t for r in rows for t in r["cpus"]])), calls=rows[0]["calls"],
                    steps=rows[0]["steps"], y=np.array(rows[0]["y"]))

    problems = {name: make() for name, make in PROBLEMS.items()}
    refs = {name: _reference(p) for name, p in problems.items()}
    rhs_s = {name: float(np.median([t for r in runs["after"] for t in r[json.dumps(["rhs", name])]["times"]]))
             for name in PROBLEMS}

    def outside(r, name):
        """µs per step outside the bare rhs calls."""
        return 1e6 * (r["time"] - r["calls"] * rhs_s[name]) / r["steps"]
    summary = {"speedup": [], "speedup_outside": [], "speedup_cpu": [], "lsoda": [], "lsoda_cpu": [], "python": [],
               "ours_out": [], "lsoda_out": [], "radau_lsoda": [], "radau_out": [], "bdf_lsoda": [],
               "bdf_out": []}
    floors = {"Robertson": 1e-10, "Van der Pol": 1e-3, "HIRES": 1e-6}
    lines = ["# Per-step cost of the stiff ODE path (small problems)", "",
             f"Python {platform.python_version()}, NumPy {np.__version__}, {platform.machine()}; "
             f"`python benchmarks/bench_ode_overhead.py{' --quick' if args.quick else ''}`; before = "
             f"`{args.before}`, after = this checkout; medians of {rounds} × {repeats} timed solves per "
             "configuration (the two versions in alternating processes). Times are whole solves (rhs included); "
             "µs/call and µs/step divide them by that solve's rhs calls (finite-difference columns included) "
             "and steps (attempted steps for deqcore, accepted for SciPy, which does not report rejections). "
             "Error: max |y(t1) − ref| / (|ref| + floor) against Radau at rtol 1e-13. `Rodas5P` is told the "
             "problem is autonomous; `jac`: analytic Jacobian for every solver, `fd`: finite differences. "
             f"Machine: {os.cpu_count()} CPU cores, load average {load[0]:.1f} at the start and {load[1]:.1f} at the "
             "end of the run (other processes: wall times then vary by up to 2× between runs; the ratios of the "
             "interleaved versions and the CPU times are steadier).", "",
             "| problem | rtol | J | solver | error | rhs calls | steps | time before [ms] | time after [ms] | "
             "µs/step before | µs/step after | µs/step outside rhs before → after | CPU µs/step before → after | "
             "µs/call after | before / after | after / LSODA | after / best of Radau, BDF |", "|---" * 17 + "|"]
    for name, rtol, jac in [(n, r, j) for n in PROBLEMS for r in rtols for j in (True, False)]:
        scipy = {s: merged("after", json.dumps([name, "scipy " + s, jac, rtol])) for s in SCIPY}
        best_py = min(scipy["Radau"]["time"], scipy["BDF"]["time"])
        for solver in DEQCORE:
            key = json.dumps([name, solver, jac, rtol])
            b, a = merged("before", key), merged("after", key)
            err = float(np.max(np.abs(a["y"] - refs[name]) / (np.abs(refs[name]) + floors[name])))
            same = "" if (b["calls"], b["steps"]) == (a["calls"], a["steps"]) else \
                f" (before: {b['calls']} calls, {b['steps']} steps)"
            lines.append(
                f"| {name} | {rtol:.0e} | {'jac' if jac else 'fd'} | {solver} | {err:.1e} | {a['calls']}{same} | "
                f"{a['steps']} | {1e3 * b['time']:.1f} | {1e3 * a['time']:.1f} | {1e6 * b['time'] / b['steps']:.0f} | "
                f"{1e6 * a['time'] / a['steps']:.0f} | {outside(b, name):.0f} → {outside(a, name):.0f} | "
                f"{1e6 * b['cpu'] / b['steps']:.0f} → {1e6 * a['cpu'] / a['steps']:.0f} | "
                f"{1e6 * a['time'] / a['calls']:.1f} | {b['time'] / a['time']:.1f}× | "
                f"{a['time'] / scipy['LSODA']['time']:.2f} | {a['time'] / best_py:.2f} |")
            summary["speedup"].append((b["time"] / b["steps"]) / (a["time"] / a["steps"]))
            summary["speedup_outside"].append(outside(b, name) / outside(a, name))
            summary["speedup_cpu"].append(b["cpu"] / a["cpu"])
            summary["lsoda"].append(a["time"] / scipy["LSODA"]["time"])
            summary["lsoda_cpu"].append(a["cpu"] / scipy["LSODA"]["cpu"])
            summary["python"].append(a["time"] / best_py)
            summary["ours_out"].append(outside(a, name))
            if solver in COMPILED_LOOPS:
                key = solver.lower()
                summary[key + "_lsoda"].append(f"{name} {rtol:.0e} {'jac' if jac else 'fd'} "
                                               f"{a['time'] / scipy['LSODA']['time']:.2f}")
                summary[key + "_out"].append(outside(a, name))
            summary["lsoda_out"].append(outside(scipy["LSODA"], name))
        for s in SCIPY:
            r = scipy[s]
            err = float(np.max(np.abs(r["y"] - refs[name]) / (np.abs(refs[name]) + floors[name])))
            lines.append(f"| {name} | {rtol:.0e} | {'jac' if jac else 'fd'} | SciPy {s} | {err:.1e} | "
                         f"{r['calls']} | {r['steps']} | | {1e3 * r['time']:.1f} | | {1e6 * r['time'] / r['steps']:.0f} | "
                         f"{outside(r, name):.0f} | {1e6 * r['cpu'] / r['steps']:.0f} | "
                         f"{1e6 * r['time'] / r['calls']:.1f} | | | |")
    def span(v):
        return f"{min(v):.1f}–{max(v):.1f}× (median {np.median(v):.1f}×)"
    rhs_text = ", ".join(f"{name} {1e6 * t:.1f} µs" for name, t in rhs_s.items())
    lines[4:4] = [
        "## Summary", "",
        f"- Wall time per step, before / after: {span(summary['speedup'])} over the "
        f"{len(summary['speedup'])} deqcore configurations; per step outside the rhs calls: "
        f"{span(summary['speedup_outside'])}; in CPU time (less sensitive to other processes on the machine): "
        f"{span(summary['speedup_cpu'])}. Step sequences are unchanged where no \"before:\" count is shown.",
        f"- After / LSODA (same rtol, same Jacobian information): {span(summary['lsoda'])} (CPU time: "
        f"{span(summary['lsoda_cpu'])}); after / the faster of "
        f"SciPy's Radau and BDF: {span(summary['python'])}.",
        f"- What still separates deqcore from LSODA: the bare rhs costs {rhs_text} per call (a Python function "
        "building a small array), paid alike by every solver; outside it LSODA spends "
        f"{np.median(summary['lsoda_out']):.0f} µs per step (median; compiled Fortran, one Python call per rhs "
        f"evaluation), deqcore {np.median(summary['ours_out']):.0f} µs: Python per step (the driver's control on "
        "floats, the Trial and StepRecord objects, the evaluator's checks) and a handful of compiled calls per "
        "step (about 1 µs each to dispatch), plus, for Rodas5P, one Jacobian per step (LSODA and BDF keep "
        "theirs for many steps). Radau and BDF run their whole step loops in compiled code (only the rhs and "
        "Jacobian calls in Python): per step outside the rhs (median; range) "
        + ", ".join(f"{s} {np.median(summary[s.lower() + '_out']):.0f} µs ({min(summary[s.lower() + '_out']):.0f}–"
                    f"{max(summary[s.lower() + '_out']):.0f})" for s in COMPILED_LOOPS) + ".",
        "- Radau after / LSODA (wall time, same rtol; Radau's errors are smaller at the same rtol): "
        + ", ".join(summary["radau_lsoda"]) + ".",
        "- BDF after / LSODA (wall time, same rtol; errors of the same order): "
        + ", ".join(summary["bdf_lsoda"]) + ".", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "ode_overhead.md").write_text(text)


if __name__ == "__main__":
    main()
