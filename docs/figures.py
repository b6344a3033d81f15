"""Regenerate the documentation's figures from the worked examples.

    python -m docs.figures            # every example at its defaults (a few minutes)
    python -m docs.figures --fast     # a few steps each: checks that every figure is drawn

Each figure is ``ziggurat demo NAME --plot docs/figures/NAME.png`` at seed 0: the example's
own ``run`` and :func:`ziggurat.examples.plots.draw`, never drawn by hand; ``NAME.txt`` beside it
is the table that run printed. The pages under ``docs/tutorials/`` show these files;
``tests/test_plots.py`` checks that every figure a page shows is one this script writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ziggurat.examples import EXAMPLES, load
from ziggurat.examples.plots import draw

OUT = Path(__file__).parent / "figures"
FAST_STEPS = {
    "reweight": 20,
    "hpo": 2,
    "maml": 20,
    "fewshot": 10,
    "three_level": 20,
    "nas": 4,
    "transformer": 40,
}
"""Steps per example for ``--fast``: enough for every array a figure reads."""


def figure_path(name: str, out: Path = OUT) -> Path:
    """Where the figure of example ``name`` is written."""
    return out / f"{name}.png"


def table_path(name: str, out: Path = OUT) -> Path:
    """Where the table printed by the run behind the figure of ``name`` is written."""
    return out / f"{name}.txt"


def generate(
    names: tuple[str, ...] = EXAMPLES, *, out: Path = OUT, fast: bool = False
) -> list[Path]:
    """Run each example (seed 0, no progress bar), draw its figure under ``out`` and write the
    table it printed beside it; the figures' paths."""
    torch.set_num_threads(1)  # as ``ziggurat demo`` runs them
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        module = load(name)
        steps = FAST_STEPS[name] if fast else module.DEFAULT_STEPS
        result = module.run(steps=steps, seed=0, progress=False)
        written.append(draw(name, result, figure_path(name, out)))
        # the time depends on the machine: left out, so that a rerun changes only what changed
        table = str(result).split("\n", 1)[1]
        table_path(name, out).write_text(f"{result.name}\n{table}\n")
        print(f"{written[-1]}: {result.seconds:.1f} s")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m docs.figures", description=__doc__)
    parser.add_argument("names", nargs="*", default=list(EXAMPLES), help="examples to draw")
    parser.add_argument("--fast", action="store_true", help="a few steps per example")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    args = parser.parse_args(argv)
    generate(tuple(args.names), out=args.out, fast=args.fast)


if __name__ == "__main__":
    main()
