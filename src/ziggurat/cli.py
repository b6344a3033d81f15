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


def _bench(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_compare.py"
    if not script.is_file():
        raise CliError(f"needs a source checkout with benchmarks/ ({script} not found)")
    cmd = [sys.executable, str(script), *([] if args.full else ["--quick"])]
    if args.betty:
        cmd += ["--betty", args.betty]
    return subprocess.run(cmd, check=False).returncode


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
    bench = sub.add_parser(
        "bench",
        help="time whole bilevel programs per method and print the table",
        description="Run benchmarks/engine_compare.py (short version unless --full): time per "
        "upper and lower step, peak RSS, ratios to a plain training step and to the floor.",
    )
    bench.add_argument("--betty", default=None, help="python of a venv with betty-ml 0.2.1")
    bench.add_argument("--full", action="store_true", help="the full series (about 30 min)")
    bench.set_defaults(func=_bench)
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
