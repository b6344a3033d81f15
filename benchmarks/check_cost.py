"""What the health checks cost: whole runs with ``EngineConfig(check_finite=True)`` and ``False``.

Usage::

    PYTHONPATH=src:. python -m benchmarks.check_cost [--sizes 10k 100k] [--methods darts cg]
        [--iters 220] [--repeats 3]

Workload (d) of ``engine_compare`` (one lower and one upper step per iteration), each run a
fresh process with one thread, on and off alternating; the table shows the medians of the
whole-run wall time and the cost ``(on - off) / off``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(size: str, method: str, check: bool, iters: int) -> float:
    import time

    import torch

    from benchmarks import programs
    from ziggurat import configs
    from ziggurat.engine import Engine

    torch.set_num_threads(1)
    stamps: dict[str, list[float]] = {"lower": [], "upper": [], "products": []}
    _, upper, lower, _ = programs.build("ziggurat", "d", method, size, stamps)
    engine = Engine(
        problems=[upper, lower],
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
        config=configs.EngineConfig(train_iters=iters, valid_step=10**9, check_finite=check),
    )
    start = time.perf_counter()
    engine.run()
    return time.perf_counter() - start


def spawn(size: str, method: str, check: bool, iters: int) -> float:
    code = (
        f"from benchmarks.check_cost import one; print(one({size!r}, {method!r}, {check}, {iters}))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10k", "100k"])
    parser.add_argument("--methods", nargs="+", default=["darts", "cg"])
    parser.add_argument("--iters", type=int, default=220)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| params | method | checks on s | checks off s | cost |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        for method in args.methods:
            on, off = [], []
            for _ in range(args.repeats):
                on.append(spawn(size, method, True, args.iters))
                off.append(spawn(size, method, False, args.iters))
            a, b = statistics.median(on), statistics.median(off)
            print(f"| {size} | {method} | {a:.2f} | {b:.2f} | {(a - b) / b:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
