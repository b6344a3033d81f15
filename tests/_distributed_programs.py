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
from torch.distributed.tensor import DTensor

from ziggurat import Engine, mixed_vjp_fd
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import NO_CONTEXT, HopContext, HopInfo, HopResult, Method
from ziggurat.problems import ImplicitProblem, IterativeProblem

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
    noise = 0.0  # a per-rank random target perturbation, for checkpoint tests of the RNG
    scale_inputs = False  # the upper level also scales the inputs (its gradient crosses us)

    def training_step(self, batch: Any) -> torch.Tensor:
        x, y = batch
        if self.noise:
            y = y + self.noise * torch.randn_like(y)
        weight = torch.sigmoid(self.weights(x)).squeeze(-1)
        if self.scale_inputs:
            x = x * torch.exp(self.weights.module.weight)
        residual = self.module(x).squeeze(-1) - y
        decay = 0.05
        reg = self.engine.problem_by_name("reg")
        if reg is not None:  # three levels: the top level also sets this level's decay
            decay = decay * torch.exp(reg.module.weight.sum())
        # read after the forward: an FSDP2-sharded module holds its full parameters then
        weights = (p for n, p in self.module.named_parameters() if n.endswith("weight"))
        return (weight * residual.pow(2)).mean() + decay * sum(w.pow(2).sum() for w in weights)


class UnrolledLower(IterativeProblem):
    """``Lower``'s loss, differentiated through its unrolled inner loop."""

    def training_step(self, batch: Any) -> torch.Tensor:
        x, y = batch
        weight = torch.sigmoid(self.weights(x)).squeeze(-1)
        residual = self(x).squeeze(-1) - y
        return (weight * residual.pow(2)).mean() + 0.05 * self.params["weight"].pow(2).sum()


class UnrolledModuleLower(IterativeProblem):
    """``UnrolledLower``'s loss, reading its weights through ``self.module`` as Betty's
    ``HigherIterativeProblem`` programs do."""

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
        x, y = batch  # reads the level directly below it (Betty's path semantics)
        return (torch.sigmoid(self.weights(x)).squeeze(-1) - 0.5 - 0.1 * y).pow(2).mean()


def _linear(seed: int, n_in: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, 1, bias=n_in > 1).to(D)


def _mlp(seed: int) -> nn.Module:
    """A lower model wide enough that both ranks hold part of every FSDP2-sharded tensor."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 6), nn.Tanh(), nn.Linear(6, 2), nn.Linear(2, 1)).to(D)


class HalfStepDarts(Method):
    """A user's own method: DARTS with ``H^{-1} ~ I / 2``, by central finite differences. It
    declares that it needs only first-order autograd, so FSDP2 may shard its level."""

    @property
    def name(self) -> str:
        return "half_step_darts"

    @property
    def first_order_only(self) -> bool:
        return True

    @property
    def finite_differences(self) -> bool:
        return True

    def __call__(self, inner, w, lam, v, context: HopContext = NO_CONTEXT) -> HopResult:
        half = {k: -0.5 * t for k, t in v.items()}
        return HopResult(mixed_vjp_fd(inner, w, lam, half, 0.01), HopInfo(self.name))


LOWER_CONFIGS = {
    "darts": Config(type="darts", darts_alpha=0.01, unroll_steps=2),
    "cg": Config(type="cg", cg_iterations=DIM + 1, unroll_steps=2),
    "three": Config(type="cg", cg_iterations=DIM + 1, unroll_steps=2),
    "accum": Config(type="cg", cg_iterations=DIM + 1, unroll_steps=2, gradient_accumulation=2),
    "sama": Config(type="sama", unroll_steps=2),
    "ckpt": Config(type="darts", darts_alpha=0.01, unroll_steps=2, gradient_accumulation=2),
    "plateau": Config(type="darts", darts_alpha=0.01, unroll_steps=2),
    "rollback": Config(type="cg", cg_iterations=DIM + 1, unroll_steps=2),
    # first-order lowest levels, for strategy="fsdp" (which shards them)
    "wide": Config(type="darts", darts_alpha=0.01, unroll_steps=2),
    "inputs": Config(type="darts", darts_alpha=0.01, unroll_steps=2),
    "first_order": Config(type="first_order", unroll_steps=2),
    "custom": Config(hypergradient=HalfStepDarts(), unroll_steps=2),
    "three_fsdp": Config(type="darts", darts_alpha=0.01, unroll_steps=2),
    "rollback_fsdp": Config(type="sama", unroll_steps=2),
    "ckpt_rollback": Config(type="sama", unroll_steps=2),
    # gradients only (finite differences in w); an explicit eps for the penalty method, whose
    # default (sqrt(eps_mach)) would amplify the all-reduce's rounding to about 1e-10
    "cg_fd": Config(type="cg", curvature="finite_difference", cg_iterations=8, unroll_steps=2),
    # a dense solve: the sharded products are gathered into columns and cut back into shards
    "exact_fd": Config(type="exact", curvature="finite_difference", unroll_steps=2),
    "penalty": Config(
        type="penalty", penalty_steps=8, penalty_step=0.1, penalty_epsilon=1e-4, unroll_steps=2
    ),
    # an IterativeProblem: three unrolled SGD-momentum steps per upper step, clipped
    "unrolled": Config(unroll_steps=3, gradient_clipping=0.5),
    "unrolled_module": Config(unroll_steps=3, gradient_clipping=0.5),
    "early": Config(type="darts", darts_alpha=0.01),
    # the method chosen by measurement; under FSDP2 it may take gradients only, as it does on
    # one process with curvature="finite_difference"
    "auto": Config(type="auto", target_error=1e-2, auto_interval=3, unroll_steps=2),
    "auto_fd": Config(
        type="auto",
        target_error=1e-2,
        auto_interval=3,
        unroll_steps=2,
        curvature="finite_difference",
    ),
}
THREE_LEVELS = ("three", "three_fsdp")
# the middle level's hop reads the sharded lowest level (its upper level in that hop): under
# FSDP2 its method must need only first-order autograd (neumann there is refused), and its
# gradient in the shards goes through problems/_sharded_loss (darts' mixed product reads it)
MIDDLE_CONFIGS = {"three_fsdp": Config(type="darts", darts_alpha=0.01)}


class EpochLoader(list):
    """Batches that record the epochs set on them (the protocol of a ``DistributedSampler``)."""

    def __init__(self, batches: list[Any]) -> None:
        super().__init__(batches)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


class RankZeroValidation(Engine):
    """Validation that must run on rank 0 only; its loss improves until step 8, then worsens."""

    def validation(self) -> dict[str, float]:
        rank = dist.get_rank() if dist.is_initialized() else 0
        assert rank == 0, f"validation ran on rank {rank}"
        return {"loss": 1.0 / self.global_step if self.global_step <= 8 else 2.0}


class FlatValidation(Engine):
    """A validation metric that never improves: ReduceLROnPlateau halves the rate each time."""

    def validation(self) -> dict[str, float]:
        return {"loss": 1.0}


def build(
    program: str,
    rank: int,
    world: int,
    strategy: str,
    train_iters: int = 2 * STEPS,
    **engine_options: Any,
) -> Engine:
    """``program``: a key of ``LOWER_CONFIGS``; ``three`` puts ``reg`` above ``weights``.

    ``accum`` accumulates two micro-batches per lower update; ``sama`` preconditions with the
    lower level's Adam state; ``ckpt`` accumulates and perturbs the lower targets with noise
    drawn from each rank's RNG.
    """
    wide = ("wide", "inputs", "three_fsdp", "first_order", "cg_fd", "exact_fd", "penalty")
    wide += ("auto", "auto_fd")
    low_mod = _mlp(1) if program in wide else _linear(1, DIM)
    w_mod = _linear(2, DIM)
    low_opt: torch.optim.Optimizer = (
        torch.optim.Adam(low_mod.parameters(), lr=0.05)
        if program in ("sama", "rollback_fsdp", "ckpt_rollback")
        else torch.optim.SGD(low_mod.parameters(), lr=0.1, momentum=0.5)
    )
    lower_class = {"unrolled": UnrolledLower, "unrolled_module": UnrolledModuleLower}
    lower = lower_class.get(program, Lower)(
        name="lower",
        module=low_mod,
        optimizer=low_opt,
        train_data_loader=EpochLoader(shards(10, rank, world)),
        config=LOWER_CONFIGS[program],
    )
    if isinstance(lower, Lower):
        lower.noise = 0.05 if program.startswith("ckpt") else 0.0
        lower.scale_inputs = program == "inputs"
    weights = Weights(
        name="weights",
        module=w_mod,
        optimizer=torch.optim.Adam(w_mod.parameters(), lr=0.05),
        train_data_loader=shards(11, rank, world),
        config=MIDDLE_CONFIGS.get(program, Config(type="darts", darts_alpha=0.01)),
    )
    problems = [lower, weights]
    deps: dict[str, Any] = {"u2l": {weights: [lower]}, "l2u": {lower: [weights]}}
    engine_class = Engine
    if program == "plateau":  # validation on rank 0 must step the scheduler on every rank
        weights.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            weights.optimizer, factor=0.5, patience=0
        )
        engine_options.setdefault("valid_step", 2)
        engine_class = FlatValidation
    if program == "early":  # rank 0 validates, every rank must stop at the same step
        engine_options.update(valid_step=2, early_stopping=True, early_stopping_tolerance=1)
        engine_class = RankZeroValidation
    if program in THREE_LEVELS:
        r_mod = _linear(3, 1)
        reg = Reg(
            name="reg",
            module=r_mod,
            optimizer=torch.optim.SGD(r_mod.parameters(), lr=1.0),
            train_data_loader=shards(12, rank, world),
        )
        problems.append(reg)
        deps = {
            "u2l": {reg: [weights, lower], weights: [lower]},
            "l2u": {lower: [weights], weights: [reg]},
        }
    if "rollback" in program:  # the lower level restores its (sharded) optimizer state
        engine_options.setdefault("roll_back", True)
    engine_options.setdefault("valid_step", 0)
    config = EngineConfig(train_iters=train_iters, strategy=strategy, **engine_options)
    return engine_class(problems=problems, config=config, dependencies=deps)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain copy of ``t``; an FSDP2 shard (DTensor) is gathered first (a collective)."""
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def sharded_numel(engine: Engine) -> dict[str, tuple[int, int]]:
    """Per sharded problem: (elements this rank holds, elements in all)."""
    return {
        p.name: (
            sum(t.to_local().numel() for t in p.named_trainable_parameters().values()),
            sum(t.numel() for t in p.named_trainable_parameters().values()),
        )
        for p in engine.problems
        if p.sharded
    }


def parameters(engine: Engine) -> dict[str, torch.Tensor]:
    return {
        f"{p.name}.{k}": _full(t) for p in engine.problems for k, t in p.module.state_dict().items()
    }


def tensors(engine: Engine) -> dict[str, torch.Tensor]:
    """Parameters, buffers and this rank's optimizer state (its shard under ZeRO), by name."""
    out = parameters(engine)
    for p in engine.problems:
        local = getattr(p.optimizer, "optim", p.optimizer)  # ZeRO keeps its shard in .optim
        for k, param in p.named_trainable_parameters().items():
            for name, v in local.state.get(param, {}).items():
                out[f"{p.name}.opt.{k}.{name}"] = _full(torch.as_tensor(v))
    return out


def decisions(engine: Engine) -> list[tuple[int, str, str, str]]:
    """(step, hop, chosen method, products) of every ``auto`` decision of the run."""
    out = []
    for p in engine.problems:
        out += [(s, h, d.chosen.label, d.products) for s, h, d in p.decisions]
    return out


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
        results: dict[Any, Any] = {}
        for program, strategy in jobs:
            engine = build(program, rank, world, strategy)
            engine.run()
            results[(program, strategy)] = parameters(engine)
            results[("numel", program, strategy)] = sharded_numel(engine)
            results[("decisions", program, strategy)] = decisions(engine)
        early = build("early", rank, world, "ddp", train_iters=20)
        early.run()
        epochs = early.lower._loaders[0].loader.epochs
        results["early"] = (early.global_step, early.stopped_early, list(epochs))
        logged = build(
            "darts", rank, world, "ddp", logger_type="tensorboard", log_dir=out, run_name="tb"
        )
        logged.run()  # only rank 0 may write event files
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


CHECKPOINT_RUNS = (("ddp", "ckpt"), ("zero", "ckpt"), ("fsdp", "ckpt"), ("fsdp", "ckpt_rollback"))
"""(strategy, program) pairs of the checkpoint test; ``ckpt_rollback`` saves with a roll-back
cache open (sharded Adam state included)."""


def checkpoint_worker(
    rank: int, world: int, init_file: str, phase: str, steps: int, out: str
) -> None:
    """One rank of a checkpoint test (each of :data:`CHECKPOINT_RUNS`, ``steps`` iterations).

    ``phase="first"``: run ``steps`` iterations uninterrupted (tensors to
    ``out/whole-{strategy}-{program}-rank{rank}.pt``) and, in new engines, ``steps // 2``
    iterations that checkpoint: DDP and FSDP2 through ``checkpoint_dir``, ZeRO through
    ``Engine.save``. ``phase="second"`` (a new world): new engines resume -- DDP and FSDP2 with
    ``resume=True``, ZeRO with ``Engine.load`` -- run to ``steps`` and save tensors to
    ``out/resumed-...``. Every rank reseeds its RNG differently after building, so only
    per-rank RNG restoration is exact.
    """
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for strategy, program in CHECKPOINT_RUNS:
            _checkpoint_phase(phase, strategy, program, rank, world, steps, out)
    finally:
        dist.destroy_process_group()


def _checkpoint_phase(
    phase: str, strategy: str, program: str, rank: int, world: int, steps: int, out: str
) -> None:
    ckpt_dir = os.path.join(out, f"ckpt-{strategy}-{program}")
    periodic = {"checkpoint_dir": ckpt_dir} if strategy != "zero" else {}
    every = {"checkpoint_step": steps // 2, **periodic} if periodic else {}
    name = f"{strategy}-{program}-rank{rank}.pt"
    if phase == "first":
        whole = build(program, rank, world, strategy, steps)
        torch.manual_seed(1000 + rank)
        whole.run()
        torch.save(tensors(whole), os.path.join(out, f"whole-{name}"))
        half = build(program, rank, world, strategy, steps // 2, **every)
        torch.manual_seed(1000 + rank)
        half.run()
        if strategy == "zero":
            half.save(os.path.join(ckpt_dir, "half.pt"))
        return
    resumed = build(program, rank, world, strategy, steps, resume=strategy != "zero", **periodic)
    torch.manual_seed(2000 + rank)  # overwritten by the checkpoint's RNG state
    if strategy == "zero":
        resumed.load(os.path.join(ckpt_dir, "half.pt"))
    resumed.run()
    torch.save(tensors(resumed), os.path.join(out, f"resumed-{name}"))
