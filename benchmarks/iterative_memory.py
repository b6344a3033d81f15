"""Peak memory of an ``IterativeProblem``'s unrolled inner loop, plain against checkpointed.

Usage::

    PYTHONPATH=src python -m benchmarks.iterative_memory [--steps 1 10 100] [--width 512]

Each (T, mode) runs in a fresh process: an MLP classifier (64-W-W-10, batch 256, synthetic
data) is the lower level, unrolled for ``T`` SGD-momentum steps from the upper level's
initialisation (MAML style), plain or with ``Config(checkpoint_segments="sqrt")``; the upper
level then takes one step. Reported: peak RSS (``ru_maxrss``), its increase over the RSS after
building the program, the wall time of the run, and the upper gradient's largest difference
from the plain run's.
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


def worker(steps: int, mode: str, width: int) -> dict:
    import torch
    from torch import nn
    from torch.nn import functional as F

    from ziggurat import Engine
    from ziggurat.configs import Config, EngineConfig
    from ziggurat.problems import ImplicitProblem, IterativeProblem

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    seen: list = []

    def net() -> nn.Module:
        return nn.Sequential(
            nn.Linear(64, width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, 10),
        )

    class Meta(ImplicitProblem):
        def training_step(self, batch):
            return F.cross_entropy(self.learner(batch[0]), batch[1])

        def grad_callback(self):
            seen.append(torch.cat([p.grad.flatten() for p in self.module.parameters()]))

    class Learner(IterativeProblem):
        def on_inner_loop_start(self):
            self.params = dict(self.meta.module.named_parameters())

        def training_step(self, batch):
            return F.cross_entropy(self(batch[0]), batch[1])

    phi, inner = net(), net()
    meta = Meta(
        name="meta",
        module=phi,
        optimizer=torch.optim.Adam(phi.parameters(), lr=1e-3),
        train_data_loader=[(x, y)],
    )
    learner = Learner(
        name="learner",
        module=inner,
        optimizer=torch.optim.SGD(inner.parameters(), lr=0.01, momentum=0.9),
        train_data_loader=[(x, y)],
        config=Config(
            unroll_steps=steps, checkpoint_segments="sqrt" if mode == "checkpoint" else None
        ),
    )
    engine = Engine(
        [meta, learner],
        EngineConfig(train_iters=steps, valid_step=0, logger_type="none", progress=False),
        {"u2l": {meta: [learner]}, "l2u": {learner: [meta]}},
    )
    before = rss_now_mb()
    t0 = time.perf_counter()
    engine.run()
    seconds = time.perf_counter() - t0
    return {
        "steps": steps,
        "mode": mode,
        "params": sum(p.numel() for p in phi.parameters()),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_mb": before,
        "seconds": seconds,
        "grad": seen[0][:256].tolist(),
    }


def spawn(steps: int, mode: str, width: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.iterative_memory", "--worker", str(steps), mode]
    cmd.append(str(width))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict = json.loads(proc.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        steps, mode, width = args.worker
        print(json.dumps(worker(int(steps), mode, int(width))))
        return
    print(
        "| params | T | plain peak MB | plain +MB | plain s | checkpointed peak MB "
        "| checkpointed +MB | checkpointed s | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for steps in args.steps:
        plain, ckpt = spawn(steps, "plain", args.width), spawn(steps, "checkpoint", args.width)
        diff = max(abs(a - b) for a, b in zip(plain["grad"], ckpt["grad"], strict=True))
        print(
            f"| {plain['params']:,} | {steps} | {plain['peak_mb']:.0f} | "
            f"{plain['peak_mb'] - plain['base_mb']:.0f} | {plain['seconds']:.2f} | "
            f"{ckpt['peak_mb']:.0f} | {ckpt['peak_mb'] - ckpt['base_mb']:.0f} | "
            f"{ckpt['seconds']:.2f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
