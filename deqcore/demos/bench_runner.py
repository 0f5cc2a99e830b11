"""``python -m deqcore bench``: run every ``benchmarks/bench_*.py`` and collect their Markdown tables.

Each benchmark script measures its comparisons side by side in one run (ratios, medians) and writes its own
table to ``benchmarks/results/<name>.md`` (``<name>_quick.md`` at quick sizes, not committed); this runner
runs them in turn (quick sizes by default, ``--full`` for the recorded ones), then writes
``benchmarks/results/SUMMARY.md`` (``SUMMARY_quick.md``) with the machine, the library versions and every
table.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import subprocess
import sys
import time

from ..cli import ArgumentParser

__all__ = ["main", "machine_description"]


def machine_description() -> str:
    """One line naming the machine and the versions of the libraries that matter for timings."""
    import numpy
    import scipy

    parts = [f"{platform.machine()} {platform.processor() or ''}".strip(), f"{os.cpu_count()} CPUs",
             f"Python {platform.python_version()}", f"NumPy {numpy.__version__}", f"SciPy {scipy.__version__}"]
    try:
        import numba

        parts.append(f"Numba {numba.__version__}")
    except ImportError:
        pass
    from .. import __version__

    parts.append(f"deqcore {__version__}")
    return ", ".join(parts)


def markdown_tables(text: str) -> list:
    r"""Every Markdown table in ``text`` as (header cells, rows of cells).

    >>> markdown_tables("| a | b |\n|---|---|\n| x | 1.5 |\n")
    [(['a', 'b'], [['x', '1.5']])]
    """
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and set(lines[i + 1].replace("|", "").strip()) <= set("-: ") and "-" in lines[i + 1]:
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            tables.append((header, rows))
        else:
            i += 1
    return tables


def _number(cell):
    try:
        return float(cell.replace("x", "").replace("%", "").split()[0])
    except (ValueError, IndexError):
        return None


def plot_tables(name: str, text: str, path: pathlib.Path) -> bool:
    """Bar charts of each table's f-evaluation and time columns (the quantities every benchmark compares);
    returns whether anything was plotted."""
    panels = []
    for header, rows in markdown_tables(text):
        found = set()
        for j, title in enumerate(header):
            lowered = title.lower()
            kind = "nfe" if "nfe" in lowered or "nfev" in lowered else "time" if ("ms" in lowered or "time" in
                                                                                  lowered) else None
            if kind is None or kind in found:
                continue
            values = [_number(r[j]) if j < len(r) else None for r in rows]
            labels = [" / ".join(c for k, c in enumerate(r) if _number(c) is None)[:60] for r in rows]
            pairs = [(lab, v) for lab, v in zip(labels, values) if v is not None]
            if len(pairs) >= 2:
                panels.append((title, pairs))
                found.add(kind)
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = panels[:4]
    height = max(2.5, 0.28 * max(len(p) for _, p in panels) + 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), height), squeeze=False)
    for ax, (title, pairs) in zip(axes[0], panels):
        labels, values = zip(*pairs)
        ax.barh(range(len(values)), values)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(title)
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return True


def _find_benchmarks(root: pathlib.Path, only):
    scripts = sorted((root / "benchmarks").glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if any(name in s.stem for name in only)]
    return scripts


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m deqcore bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="run the full sizes (default: each script's --quick)")
    parser.add_argument("--only", nargs="*", default=[], help="run only benchmarks whose name contains these words")
    parser.add_argument("--root", default=".", help="the repository root holding benchmarks/ (default: .)")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.root).resolve()
    scripts = _find_benchmarks(root, args.only)
    if not scripts:
        parser.error(f"no benchmarks/bench_*.py under {root}" + (f" matching {args.only}" if args.only else ""))
    from tqdm import tqdm

    results = root / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    sections, failures = [], 0
    for script in tqdm(scripts, desc="benchmarks", unit="script"):
        command = [sys.executable, str(script)] + ([] if args.full else ["--quick"])
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=root, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        failures += proc.returncode != 0
        body = proc.stdout.strip() if proc.returncode == 0 else (proc.stdout + proc.stderr).strip()[-3000:]
        png = results / f"{script.stem}{'' if args.full else '_quick'}.png"
        if proc.returncode == 0 and plot_tables(script.stem, body, png):
            body += f"\n\n![{script.stem}]({png.name})"
        sections.append(f"## {script.stem} — {status}, {elapsed:.0f} s\n\n{body}\n")
    header = (f"# Benchmark summary\n\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
              f"{machine_description()}; {'full' if args.full else 'quick'} sizes.\n\n")
    summary = results / ("SUMMARY.md" if args.full else "SUMMARY_quick.md")
    summary.write_text(header + "\n".join(sections))
    print(f"wrote {summary} ({len(scripts)} benchmarks, {failures} failed)")
    return 1 if failures else 0
