"""Small multilevel programs run on one process or on each rank of a gloo group.

Data reweighting (Meta-Weight-Net style): ``lower`` fits a linear regression with per-example
weights ``sigmoid(weights(x))``; ``weights`` is trained on a validation loss. The three-level
program adds ``reg``, which scales a penalty on ``weights`` and is trained on a test loss. A
world of ``W`` ranks gives rank ``r`` the rows ``r::W`` of every global batch, so each rank's mean
loss averages to the global batch's.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem

D = torch.float64
DIM, BATCH, STEPS = 3, 8, 6


def _data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g, dtype=D)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=D) + 0.3 * torch.randn(n, generator=g, dtype=D)
    return x, y


def shards(seed: int, rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _data(seed, BATCH * STEPS)
    return [
        (x[i : i + BATCH][rank::world], y[i : i + BATCH][rank::world])
        for i in range(0, BATCH * STEPS, BATCH)
    ]


class Lower(ImplicitProblem):
    def training_step(self, batch: Any) -> torch.Tensor:
        x, y = batch
        weight = torch.sigmoid(self.weights(x)).squeeze(-1)
        residual = self.module(x).squeeze(-1) - y
        return (weight * residual.pow(2)).mean() + 0.05 * self.module.weight.pow(2).sum()


class Weights(ImplicitProblem):
    def training_step(self, batch: Any) -> torch.Tensor:
        x, y = batch
        loss = (self.lower(x).squeeze(-1) - y).pow(2).mean()
        reg = self.engine.problem_by_name("reg")
        if reg is not None:
            loss = loss + 0.1 * torch.exp(reg.module.weight.sum()) * self.module.weight.pow(2).sum()
        return loss


class Reg(ImplicitProblem):
    def training_step(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return (self.lower(x).squeeze(-1) - y).pow(2).mean()


def _linear(seed: int, n_in: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, 1, bias=n_in > 1).to(D)


def build(program: str, rank: int, world: int, strategy: str) -> Engine:
    """``program``: ``darts``, ``cg`` (two levels) or ``three`` (cg below darts)."""
    low_type = "darts" if program == "darts" else "cg"
    low_mod, w_mod = _linear(1, DIM), _linear(2, DIM)
    lower = Lower(
        name="lower",
        module=low_mod,
        optimizer=torch.optim.SGD(low_mod.parameters(), lr=0.1, momentum=0.5),
        train_data_loader=shards(10, rank, world),
        config=Config(type=low_type, darts_alpha=0.01, cg_iterations=DIM + 1, unroll_steps=2),
    )
    weights = Weights(
        name="weights",
        module=w_mod,
        optimizer=torch.optim.Adam(w_mod.parameters(), lr=0.05),
        train_data_loader=shards(11, rank, world),
        config=Config(type="darts", darts_alpha=0.01),
    )
    problems = [lower, weights]
    deps: dict[str, Any] = {"u2l": {weights: [lower]}, "l2u": {lower: [weights]}}
    if program == "three":
        r_mod = _linear(3, 1)
        reg = Reg(
            name="reg",
            module=r_mod,
            optimizer=torch.optim.SGD(r_mod.parameters(), lr=0.1),
            train_data_loader=shards(12, rank, world),
        )
        problems.append(reg)
        deps = {
            "u2l": {reg: [weights, lower], weights: [lower]},
            "l2u": {lower: [weights], weights: [reg]},
        }
    config = EngineConfig(train_iters=2 * STEPS, valid_step=0, strategy=strategy)
    return Engine(problems=problems, config=config, dependencies=deps)


def parameters(engine: Engine) -> dict[str, torch.Tensor]:
    return {
        f"{p.name}.{k}": t.detach().clone()
        for p in engine.problems
        for k, t in p.module.state_dict().items()
    }


def run(program: str, rank: int = 0, world: int = 1, strategy: str = "default") -> dict:
    engine = build(program, rank, world, strategy)
    engine.run()
    return parameters(engine)


def worker(rank: int, world: int, init_file: str, jobs: list[tuple[str, str]], out: str) -> None:
    """Entry point for ``torch.multiprocessing.spawn``: one rank of a gloo group.

    Runs every ``(program, strategy)`` job in one group (process start-up dominates the cost)
    and saves ``{job: parameters}`` to ``out/rank{rank}.pt``.
    """
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {job: run(job[0], rank, world, job[1]) for job in jobs}
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
