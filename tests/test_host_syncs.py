"""No needless host synchronisation: between logging steps, an upper or lower step of darts,
sama, first_order and fixed-iteration cg and Neumann reads no tensor on the host.

On a GPU every ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)`` or ``.tolist()`` waits for the
device. The test counts those calls on CPU by wrapping the entry points. Conversions of
``torch.optim``'s ``step`` counters are not counted: the optimizer keeps them on the CPU
(unless ``capturable``), so reading them never waits for a device. With the health checks on
(the default) each update reads its checks once; with ``check_finite=False`` nothing is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ziggurat import Config, Engine, EngineConfig
from ziggurat.hypergradient import cg, neumann
from ziggurat.problems import ImplicitProblem

ENTRY_POINTS = ("item", "__float__", "__int__", "__bool__", "tolist", "__index__")


@contextlib.contextmanager
def counting(exempt: list[torch.Tensor]) -> Iterator[list[str]]:
    """Record every host read of a tensor not in ``exempt`` (by identity)."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in ENTRY_POINTS}

    def wrap(name: str, original):
        def wrapper(self, *args, **kwargs):
            if not any(self is t for t in exempt):
                calls.append(name)
            return original(self, *args, **kwargs)

        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


class Batches:
    def __init__(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(16, 8, generator=gen)
        self.y = torch.randint(0, 3, (16,), generator=gen)

    def __iter__(self):
        while True:
            yield self.x, self.y


class Upper(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.lower(x), y)


class Lower(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        logits = self.module(x)
        weights = torch.sigmoid(self.upper.module(x)).squeeze(-1)
        loss = (weights * F.cross_entropy(logits, y, reduction="none")).mean()
        return {"loss": loss, "accuracy": (logits.argmax(-1) == y).float().mean()}


def program(config: Config, check_finite: bool, iters: int) -> Engine:
    torch.manual_seed(0)
    net, weigher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)), nn.Linear(8, 1)
    upper = Upper(
        name="upper",
        module=weigher,
        optimizer=torch.optim.Adam(weigher.parameters(), lr=1e-2),
        train_data_loader=Batches(1),
    )
    lower = Lower(
        name="lower",
        module=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-2),
        train_data_loader=Batches(2),
        config=config,
    )
    engine_config = EngineConfig(
        train_iters=iters, valid_step=0, logger_type="none", check_finite=check_finite
    )
    return Engine(
        problems=[upper, lower],
        config=engine_config,
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    )


METHODS = {
    "darts": Config(type="darts"),
    "sama": Config(type="sama"),
    "first_order": Config(type="first_order"),
    "cg": Config(hypergradient=cg(3, tol=None)),
    "neumann": Config(hypergradient=neumann(3, 0.01)),
}


def steps_counters(engine: Engine) -> list[torch.Tensor]:
    return [
        state["step"]
        for p in engine.problems
        for state in p.optimizer.state.values()
        if isinstance(state.get("step"), torch.Tensor)
    ]


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("check_finite", [False, True])
def test_steps_read_nothing_on_the_host_but_their_checks(method: str, check_finite: bool) -> None:
    engine = program(METHODS[method], check_finite, iters=3)
    engine.run()  # the first steps make their one-time checks (graph facts, warm-up)
    engine.config.train_iters = 8
    with counting(steps_counters(engine)) as calls:
        engine.run()
    # with checks, each level's update reads them once (one bool; first_order's upper level
    # takes no optimizer step but still checks its loss); without, nothing at all
    assert calls == (["__bool__"] * (2 * 5) if check_finite else [])


def test_the_counter_sees_a_sync_where_there_is_one() -> None:
    engine = program(METHODS["darts"], False, iters=3)
    engine.run()
    with counting([]) as calls:
        float(torch.ones(()))
        torch.ones(2).tolist()
        assert engine.lower.last_metrics["accuracy"] >= 0.0  # reading metrics is a sync
    assert calls[:2] == ["__float__", "tolist"] and "__float__" in calls[2:]
