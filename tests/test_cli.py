"""The command line: help, bad arguments, the solve command and a short run of the digits demo."""

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

from deqcore import cli
from tests.background import BackgroundRun, EarlyRuns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "deqcore", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_the_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "solve", "bench"):
        assert command in out


def test_no_command_is_an_error(capsys):
    assert cli.main([]) == 2


@pytest.mark.parametrize("args", [["frobnicate"], ["solve", "--problem", "nope"], ["solve", "--atol", "-1"],
                                  ["demo", "--epochs", "0"]])
def test_bad_arguments_exit_2_with_one_line(args, capsys):
    if args == ["frobnicate"]:          # through ``python -m deqcore``: the exit status of the process
        proc = _run(*args)
        code, stderr = proc.returncode, proc.stderr
    else:                               # the same cli.main in this process (no interpreter start per case)
        try:
            code = cli.main(args)
        except SystemExit as exit_:
            code = exit_.code
        stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith(("usage", "python -m deqcore")) or "error" in stderr


@pytest.mark.parametrize("args, named", [
    (["frobnicate"], "frobnicate"), (["demo", "--epochs", "0"], "--epochs"), (["demo", "--bogus"], "--bogus"),
    (["demo", "--epochs", "x"], "--epochs"), (["demo", "--lr", "-1"], "--lr"),
    (["demo", "--solvers", "--atol", "-1"], "--atol"), (["demo", "--solvers", "--bogus"], "--bogus"),
    (["solve", "--max-steps", "-3"], "--max-steps"), (["solve", "--batch", "-2"], "--batch"),
    (["solve", "--solver", "nope"], "--solver"), (["solve", "--atol", "-1"], "--atol"),
    (["solve", "--workers", "2"], "--workers"), (["bench", "--bogus"], "--bogus"), (["bench", "--only", "zzz"], "zzz"),
])
def test_a_user_error_is_one_line_naming_the_argument(args, named, capsys):
    try:
        code = cli.main(args)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and captured.out == ""
    assert len(lines) == 1 and "usage" not in lines[0] and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("python -m deqcore") and "error" in lines[0] and named in lines[0]


def test_solve_builtin_problem(capsys):
    from deqcore.demos import solve_cli

    assert solve_cli.main(["--problem", "rosenbrock", "--solver", "newton", "--atol", "1e-10"]) == 0
    out = capsys.readouterr().out
    assert "converged: 1/1" in out


def test_solve_from_file(tmp_path, capsys):
    from deqcore.demos import solve_cli

    path = tmp_path / "problem.py"
    path.write_text("import numpy as np\nfn = lambda y: np.cos(y)\ny0 = np.zeros(3)\n")
    assert solve_cli.main(["--file", str(path), "--fixed-point", "--solver", "anderson", "--atol", "1e-12"]) == 0
    out = capsys.readouterr().out
    assert "converged: 1/1" in out and "3 unknowns" in out


def _start_demo(early):
    folder = tempfile.mkdtemp(prefix="deqcore-demo-test-")
    return [BackgroundRun([sys.executable, "-m", "deqcore", "demo", "--epochs", "6", "--width", "32", "--lr",
                           "2e-2", "--no-progress", "--out", folder], folder=folder, cwd=ROOT)]


# the demo starts once the tests are collected, on the core the serial run leaves idle (conftest calls these)
EARLY = EarlyRuns({"test_short_digits_demo_learns_and_writes_plots": _start_demo})
start_early, stop_early = EARLY.start_early, EARLY.stop


def test_short_digits_demo_learns_and_writes_plots():
    try:
        [run] = EARLY.runs("test_short_digits_demo_learns_and_writes_plots")
        code, stdout, stderr = run.result(timeout=300)
        assert code == 0, stderr[-2000:]
        accuracy = float(stdout.strip().splitlines()[-1].split(":")[1])
        assert accuracy >= 0.90                  # six epochs; the full demo reaches >= 0.97
        assert (pathlib.Path(run.folder) / "training.png").stat().st_size > 1000
        assert (pathlib.Path(run.folder) / "residuals.png").stat().st_size > 1000
    finally:
        EARLY.stop()


def test_bench_runner_plots_nfe_and_time_columns(tmp_path):
    from deqcore.demos.bench_runner import plot_tables

    text = ("| solver | NFE | wall ms |\n|---|---|---|\n| Anderson | 12 | 3.5 |\n| Broyden | 9 | 4.0 |\n"
            "| FixedPointIteration | 40 | 2.0 |\n")
    assert plot_tables("demo", text, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").stat().st_size > 1000
    assert not plot_tables("no numbers", "| a | b |\n|---|---|\n| x | y |\n", tmp_path / "none.png")
