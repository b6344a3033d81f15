"""A small 2-level program (Adam, schedulers, shuffled DataLoaders, RNG in training_step) for
checkpoint and resume tests; also runnable as a script so a resume happens in a new process.

    python systems_program.py resume CKPT OUT N   # load CKPT, run to N steps, save to OUT
    python systems_program.py forever CKPT_DIR    # periodic checkpoints until killed
"""

from __future__ import annotations

import random
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem


class Lower(ImplicitProblem):
    sleep = 0.0

    def training_step(self, batch):
        x, y = batch
        noise = 0.01 * torch.randn_like(y) + 1e-3 * float(np.random.rand() + random.random())
        if self.sleep:
            time.sleep(self.sleep)
        mse = (self.module(x) - y - noise).pow(2).mean()
        decay = torch.exp(self.upper.module.log_decay)
        return mse + (decay * self.module.weight.pow(2)).sum()


class Upper(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return (self.lower.module(x) - y).pow(2).mean()


class Hyper(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.log_decay = nn.Parameter(torch.full((1, d), -2.0))


def build(train_iters: int, sleep: float = 0.0, sampler: bool = False, **engine_options) -> Engine:
    """``sampler=True``: the lower level's loader shuffles with a ``DistributedSampler`` (one
    replica; its order depends on the epoch it is given through ``set_epoch``)."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    d = 4
    x = torch.randn(22, d)
    y = x @ torch.randn(d, 1) + 0.1 * torch.randn(22, 1)
    lower_module, upper_module = nn.Linear(d, 1), Hyper(d)
    lower_opt = torch.optim.Adam(lower_module.parameters(), lr=0.05)
    upper_opt = torch.optim.Adam(upper_module.parameters(), lr=0.02)
    lower = Lower(
        "lower",
        Config(type="cg", cg_iterations=3, cg_warm_start=True, unroll_steps=2),
        module=lower_module,
        optimizer=lower_opt,
        scheduler=torch.optim.lr_scheduler.StepLR(lower_opt, step_size=3, gamma=0.7),
        train_data_loader=_lower_loader(TensorDataset(x[:14], y[:14]), sampler),
    )
    lower.sleep = sleep
    upper = Upper(
        "upper",
        module=upper_module,
        optimizer=upper_opt,
        scheduler=torch.optim.lr_scheduler.ExponentialLR(upper_opt, gamma=0.9),
        train_data_loader=DataLoader(TensorDataset(x[14:], y[14:]), batch_size=3, shuffle=True),
    )
    config = EngineConfig(train_iters=train_iters, valid_step=0, **engine_options)
    deps = {"u2l": {upper: [lower]}, "l2u": {lower: [upper]}}
    return Engine([upper, lower], config, deps)


def _lower_loader(data: TensorDataset, sampler: bool) -> DataLoader:
    if not sampler:
        return DataLoader(data, batch_size=4, shuffle=True)
    from torch.utils.data.distributed import DistributedSampler

    order = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=7)
    return DataLoader(data, batch_size=4, sampler=order)


def tensors(engine: Engine) -> dict[str, torch.Tensor]:
    """Every parameter and optimizer-state tensor of the program, by a stable name."""
    out = {}
    for p in engine.problems:
        for k, v in p.module.state_dict().items():
            out[f"{p.name}.module.{k}"] = v
        for i, s in p.optimizer.state_dict()["state"].items():
            for k, v in s.items():
                out[f"{p.name}.opt.{i}.{k}"] = torch.as_tensor(v)
    return out


def main(argv: list[str]) -> None:
    if argv[0] == "resume":
        ckpt, out, n = argv[1], argv[2], int(argv[3])
        engine = build(n)
        engine.load(ckpt)
        engine.run()
        engine.save(out)
    elif argv[0] == "forever":
        engine = build(10**6, sleep=0.02, checkpoint_dir=argv[1], checkpoint_step=3)
        engine.run()


if __name__ == "__main__":
    main(sys.argv[1:])
