"""Step time of data-parallel multilevel training: one process against a world of N (gloo).

Meta-Weight-Net style data reweighting on sklearn digits (float32): the lower level is an MLP
classifier (64-256-256-10) trained on a loss whose per-example weights come from a small weight
network (1-32-1) fed with each example's loss; the upper level trains the weight network on a
held-out loss, with DARTS hypergradients. The global batch (``--batch`` rows for each level) is
split evenly across ranks. For each world size the median time per global step is reported,
with the share of that time spent in the gradient and cotangent all-reduces (timed inside the
engine's data-parallel group), and the scaling efficiency ``t_1 / (N t_N)``.

    PYTHONPATH=src python -m benchmarks.distributed_scaling --world 1 2 > table.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem


class Classifier(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        losses = F.cross_entropy(self.module(x), y, reduction="none")
        weight = self.weights(losses.detach().unsqueeze(1)).squeeze(1)
        return (weight * losses).mean()


class WeightNet(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.classifier(x), y)


def _loader(x, y, batch: int, rank: int, world: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(64):
        idx = torch.randint(0, len(x), (batch,), generator=g)[rank::world]
        out.append((x[idx], y[idx]))
    return out


def build(batch: int, iters: int, rank: int, world: int, strategy: str = "ddp") -> Engine:
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
    clf.append(nn.Linear(256, 10))
    wnet = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())
    classifier = Classifier(
        name="classifier",
        module=clf,
        optimizer=torch.optim.SGD(clf.parameters(), lr=0.1, momentum=0.9),
        train_data_loader=_loader(x[:1400], y[:1400], batch, rank, world, 1),
        config=Config(type="darts", darts_alpha=0.01),
    )
    weights = WeightNet(
        name="weights",
        module=wnet,
        optimizer=torch.optim.Adam(wnet.parameters(), lr=1e-3),
        train_data_loader=_loader(x[1400:], y[1400:], batch, rank, world, 2),
    )
    strategy = strategy if world > 1 else "default"
    return Engine(
        problems=[classifier, weights],
        config=EngineConfig(train_iters=iters, valid_step=0, strategy=strategy),
        dependencies={"u2l": {weights: [classifier]}, "l2u": {classifier: [weights]}},
    )


def measure(
    rank: int, world: int, batch: int, steps: int, warmup: int, strategy: str = "ddp"
) -> tuple[float, float]:
    """Median seconds per global step and the share of the timed steps spent all-reducing
    (the engine's own all-reduces: FSDP2's all-gathers and reduce-scatters are not counted)."""
    engine = build(batch, warmup + steps, rank, world, strategy)
    for _ in range(warmup):
        engine.global_step += 1
        engine.train_step()
    group = engine.distributed
    group.comm_seconds = 0.0
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.global_step += 1
        engine.train_step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), group.comm_seconds / sum(times)


def _worker(rank: int, world: int, init: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        step, comm = measure(rank, world, args.batch, args.steps, args.warmup, args.strategy)
        torch.save((step, comm), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_world(world: int, args: argparse.Namespace) -> tuple[float, float]:
    if world == 1:
        torch.set_num_threads(args.threads)
        return measure(0, 1, args.batch, args.steps, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, os.path.join(tmp, "init"), args, tmp), nprocs=world)
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
    return max(r[0] for r in results), statistics.mean(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=512, help="global batch per level")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--strategy", choices=["ddp", "zero", "fsdp"], default="ddp")
    args = parser.parse_args()
    print(
        "| strategy | processes | global batch | ms / step | speed-up | efficiency "
        "| all-reduce share |"
    )
    print("|---|---|---|---|---|---|---|")
    base = None
    for world in args.world:
        step, comm = run_world(world, args)
        base = step if base is None else base
        speedup = base / step
        print(
            f"| {args.strategy if world > 1 else 'single'} | {world} | {args.batch} | "
            f"{1e3 * step:.1f} | {speedup:.2f}x | {speedup / world:.0%} | {comm:.1%} |"
        )


if __name__ == "__main__":
    main()
