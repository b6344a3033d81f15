"""Data-parallel runs on a world of two gloo ranks equal single-process runs on the global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from _distributed_programs import build, checkpoint_worker, parameters, run, worker
from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem, IterativeProblem

WORLD = 2
JOBS = [
    ("darts", "ddp"),
    ("cg", "ddp"),
    ("three", "ddp"),
    ("darts", "zero"),
    ("cg", "zero"),
    ("accum", "ddp"),
    ("sama", "ddp"),
    ("sama", "zero"),
    ("plateau", "ddp"),
    ("rollback", "zero"),
]
CHECKPOINT_STEPS = 10  # the save at step 5 falls inside the lower level's accumulation window


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


@pytest.mark.parametrize("program", ["three", "accum", "sama"])
def test_programs_move_every_level(program: str) -> None:
    """Equality above is not that of untouched parameters: every level's tensors change."""
    before = parameters(build(program, 0, 1, "default"))
    after = run(program)
    for k in before:
        assert float((after[k] - before[k]).abs().max()) > 1e-3, k


def test_sama_preconditioner_matters() -> None:
    """The ``sama`` job tests the Adam preconditioner: with ``D = I`` the result differs."""
    adam = run("sama")
    engine = build("sama", 0, 1, "default")
    engine.lower._adam_preconditioner = lambda: None  # the identity fallback
    engine.run()
    identity = parameters(engine)
    assert float((adam["weights.weight"] - identity["weights.weight"]).abs().max()) > 1e-4


@pytest.mark.distributed
def test_checkpoint_under_data_parallelism_resumes_bit_exactly(tmp_path) -> None:
    """DDP (periodic checkpoints, ``resume=True``) and ZeRO (``save``/``load``): ``N`` steps in
    one go equal ``N/2`` steps, a checkpoint, and ``N/2`` more in a new world of processes --
    parameters and optimizer state (ZeRO: each rank's shard) ``torch.equal`` on both ranks.
    The program draws noise from each rank's own RNG and saves inside an accumulation window.
    """
    for phase in ("first", "second"):
        init = str(tmp_path / f"init-{phase}")
        mp.spawn(
            checkpoint_worker,
            args=(WORLD, init, phase, CHECKPOINT_STEPS, str(tmp_path)),
            nprocs=WORLD,
        )
    assert sorted(p.name for p in (tmp_path / "ckpt-ddp").iterdir()) == ["step-000000005.pt"]
    for strategy in ("ddp", "zero"):
        for rank in range(WORLD):
            whole = torch.load(tmp_path / f"whole-{strategy}-rank{rank}.pt")
            resumed = torch.load(tmp_path / f"resumed-{strategy}-rank{rank}.pt")
            assert whole.keys() == resumed.keys()
            assert any(".opt." in k for k in whole), strategy
            for k in whole:
                assert torch.equal(whole[k], resumed[k]), (strategy, rank, k)


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


@pytest.mark.distributed
def test_torchrun_world_initialised_by_the_engine(tmp_path) -> None:
    """``torchrun`` with two processes on the loopback interface; the Engine calls
    ``init_process_group`` from the environment. Both ranks end equal, and equal to the
    single-process run on the global batches."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = Path(__file__).parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(here)]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(here / "torchrun_program.py"),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert_close(got[0], got[1], atol=0.0)
    assert_close(got[0], run("darts"), atol=1e-10)


def test_importing_ziggurat_keeps_optimizers_from_pinning_the_process_group(tmp_path) -> None:
    """After ``import ziggurat``, a group initialised by the user and then the first
    ``torch.optim`` optimizer: the optimizer adds no reference to the group, so
    ``destroy_process_group`` frees it (without the guard in ``engine/_distributed.py`` torch
    2.13 adds ten, and the leaked group's gloo threads abort some processes at exit)."""
    script = f"""
import sys
import torch, torch.distributed as dist
import ziggurat
dist.init_process_group("gloo", init_method="file://{tmp_path / 'init'}", rank=0, world_size=1)
before = sys.getrefcount(dist.group.WORLD)
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
print(sys.getrefcount(dist.group.WORLD) - before)
dist.destroy_process_group()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0"]
