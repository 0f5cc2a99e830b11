"""The command line: help, bad arguments, the solve command and a short run of the digits demo."""

import os
import subprocess
import sys

import pytest

from deqcore import cli

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


_DEMO = []          # (process, its output folder, stdout file, stderr file) of the demo run under way


def start_early(selected):
    """Called by conftest once the session's tests are collected: when the demo test is among them, the demo
    starts now, on the core that the serial test run leaves idle, and the test collects its result."""
    if "test_short_digits_demo_learns_and_writes_plots" in selected:
        _start_demo()


def _start_demo():
    import tempfile

    if _DEMO:
        return
    out_dir = tempfile.mkdtemp(prefix="deqcore-demo-test-")
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "deqcore", "demo", "--epochs", "6", "--width", "32", "--lr",
                             "2e-2", "--no-progress", "--out", out_dir], cwd=ROOT, stdout=out, stderr=err, text=True)
    _DEMO.append((proc, out_dir, out, err))


def stop_early():
    """Called by conftest at the end of the session: a demo whose test did not collect it is ended."""
    import shutil

    while _DEMO:
        proc, out_dir, out, err = _DEMO.pop()
        proc.kill()
        proc.wait()
        out.close()
        err.close()
        shutil.rmtree(out_dir, ignore_errors=True)


def test_short_digits_demo_learns_and_writes_plots():
    import pathlib

    _start_demo()                                # unless conftest started it with the session
    proc, out_dir, out, err = _DEMO[0]
    try:
        proc.wait(timeout=300)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        assert proc.returncode == 0, stderr[-2000:]
        accuracy = float(stdout.strip().splitlines()[-1].split(":")[1])
        assert accuracy >= 0.90                  # six epochs; the full demo reaches >= 0.97
        assert (pathlib.Path(out_dir) / "training.png").stat().st_size > 1000
        assert (pathlib.Path(out_dir) / "residuals.png").stat().st_size > 1000
    finally:
        stop_early()


def test_bench_runner_plots_nfe_and_time_columns(tmp_path):
    from deqcore.demos.bench_runner import plot_tables

    text = ("| solver | NFE | wall ms |\n|---|---|---|\n| Anderson | 12 | 3.5 |\n| Broyden | 9 | 4.0 |\n"
            "| FixedPointIteration | 40 | 2.0 |\n")
    assert plot_tables("demo", text, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").stat().st_size > 1000
    assert not plot_tables("no numbers", "| a | b |\n|---|---|\n| x | y |\n", tmp_path / "none.png")
