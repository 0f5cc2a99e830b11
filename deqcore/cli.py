"""Command line: ``python -m deqcore <command>``.

Commands:
  demo    train a DEQ classifier on scikit-learn's digits (``--solvers``: the batched-solve comparison)
  solve   solve a built-in problem, or ``fn`` from a Python file, with the solver and tolerances you choose;
          ``--batch N [--workers K | --scheduler ADDRESS]`` solves N samples of the DEQ map in chunks on Dask
  bench   run the benchmarks in ``benchmarks/`` and collect their tables in ``benchmarks/results/``

Every command explains its flags with ``--help``. Bad arguments give a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser", "ArgumentParser"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with a user error as one line on stderr (``prog: error: message``, no usage text) and
    exit code 2; every command's parser is one."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m deqcore",
        description="Deep Equilibrium Models and the solvers under them, on NumPy and CuPy arrays.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,solve,bench}")
    sub.add_parser("demo", add_help=False,
                   help="train a DEQ classifier on digits (--solvers: compare solvers on a batched system)")
    sub.add_parser("solve", add_help=False, help="solve a built-in problem or fn from a Python file")
    sub.add_parser("bench", add_help=False, help="run the benchmarks and write tables to benchmarks/results/")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        if "--solvers" in rest:
            from .demos import batched_solve

            return batched_solve.main([a for a in rest if a != "--solvers"])
        from .demos import digits

        return digits.main(rest)
    if command == "solve":
        from .demos import solve_cli

        return solve_cli.main(rest)
    if command == "bench":
        from .demos import bench_runner

        return bench_runner.main(rest)
    parser.error(f"unknown command {command!r} (choose from demo, solve, bench)")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
