"""A small program that exercises every entry of a version-2 checkpoint, and the script that
wrote ``fixtures/checkpoint_v2.pt`` with the release that introduced the format.

Levels: ``hpo`` (Adam with a StepLR schedule) is read by three lower levels: ``cls_cg``
(SGD with momentum, CG with warm starts, an accumulation window of three), ``cls_sama`` (Adam,
SAMA, so its last gradients are kept) and ``unrolled`` (an IterativeProblem with Adam). Each
lower level draws shuffled batches from a DataLoader with its own generator. The checkpoint is
taken at step 8: ``cls_cg``'s accumulation window is open, and ``unrolled`` is at the end of an
inner loop (a checkpoint inside one loses the graph back to the loop's start, see
``docs/systems.md``).

Run ``python tests/checkpoint_v2_program.py OUT_DIR`` to write the checkpoint and the state
the uninterrupted run reaches ``CONTINUE`` steps later.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ziggurat import Config, Engine, EngineConfig
from ziggurat.problems import ImplicitProblem, IterativeProblem

SAVED_AT = 8
CONTINUE = 6
D = torch.float64


class Upper(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        losses = [F.mse_loss(getattr(self, n)(x).squeeze(-1), y) for n in self.lowers]
        return torch.stack(losses).sum()


class Lower(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        loss = F.mse_loss(self.module(x).squeeze(-1), y)
        decay = self.hpo.module.log_decay.exp()
        return loss + 0.5 * decay * sum(p.pow(2).sum() for p in self.module.parameters())


class Unrolled(IterativeProblem):
    def training_step(self, batch):
        x, y = batch
        loss = F.mse_loss(self(x).squeeze(-1), y)
        decay = self.hpo.module.log_decay.exp()
        return loss + 0.5 * decay * sum(p.pow(2).sum() for p in self.params.values())


class Decay(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_decay = nn.Parameter(torch.tensor(-2.0, dtype=D))


def _loader(seed: int, n: int = 24) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=D)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=D) + 0.1 * torch.randn(n, generator=gen, dtype=D)
    shuffle = torch.Generator().manual_seed(seed + 100)
    return DataLoader(TensorDataset(x, y), batch_size=6, shuffle=True, generator=shuffle)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(D)


def build(train_iters: int) -> Engine:
    """The program, built the same way every time."""
    decay = Decay()
    opt = torch.optim.Adam(decay.parameters(), lr=0.05)
    hpo = Upper(
        name="hpo",
        module=decay,
        optimizer=opt,
        scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        train_data_loader=_loader(1),
    )
    hpo.lowers = ["cls_sama", "unrolled", "cls_cg"]
    net = _net(2)
    cls_cg = Lower(
        name="cls_cg",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
        train_data_loader=_loader(3),
        config=Config(type="cg", cg_iterations=3, cg_warm_start=True, gradient_accumulation=3),
    )
    net = _net(4)
    cls_sama = Lower(
        name="cls_sama",
        module=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=0.01),
        train_data_loader=_loader(5),
        config=Config(type="sama"),
    )
    net = _net(6)
    unrolled = Unrolled(
        name="unrolled",
        module=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=0.01),
        train_data_loader=_loader(7),
        config=Config(unroll_steps=2),
    )
    # cls_cg last: the upper level steps once it ends its window, after the others have taken
    # their step (a level whose last batch came before a checkpoint has no batch to hop with)
    lowers = [cls_sama, unrolled, cls_cg]
    return Engine(
        problems=[hpo, *lowers],
        config=EngineConfig(train_iters=train_iters, logger_type="none", progress=False),
        dependencies={"u2l": {hpo: lowers}, "l2u": {p: [hpo] for p in lowers}},
    )


def parameters(engine: Engine) -> dict[str, torch.Tensor]:
    """Every level's parameters and optimizer moments, by name."""
    out: dict[str, torch.Tensor] = {}
    for p in engine.problems:
        for k, t in p.module.state_dict().items():
            out[f"{p.name}.module.{k}"] = t.detach().clone()
        for i, state in p.optimizer.state_dict()["state"].items():
            for k, t in state.items():
                if isinstance(t, torch.Tensor):
                    out[f"{p.name}.opt.{i}.{k}"] = t.detach().clone()
        if isinstance(p, IterativeProblem):
            for k, t in p.params.items():
                out[f"{p.name}.params.{k}"] = t.detach().clone()
    return out


def main(out: Path) -> None:
    torch.manual_seed(0)
    engine = build(SAVED_AT)
    engine.run()
    engine.save(str(out / "checkpoint_v2.pt"))
    engine.config.train_iters = SAVED_AT + CONTINUE
    engine.run()
    torch.save(parameters(engine), out / "checkpoint_v2_continued.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
