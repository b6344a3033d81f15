"""The ``ziggurat`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from ._extras import MissingExtraError, require_extra


class CliError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def _check(args: argparse.Namespace) -> int:
    import torch

    from ._verification import run_check

    torch.set_num_threads(1)  # the analytic problems are tiny: threads only add overhead
    print(run_check(seed=args.seed))
    return 0


_BENCH_MODULE = "benchmarks.engine_compare"
"""What ``ziggurat bench`` runs with ``python -m``, from a source checkout."""


def _bench_checkout() -> Path:
    """The current directory, when it is a source checkout holding the benchmarks package.

    The benchmarks are not part of the installed package, so ``ziggurat bench`` runs from the
    root of a source checkout, as ``python -m benchmarks.engine_compare`` would.

    Raises:
        CliError: naming the module that was not found here.
    """
    root = Path.cwd()
    script = root / Path(*_BENCH_MODULE.split(".")).with_suffix(".py")
    if not script.is_file():
        raise CliError(
            f"needs to run from the root of a source checkout, where {_BENCH_MODULE} is "
            f"({script} not found)"
        )
    return root


def _bench(args: argparse.Namespace) -> int:
    import subprocess

    root = _bench_checkout()
    cmd = [sys.executable, "-m", _BENCH_MODULE, *([] if args.full else ["--quick"])]
    if args.betty:
        _check_betty_python(args.betty)
        cmd += ["--betty", args.betty]
    return subprocess.run(cmd, check=False, cwd=root).returncode


def _check_betty_python(python: str) -> None:
    """Refuse, before any benchmark runs, a ``--betty`` that is not a Python with betty."""
    import shutil
    import subprocess

    found = shutil.which(python)
    if found is None:
        raise CliError(
            f"--betty {python!r} is not an executable; pass the python of a virtual "
            "environment with betty-ml 0.2.1 (e.g. /tmp/betty-venv/bin/python)"
        )
    probe = subprocess.run(
        [found, "-c", "import betty"], capture_output=True, text=True, check=False, timeout=120
    )
    if probe.returncode != 0:
        raise CliError(
            f"--betty {python!r} cannot import betty; install it there with "
            "`pip install --ignore-requires-python betty-ml==0.2.1`"
        )


def _demo(args: argparse.Namespace) -> int:
    import torch

    from . import examples

    torch.set_num_threads(1)  # demo-sized models: more threads only add synchronisation

    if args.name not in examples.EXAMPLES:
        raise CliError(
            f"unknown example {args.name!r}; choose one of {', '.join(examples.EXAMPLES)}"
        )
    module = examples.load(args.name)
    if args.method is not None and args.method not in module.METHODS:
        raise CliError(
            f"example {args.name!r} has no method {args.method!r}; choose one of "
            f"{', '.join(module.METHODS)}"
        )
    if args.imbalance is not None and args.name != "reweight":
        raise CliError("--imbalance applies only to the reweight example")
    if args.shots is not None and args.name != "fewshot":
        raise CliError("--shots applies only to the fewshot example")
    if args.plot is not None:  # before training, not after it
        require_extra("matplotlib", "ziggurat demo --plot", extra="plot")
    options: dict[str, object] = {
        "steps": args.steps if args.steps is not None else module.DEFAULT_STEPS,
        "method": args.method if args.method is not None else module.METHODS[0],
        "seed": args.seed,
        "progress": not args.quiet,
    }
    if args.imbalance is not None:
        options["imbalance"] = args.imbalance
    if args.shots is not None:
        options["shots"] = args.shots
    try:
        result = module.run(**options)
    except ValueError as err:  # option values the example itself rejects
        raise CliError(str(err)) from None
    print(result)
    if args.plot is not None:
        from .examples import plots

        print(f"figure: {plots.draw(args.name, result, args.plot)}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see --help\n")


def _add_demo(sub: argparse._SubParsersAction[_Parser]) -> None:
    from .examples import DEFAULT, EXAMPLES

    demo = sub.add_parser(
        "demo",
        help="run a worked example on offline data and print its results table",
        description="Run one worked example (default: reweight) with a progress bar and "
        "print its results table: the metric, the baseline, the multilevel program and the "
        f"gain. Examples: {', '.join(EXAMPLES)}.",
    )
    demo.add_argument(
        "name",
        nargs="?",
        default=DEFAULT,
        metavar="NAME",
        help=f"one of {', '.join(EXAMPLES)} (default: {DEFAULT})",
    )
    demo.add_argument("--steps", type=_positive_int, help="training steps (default: the example's)")
    demo.add_argument("--method", help="hypergradient method (default: the example's first)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--imbalance",
        type=_ratio,
        metavar="RATIO",
        help="reweight only: long-tailed classes at RATIO:1 instead of label noise",
    )
    demo.add_argument(
        "--shots",
        type=int,
        choices=(1, 5),
        help="fewshot only: support images per class (default: 5)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw the example's figure to FILE (.png, .svg or .pdf; needs "
        "pip install 'ziggurat[plot]')",
    )
    demo.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ziggurat", description="Multilevel optimization for PyTorch.")
    sub = parser.add_subparsers(parser_class=_Parser, dest="command", metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="measure every hypergradient method against exact answers",
        description="Print each hypergradient method's error against exact float64 answers "
        "on the built-in analytic problems.",
    )
    check.add_argument("--seed", type=int, default=0, help="seed of the random problems")
    check.set_defaults(func=_check)
    _add_demo(sub)
    bench = sub.add_parser(
        "bench",
        help="time whole bilevel programs per method and print the table",
        description="Run `python -m benchmarks.engine_compare` (short version unless --full) "
        "from the root of a source checkout: time per upper and lower step, peak RSS, ratios to "
        "a plain training step and to the floor.",
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
    except (CliError, MissingExtraError) as err:  # one line, no traceback
        print(f"ziggurat {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (e.g. `ziggurat check | head`): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not raise again
        return 0


if __name__ == "__main__":
    sys.exit(main())
