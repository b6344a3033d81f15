"""``last_metrics`` are the metrics of the level's own training step, never those of the
evaluations a hop makes at perturbed weights (DARTS and SAMA evaluate ``w +- h u``)."""

from __future__ import annotations

import pytest
import torch

from _modules import Vec
from ziggurat import Config, Engine, EngineConfig
from ziggurat.problems import ImplicitProblem

D = torch.float64


class Upper(ImplicitProblem):
    def training_step(self, batch):
        return (self.lower() - 1.0).pow(2).sum()


class Lower(ImplicitProblem):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[float] = []  # w_norm of every training_step evaluation
        self.own: list[float] = []  # w_norm at the level's own steps

    def training_step(self, batch):
        w = self.module()
        norm = float(w.detach().norm())
        self.seen.append(norm)
        loss = (w - self.upper()).pow(2).sum() + 0.1 * w.pow(2).sum()
        return {"loss": loss, "w_norm": norm}

    def get_loss(self, batch):
        self.own.append(float(self.module().detach().norm()))
        return super().get_loss(batch)


@pytest.mark.parametrize("method", ["darts", "sama"])
def test_last_metrics_come_from_the_lower_level_own_step(method: str) -> None:
    upper_module, lower_module = Vec(torch.ones(3, dtype=D)), Vec(torch.zeros(3, dtype=D))
    upper = Upper(
        name="upper",
        module=upper_module,
        optimizer=torch.optim.SGD(upper_module.parameters(), lr=0.1),
        train_data_loader=[None],
    )
    lower = Lower(
        name="lower",
        module=lower_module,
        optimizer=torch.optim.Adam(lower_module.parameters(), lr=0.1),
        train_data_loader=[None],
        config=Config(type=method),
    )
    Engine(
        problems=[upper, lower],
        config=EngineConfig(train_iters=3, logger_type="none"),
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    ).run()
    hop_norms = [n for n in lower.seen if n not in lower.own]
    assert hop_norms, "the hops evaluated the lower loss at other weights"
    assert lower.last_metrics["w_norm"] == lower.own[-1]
    assert lower.seen[-1] != lower.own[-1]  # the last evaluation was a hop's
