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

from _distributed_programs import (
    CHECKPOINT_RUNS,
    MIDDLE_CONFIGS,
    STEPS,
    build,
    checkpoint_worker,
    parameters,
    run,
    worker,
)
from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import FiniteDifference, MixedFiniteDifference, stochastic
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
    ("wide", "ddp"),
    ("first_order", "ddp"),
    ("first_order", "fsdp"),
    ("custom", "ddp"),
    ("custom", "fsdp"),
    ("darts", "fsdp"),
    ("wide", "fsdp"),
    ("inputs", "fsdp"),
    ("sama", "fsdp"),
    ("three_fsdp", "fsdp"),
    ("three_fsdp", "ddp"),
    ("plateau", "fsdp"),
    ("rollback_fsdp", "fsdp"),
    ("unrolled", "ddp"),
    ("unrolled", "zero"),
    ("cg_fd", "ddp"),
    ("cg_fd", "zero"),
    ("penalty", "ddp"),
    ("unrolled_module", "ddp"),
    ("cg_fd", "fsdp"),
    ("exact_fd", "ddp"),
    ("exact_fd", "fsdp"),
    ("penalty", "fsdp"),
    ("auto", "ddp"),
    ("auto", "fsdp"),
]
FSDP_ATOL = 1e-12
"""FSDP2 against DDP on the same program (float64): FSDP2 averages sharded gradients with a
reduce-scatter, DDP with an all-reduce; only the summation order can differ."""
FSDP_FD_ATOL = 1e-8
"""The same for methods that take gradients in the sharded parameters (finite differences,
the penalty method): a difference quotient amplifies the summation order's rounding by
``1 / h``, about ``eps^(-1/3)`` (measured: 1.2e-12 for cg, 1.2e-10 for the dense solve, 3.7e-15
for the penalty method)."""
CHECKPOINT_STEPS = 10  # the save at step 5 falls inside the lower level's accumulation window


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every job run once on a world of two gloo ranks (one spawn: start-up dominates)."""
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(WORLD, str(tmp / "init"), JOBS, str(tmp)), nprocs=WORLD)
    return [{**torch.load(tmp / f"rank{r}.pt"), "dir": tmp} for r in range(WORLD)]


@pytest.mark.distributed
def test_only_rank_zero_writes_logs(ranks: list[dict]) -> None:
    """A two-rank run with ``logger_type="tensorboard"`` (the worker's last engine) leaves one
    event file, with one scalar per step of the lower level's loss."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((ranks[0]["dir"] / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    acc = EventAccumulator(str(files[0]))
    acc.Reload()
    assert len(acc.Scalars("weights/hypergradient/norm")) == STEPS


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


@pytest.mark.distributed
@pytest.mark.parametrize("job", JOBS, ids=["-".join(j) for j in JOBS])
def test_data_parallel_equals_single_process_on_global_batches(
    ranks: list[dict], job: tuple[str, str]
) -> None:
    # auto on a sharded level takes gradients only, as on one process with finite differences
    single = run("auto_fd" if job == ("auto", "fsdp") else job[0])
    assert_close(ranks[0][job], ranks[1][job], atol=0.0)
    fd = ("cg_fd", "exact_fd", "penalty", "auto")
    sharded_differences = job[1] == "fsdp" and job[0] in fd
    assert_close(ranks[0][job], single, atol=FSDP_FD_ATOL if sharded_differences else 1e-10)


@pytest.mark.distributed
def test_auto_chooses_gradient_methods_only_on_a_sharded_level(ranks: list[dict]) -> None:
    """Under FSDP2 every decision takes products from gradients (cg_fd, darts, sama or
    first_order); under DDP the same program uses double backward. Both ranks decide alike."""
    for strategy, products in (("fsdp", "finite_difference"), ("ddp", "autograd")):
        found = ranks[0][("decisions", "auto", strategy)]
        assert found == ranks[1][("decisions", "auto", strategy)]
        assert [s for s, *_ in found] == [4, 10]  # as on one process (upper steps 1 and 4)
        assert {p for *_, p in found} == {products}
        labels = {label.split("(")[0] for _, _, label, _ in found}
        allowed = {"cg_fd", "darts", "sama", "first_order"} if strategy == "fsdp" else None
        assert allowed is None or labels <= allowed, labels


@pytest.mark.distributed
def test_unrolled_module_calls_under_ddp_equal_the_self_call_form(ranks: list[dict]) -> None:
    """A lower loss that calls ``self.module(x)`` trains as its ``self(x)`` form, on two ranks
    and on one process."""
    single = run("unrolled")
    for r in range(WORLD):
        assert_close(ranks[r][("unrolled_module", "ddp")], single, atol=1e-10)


@pytest.mark.distributed
def test_early_stopping_decided_on_rank_zero_stops_every_rank(ranks: list[dict]) -> None:
    """Validation runs on rank 0 only (it asserts so); its decision stops both ranks at step
    10, as on one process; every rank's loader gets ``set_epoch`` at each epoch (6 batches an
    epoch: epochs 0 and 1 start within 10 steps)."""
    single = build("early", 0, 1, "default", train_iters=20)
    single.run()
    assert (single.global_step, single.stopped_early) == (10, True)
    assert single.lower._loaders[0].loader.epochs == [0, 1]
    for r in range(WORLD):
        assert ranks[r]["early"] == (10, True, [0, 1])


@pytest.mark.distributed
@pytest.mark.parametrize(
    "program", ["darts", "wide", "sama", "first_order", "custom", "three_fsdp"]
)
def test_fsdp_matches_ddp(ranks: list[dict], program: str) -> None:
    for r in range(WORLD):
        assert_close(ranks[r][(program, "fsdp")], ranks[r][(program, "ddp")], atol=FSDP_ATOL)


@pytest.mark.distributed
@pytest.mark.parametrize("program", ["cg_fd", "exact_fd", "penalty"])
def test_fsdp_takes_gradients_in_sharded_parameters(ranks: list[dict], program: str) -> None:
    """Finite-difference curvature (cg, a dense solve) and the penalty method on an
    FSDP2-sharded lowest level: their gradients in the level's own parameters go through
    FSDP2's forward and reduce-scatter, and the run equals DDP's."""
    for r in range(WORLD):
        assert_close(ranks[r][(program, "fsdp")], ranks[r][(program, "ddp")], atol=FSDP_FD_ATOL)


@pytest.mark.distributed
@pytest.mark.parametrize("program", ["wide", "inputs", "three_fsdp"])
def test_fsdp_shards_only_the_lowest_level(ranks: list[dict], program: str) -> None:
    """Each rank holds a part of the lowest level's tensors, the parts add up to the whole,
    and the levels above (``weights``, ``reg``) are replicated."""
    held = [ranks[r][("numel", program, "fsdp")] for r in range(WORLD)]
    assert all(set(h) == {"lower"} for h in held)
    local = [h["lower"][0] for h in held]
    assert sum(local) == held[0]["lower"][1] and 0 < min(local) < held[0]["lower"][1]


@pytest.mark.parametrize(
    "program", ["three", "accum", "sama", "wide", "inputs", "unrolled", "custom", "exact_fd"]
)
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
    engine.lower.optimizer_preconditioner = lambda: None  # the identity fallback
    engine.run()
    identity = parameters(engine)
    assert float((adam["weights.weight"] - identity["weights.weight"]).abs().max()) > 1e-4


@pytest.mark.distributed
def test_checkpoint_under_data_parallelism_resumes_bit_exactly(tmp_path) -> None:
    """DDP and FSDP2 (periodic checkpoints, ``resume=True``) and ZeRO (``save``/``load``): ``N``
    steps in one go equal ``N/2`` steps, a checkpoint, and ``N/2`` more in a new world of
    processes -- parameters and optimizer state (ZeRO: each rank's shard) ``torch.equal`` on
    both ranks.
    The program draws noise from each rank's own RNG and saves inside an accumulation window.
    """
    for phase in ("first", "second"):
        init = str(tmp_path / f"init-{phase}")
        mp.spawn(
            checkpoint_worker,
            args=(WORLD, init, phase, CHECKPOINT_STEPS, str(tmp_path)),
            nprocs=WORLD,
        )
    for strategy, program in CHECKPOINT_RUNS:
        if strategy != "zero":
            saved = [p.name for p in (tmp_path / f"ckpt-{strategy}-{program}").iterdir()]
            assert saved == ["step-000000005.pt"]
        for rank in range(WORLD):
            whole = torch.load(tmp_path / f"whole-{strategy}-{program}-rank{rank}.pt")
            resumed = torch.load(tmp_path / f"resumed-{strategy}-{program}-rank{rank}.pt")
            assert whole.keys() == resumed.keys()
            assert any(".opt." in k for k in whole), strategy
            for k in whole:
                assert torch.equal(whole[k], resumed[k]), (strategy, program, rank, k)
    # an FSDP2 checkpoint holds full tensors: it loads into one unsharded process as well
    path = tmp_path / "ckpt-fsdp-ckpt_rollback" / "step-000000005.pt"
    saved = torch.load(path, weights_only=True)
    single = build("ckpt_rollback", 0, 1, "default", CHECKPOINT_STEPS)
    single.load(str(path))
    assert single.global_step == 5
    for p in single.problems:
        module = saved["problems"][p.name]["module"]
        assert module.keys() == p.module.state_dict().keys()
        for k, v in p.module.state_dict().items():
            assert torch.equal(v, module[k]), (p.name, k)
        moments = [s["exp_avg"] for s in p.optimizer.state_dict()["state"].values()]
        assert moments and all(m.abs().sum() > 0 for m in moments), p.name


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
    with pytest.raises(
        ValueError, match=r"problem 'low'.*second-order.*darts.*strategy='ddp'"
    ) as info:
        _second_order_program("fsdp", Config(type=kind))
    assert "'penalty'" in str(info.value) and "curvature='finite_difference'" in str(info.value)
    assert not dist.is_initialized()


def test_fsdp_rejects_second_order_methods_of_a_level_that_reads_the_sharded_level() -> None:
    """Three levels: the middle level's hop differentiates with respect to the sharded lowest
    level (its upper level in that hop), which second-order autograd cannot do."""
    middle = MIDDLE_CONFIGS["three_fsdp"]
    MIDDLE_CONFIGS["three_fsdp"] = Config(type="neumann", neumann_iterations=3, neumann_alpha=0.1)
    try:
        with pytest.raises(ValueError, match=r"problem 'weights'.*'neumann'.*second-order"):
            build("three_fsdp", 0, 1, "fsdp")
    finally:
        MIDDLE_CONFIGS["three_fsdp"] = middle
    assert not dist.is_initialized()


def test_fsdp_rejects_a_first_order_method_that_evaluates_its_own_loss() -> None:
    """stochastic with products from gradients is first-order, but its mini-batch loss is its
    own, which cannot evaluate sharded parameters (only the level's pure loss writes them)."""
    fd = {"curvature": FiniteDifference(), "mixed": MixedFiniteDifference()}
    method = stochastic(lambda w, lam, batch: w["weight"].sum(), lambda: None, **fd)
    assert method.first_order_only and not method.evaluates_inner
    with pytest.raises(ValueError, match=r"problem 'low'.*a loss of its own.*strategy='ddp'"):
        _second_order_program("fsdp", Config(hypergradient=method))
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    ("strategy", "options", "match"),
    [
        ("fsdp", {}, r"IterativeProblem.*cannot shard.*strategy='ddp'"),
        ("ddp", {"checkpoint_segments": "sqrt"}, r"checkpoint_segments.*strategy='ddp'"),
        ("zero", {"checkpoint_segments": 2}, r"checkpoint_segments.*strategy='zero'"),
    ],
)
def test_distributed_refuses_what_unrolled_levels_cannot_do(strategy, options, match) -> None:
    class Low(IterativeProblem):
        def training_step(self, batch):
            return self(torch.ones(1, 2)).pow(2).sum()

    class Up(ImplicitProblem):
        def training_step(self, batch):
            return self.low(torch.ones(1, 2)).sum()

    mods = [nn.Linear(2, 1), nn.Linear(2, 1)]
    up = Up("up", module=mods[0], optimizer=torch.optim.SGD(mods[0].parameters(), lr=0.1))
    low = Low(
        "low",
        module=mods[1],
        optimizer=torch.optim.SGD(mods[1].parameters(), lr=0.1),
        config=Config(**options),
    )
    deps = {"u2l": {up: [low]}, "l2u": {low: [up]}}
    with pytest.raises(ValueError, match=match):
        Engine([up, low], EngineConfig(strategy=strategy), deps)
    assert not dist.is_initialized()


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
    """After ``import ziggurat``, a group initialised by the user, then the first
    ``torch.optim`` optimizer and ZeRO's import: neither adds a reference to the group, so
    ``destroy_process_group`` frees it (without the guards in ``systems/_torch_guards.py`` torch
    2.13 adds eleven, and the leaked group's gloo threads abort some processes at exit). ZeRO's
    module is guarded by ``prepare_torch_distributed("zero")`` before ``init_process_group``
    (the engine calls it before creating its own group); the optimizer, by the import."""
    script = f"""
import sys
import torch, torch.distributed as dist
import ziggurat
# loaded only when a strategy asks for them
assert not [m for m in ("torch.distributed.optim", "torch.distributed.fsdp",
                        "torch.distributed.tensor") if m in sys.modules]
ziggurat.systems.prepare_torch_distributed("zero")
dist.init_process_group("gloo", init_method="file://{tmp_path / "init"}", rank=0, world_size=1)
before = sys.getrefcount(dist.group.WORLD)
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
from torch.distributed.optim import ZeroRedundancyOptimizer
print(sys.getrefcount(dist.group.WORLD) - before)
dist.destroy_process_group()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0"]


def test_without_the_zero_guard_its_import_pins_the_group(tmp_path) -> None:
    """The guard matters: ZeRO imported after the group exists adds a reference to it."""
    script = f"""
import sys
import torch.distributed as dist
import ziggurat
dist.init_process_group("gloo", init_method="file://{tmp_path / "init"}", rank=0, world_size=1)
before = sys.getrefcount(dist.group.WORLD)
from torch.distributed.optim import ZeroRedundancyOptimizer
print(sys.getrefcount(dist.group.WORLD) - before)
dist.destroy_process_group()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[0]) >= 1


FSDP_REFUSALS = """
import torch, torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem

class Up(ImplicitProblem):
    def training_step(self, batch):
        return self.low(torch.ones(1, 2)).sum()

class Low(ImplicitProblem):
    def training_step(self, batch):
        return (self.module(torch.ones(1, 2)) - self.up.module.weight.sum()).pow(2).sum()

def attempt(low_module, low_opt):
    up_module = nn.Linear(2, 1)
    up = Up("up", module=up_module, optimizer=torch.optim.SGD(up_module.parameters(), lr=0.1))
    low = Low("low", module=low_module, optimizer=low_opt, config=Config(type="darts"))
    try:
        Engine([up, low], EngineConfig(strategy="fsdp"), {"u2l": {up: [low]}, "l2u": {low: [up]}})
    except ValueError as err:
        print(err)

dist.init_process_group("gloo", init_method="file://INIT", rank=0, world_size=1)
blocks = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
fully_shard(blocks[0])
attempt(blocks, torch.optim.SGD(blocks.parameters(), lr=0.1))
used = nn.Linear(2, 1)
opt = torch.optim.Adam(used.parameters(), lr=0.1)
used(torch.ones(1, 2)).sum().backward()
opt.step()
attempt(used, opt)
dist.destroy_process_group()
"""


def test_fsdp_refuses_presharded_modules_and_optimizer_state(tmp_path) -> None:
    script = FSDP_REFUSALS.replace("INIT", str(tmp_path / "init"))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    assert "problem 'low'" in lines[0] and "already sharded with fully_shard" in lines[0]
    assert "problem 'low'" in lines[1] and "optimizer already holds state" in lines[1]
