"""Data-parallel runs on a world of two gloo ranks equal single-process runs on the global batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from _distributed_programs import build, parameters, run, worker
from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem, IterativeProblem

WORLD = 2
JOBS = [("darts", "ddp"), ("cg", "ddp"), ("three", "ddp"), ("darts", "zero"), ("cg", "zero")]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every job run once on a world of two gloo ranks (one spawn: start-up dominates)."""
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(WORLD, str(tmp / "init"), JOBS, str(tmp)), nprocs=WORLD)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


@pytest.mark.distributed
@pytest.mark.parametrize("job", JOBS, ids=["-".join(j) for j in JOBS])
def test_data_parallel_equals_single_process_on_global_batches(
    ranks: list[dict], job: tuple[str, str]
) -> None:
    single = run(job[0])
    assert_close(ranks[0][job], ranks[1][job], atol=0.0)
    assert_close(ranks[0][job], single, atol=1e-10)


def test_programs_move_every_level() -> None:
    """Equality above is not that of untouched parameters: every level's tensors change."""
    before = parameters(build("three", 0, 1, "default"))
    after = run("three")
    for k in before:
        assert float((after[k] - before[k]).abs().max()) > 1e-3, k


def _second_order_program(strategy: str, lower_config: Config) -> None:
    class Up(ImplicitProblem):
        def training_step(self, batch):
            return self.low.module.weight.pow(2).sum()

    class Low(ImplicitProblem):
        def training_step(self, batch):
            return (self.module.weight - self.up.module.weight).pow(2).sum()

    mods = [nn.Linear(2, 1), nn.Linear(2, 1)]
    up = Up("up", module=mods[0], optimizer=torch.optim.SGD(mods[0].parameters(), lr=0.1))
    low = Low(
        "low",
        module=mods[1],
        optimizer=torch.optim.SGD(mods[1].parameters(), lr=0.1),
        config=lower_config,
    )
    Engine(
        [up, low],
        EngineConfig(strategy=strategy),
        {"u2l": {up: [low]}, "l2u": {low: [up]}},
    )


@pytest.mark.parametrize("kind", ["cg", "neumann", "exact"])
def test_fsdp_rejects_second_order_methods_before_sharding(kind: str) -> None:
    with pytest.raises(ValueError, match=r"problem 'low'.*second-order.*darts.*strategy='ddp'"):
        _second_order_program("fsdp", Config(type=kind))
    assert not dist.is_initialized()


def test_fsdp_first_order_levels_are_not_sharded_yet() -> None:
    with pytest.raises(ValueError, match="not implemented yet"):
        _second_order_program("fsdp", Config(type="darts"))


def test_distributed_rejects_unrolled_levels() -> None:
    class Low(IterativeProblem):
        def training_step(self, batch):
            return self.module.weight.pow(2).sum()

    class Up(ImplicitProblem):
        def training_step(self, batch):
            return self.low.module.weight.sum()

    mods = [nn.Linear(2, 1), nn.Linear(2, 1)]
    up = Up("up", module=mods[0], optimizer=torch.optim.SGD(mods[0].parameters(), lr=0.1))
    low = Low("low", module=mods[1], optimizer=torch.optim.SGD(mods[1].parameters(), lr=0.1))
    with pytest.raises(ValueError, match="IterativeProblem"):
        Engine([up, low], EngineConfig(strategy="ddp"), {"u2l": {up: [low]}, "l2u": {low: [up]}})


def test_betty_alias_and_backend_default() -> None:
    assert EngineConfig(distributed=True).strategy == "ddp"
    assert EngineConfig(strategy="distributed").strategy == "ddp"
    assert EngineConfig(strategy="zero").backend is None
