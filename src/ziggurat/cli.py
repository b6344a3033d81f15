"""The ``ziggurat`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


class CliError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def _check(args: argparse.Namespace) -> int:
    import torch

    from ._check import run_check

    torch.set_num_threads(1)  # the analytic problems are tiny: threads only add overhead
    print(run_check(seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ziggurat", description="Multilevel optimization for PyTorch."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="measure every hypergradient method against exact answers",
        description="Print each hypergradient method's error against exact float64 answers "
        "on the built-in analytic problems.",
    )
    check.add_argument("--seed", type=int, default=0, help="seed of the random problems")
    check.set_defaults(func=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return func(args)
    except CliError as err:
        print(f"ziggurat {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
