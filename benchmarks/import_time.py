"""What ``import ziggurat`` adds to ``import torch``, in fresh processes.

Usage::

    PYTHONPATH=src python -m benchmarks.import_time [--runs 10]

Each run starts one process that imports torch and one that imports torch and then ziggurat,
alternating, and times the import inside the process (``time.perf_counter`` around the import
statements, so interpreter start-up is not counted). It prints the medians, their difference,
and the ten slowest of ziggurat's own modules from ``python -X importtime`` (cumulative
microseconds, torch excluded because it was imported first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

TIMED = "import time; t = time.perf_counter(); {body}; print(time.perf_counter() - t)"


def timed(body: str, env: dict[str, str]) -> float:
    code = TIMED.format(body=body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def own_modules(env: dict[str, str]) -> list[tuple[int, str]]:
    """(cumulative us, module) of ziggurat's modules under ``-X importtime``, slowest first."""
    code = "import torch; import ziggurat"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env
    )
    rows = []
    for line in out.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2].lstrip().startswith("ziggurat") and parts[1].isdigit():
            rows.append((int(parts[1]), parts[2].strip()))
    return sorted(rows, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    env = dict(os.environ)
    bare, both = [], []
    for _ in range(args.runs):
        bare.append(timed("import torch", env))
        both.append(timed("import torch; import ziggurat", env))
    base, full = statistics.median(bare), statistics.median(both)
    print(f"import torch            median {base:.3f} s over {args.runs} processes")
    print(f"import torch, ziggurat  median {full:.3f} s")
    print(f"ziggurat adds           {full - base:.3f} s")
    print("slowest ziggurat modules (-X importtime, cumulative us):")
    for us, name in own_modules(env)[:10]:
        print(f"  {us:8d}  {name}")


if __name__ == "__main__":
    main()
