"""Where a step's time goes at 10k parameters: tensor kernels, PyTorch's Python, ziggurat's
Python and the program's own code, per iteration (one lower and one upper step).

Usage::

    PYTHONPATH=src python -m benchmarks.step_profile [--method darts] [--iters 300]

Runs workload (b) of ``workloads.py`` (the Meta-Weight-Net program, 4,810 lower parameters)
under ``cProfile`` for ``--iters`` iterations after a warm-up, and splits the profile's own
times (``tottime``) by where each function lives: built-in and C functions (the kernels and
the autograd engine), ``torch``'s Python (``nn.Module.__call__``, ``torch.optim``, autograd
wrappers), ziggurat's Python, and the program (``benchmarks/programs.py``). The profiler's
overhead inflates the Python shares; the split says where to look, the wall times are in
``engine_compare``.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import pstats

import torch

from .programs import build

CATEGORIES = ("kernels and autograd engine (C)", "torch Python", "ziggurat Python", "program")


def category(filename: str) -> str:
    if filename.startswith("~") or filename.startswith("<"):
        return CATEGORIES[0]
    if "/ziggurat/" in filename:
        return CATEGORIES[2]
    if "/benchmarks/" in filename:
        return CATEGORIES[3]
    return CATEGORIES[1]


def profile(method: str, iters: int, warmup: int = 30) -> dict[str, float]:
    """Seconds per iteration in each category (under the profiler)."""
    torch.set_num_threads(1)
    stamps: dict[str, list[float]] = {"lower": [], "upper": [], "products": []}
    engine_mod, upper, lower, _ = build("ziggurat", "b", method, "10k", stamps)
    configs = importlib.import_module("ziggurat.configs")
    engine = engine_mod.Engine(
        problems=[upper, lower],
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
        config=configs.EngineConfig(train_iters=warmup, valid_step=0, logger_type="none"),
    )
    engine.run()
    engine.config.train_iters = warmup + iters
    profiler = cProfile.Profile()
    profiler.enable()
    engine.run()
    profiler.disable()
    totals = dict.fromkeys(CATEGORIES, 0.0)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _, _), (_, _, tottime, _, _) in stats.items():
        totals[category(filename)] += tottime
    return {k: v / iters for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", action="append", help="repeatable; default: all five")
    parser.add_argument("--iters", type=int, default=300)
    args = parser.parse_args()
    methods = args.method or ["first_order", "darts", "sama", "neumann", "cg"]
    print("| method | " + " | ".join(CATEGORIES) + " | total ms |")
    print("|---|" + "---|" * (len(CATEGORIES) + 1))
    for method in methods:
        shares = profile(method, args.iters)
        total = sum(shares.values())
        cells = [f"{1e3 * shares[c]:.3f} ({100 * shares[c] / total:.0f}%)" for c in CATEGORIES]
        print(f"| {method} | " + " | ".join(cells) + f" | {1e3 * total:.3f} |")


if __name__ == "__main__":
    main()
