"""Peak memory and time of unrolled hypergradients, plain against checkpointed.

Usage::

    PYTHONPATH=src python -m benchmarks.unroll_memory [--sizes 10k 300k 2M] [--steps 1 5 20 100]

Each (size, T, mode) runs in a fresh process: it builds the inner problem of ``core_cost.py``
(an MLP classifier with per-unit L2 weights, batch 256), reads its RSS, computes one
``unrolled(sgd(momentum=0.9), T)`` hypergradient, plain or with ``checkpoint_segments="sqrt"``,
and reports its peak RSS (``ru_maxrss``), the increase over the RSS before the call, and the
time. The hypergradients of both modes are compared (max abs difference, float32).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # where `python -m benchmarks.x` finds the package


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(size: str, steps: int, mode: str) -> dict:
    import torch

    from ziggurat import hypergradient as hg
    from ziggurat.optim import sgd

    from . import core_cost

    torch.set_num_threads(1)
    p = core_cost.make_problem(size)
    segments = "sqrt" if mode == "checkpoint" else None
    method = hg.unrolled(sgd(0.01, momentum=0.9), steps, checkpoint_segments=segments)
    before = rss_now_mb()
    t0 = time.perf_counter()
    out = method(p.inner, p.w, p.lam, p.v).vjp
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flat = torch.cat([t.flatten() for t in out.values()])
    return {
        "size": size,
        "steps": steps,
        "mode": mode,
        "peak_mb": peak,
        "base_mb": before,
        "seconds": seconds,
        "params": sum(t.numel() for t in p.w.values()),
        "vjp": flat[:64].tolist(),
    }


def spawn(size: str, steps: int, mode: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.unroll_memory", "--worker", size, str(steps), mode]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict = json.loads(proc.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10k", "300k", "2M"])
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 5, 20, 100])
    parser.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        size, steps, mode = args.worker
        print(json.dumps(worker(size, int(steps), mode)))
        return
    print(
        "| size | params | T | plain peak MB | plain +MB | plain s | checkpointed peak MB | "
        "checkpointed +MB | checkpointed s | max abs diff |"
    )
    print("|" + "---|" * 10)
    for size in args.sizes:
        for steps in args.steps:
            a, b = spawn(size, steps, "plain"), spawn(size, steps, "checkpoint")
            diff = max(abs(x - y) for x, y in zip(a["vjp"], b["vjp"], strict=True))
            print(
                f"| {size} | {a['params']:,} | {steps} | {a['peak_mb']:.0f} | "
                f"{a['peak_mb'] - a['base_mb']:.0f} | {a['seconds']:.2f} | {b['peak_mb']:.0f} | "
                f"{b['peak_mb'] - b['base_mb']:.0f} | {b['seconds']:.2f} | {diff:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
