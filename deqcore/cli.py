"""Command line: ``python -m deqcore <command>``.

Commands:
  demo    train a DEQ classifier on scikit-learn's digits (or ``--solvers`` for the batched-solve demo)
  solve   solve a built-in problem or ``fn`` from a Python file, with the solver and tolerances you choose
  bench   run the benchmarks in ``benchmarks/`` and write tables and plots to ``benchmarks/results/``

Every command explains its flags with ``--help``. Bad arguments give a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deqcore",
        description="Deep Equilibrium Models and the solvers under them, on NumPy and CuPy arrays.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,solve,bench}")
    demo = sub.add_parser("demo", help="run the demo (a DEQ classifier on digits; --solvers: batched solves)")
    demo.add_argument("--solvers", action="store_true",
                      help="instead: solve a batched nonlinear system with several solvers and compare them")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        if args.solvers:
            from .demos import batched_solve

            return batched_solve.main(rest)
        from .demos import batched_solve

        return batched_solve.main(rest)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
