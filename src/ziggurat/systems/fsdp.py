"""FSDP2 at the level of modules, optimizers and tensors (``EngineConfig(strategy="fsdp")``).

These helpers take modules, optimizers and trees, never a problem: the engine decides which
levels are sharded and rewires them (``ziggurat.engine._prepare``), and a problem keeps its
shards in its parameter store. ``torch.distributed``'s FSDP and DTensor modules are imported
inside the functions, so a program that never shards never loads them.

Checkpoints hold a sharded level's full (unsharded) state through ``torch.distributed.checkpoint``'s
state-dict API, so a file is the same as one written without sharding (DCP's own sharded file
format is not used: it reads its metadata with ``pickle``, and checkpoints here load with
``weights_only=True``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._types import Params


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a DTensor (a sharded parameter, gradient or optimizer state).

    Until something imported ``torch.distributed.tensor`` no tensor can be one, so a
    single-process program never pays for that import here.
    """
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def full(t: Tensor) -> Tensor:
    """``t``, or the whole of it when it is a DTensor (a collective; no host sync)."""
    return t.full_tensor() if is_sharded(t) else t  # type: ignore[attr-defined]


def check_shardable(module: nn.Module, optimizer: torch.optim.Optimizer, owner: str) -> None:
    """Refuse, before anything is sharded, a module FSDP2 cannot take as one unit and an
    optimizer whose state could not follow the parameters into their shards."""
    from torch.distributed.fsdp import FSDPModule

    if any(isinstance(m, FSDPModule) for m in module.modules()):
        raise ValueError(
            f"problem {owner!r}: its module is already sharded with fully_shard; "
            "strategy='fsdp' shards each lowest level's module itself, as one unit (see "
            "ziggurat.systems.fsdp). Pass the unsharded module"
        )
    if optimizer.state:
        raise ValueError(
            f"problem {owner!r}: its optimizer already holds state, which cannot be "
            "carried over to the FSDP2-sharded parameters; build the engine before training, "
            "or load a checkpoint after building it"
        )
    owned = {id(p) for p in module.parameters()}
    if any(id(p) not in owned for g in optimizer.param_groups for p in g["params"]):
        raise ValueError(
            f"problem {owner!r}: its optimizer updates a tensor that is not a parameter "
            "of its module, which strategy='fsdp' cannot shard; optimize module parameters only"
        )


def fully_shard_module(module: nn.Module) -> Params:
    """Shard ``module`` with FSDP2 as one unit; return its sharded parameters (DTensors) by name.

    Call :func:`check_shardable` first. Only a root unit gathers the current shards on every
    forward (see :func:`_gather_fresh`), hence one unit per level.
    """
    from torch.distributed.fsdp import fully_shard

    fully_shard(module)
    # ahead of FSDP2's own pre-forward hook: every forward gathers the current shards (see
    # _gather_fresh), so values written in place between forwards are always seen
    module.register_forward_pre_hook(_gather_fresh, prepend=True)
    return dict(module.named_parameters())


def rebuild_optimizer(
    optimizer: torch.optim.Optimizer, names: dict[int, str], live: Params
) -> torch.optim.Optimizer:
    """An optimizer of ``optimizer``'s class and param-group options over the tensors of
    ``live`` (the sharded parameters by name); ``names`` maps the old tensors' ids to names."""
    groups = [
        {**g, "params": [live[names[id(p)]] for p in g["params"]]} for g in optimizer.param_groups
    ]
    return type(optimizer)(groups, **optimizer.defaults)


def _gather_fresh(module: nn.Module, args: Any) -> None:
    """Drop the module's unsharded copy before a forward, so FSDP2 all-gathers anew.

    FSDP2 skips the all-gather when a module is still unsharded, as a root module stays
    after a forward whose backward never ran (a pure evaluation differentiated only with
    respect to an upper level's parameters). Pure evaluations write other values into the
    shards between such forwards (``Problem.swap_params``); without this the next forward
    would run on the previous values.

    A pure evaluation's own backward still sees the values of its forward, although the
    shards are written back before its gradient is taken: FSDP2 does not reshard a root
    module after its forward, so the backward uses the copy that forward gathered. That is
    why the engine shards each level as one root unit and refuses modules already sharded
    in blocks (those reshard after their forward and re-gather in backward).
    """
    reshard: Callable[[], None] = module.reshard  # type: ignore[assignment]
    reshard()


def repoint_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Point ``scheduler`` (and the schedulers it chains) at a rebuilt ``optimizer``."""
    if scheduler is None:
        return
    if hasattr(scheduler, "optimizer"):
        scheduler.optimizer = optimizer
    for inner in getattr(scheduler, "_schedulers", []):
        repoint_scheduler(inner, optimizer)


def full_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The unsharded module and optimizer state, on the CPU of rank 0 (a collective: every
    rank calls it; the others get empty dicts, so only the writer holds the full tensors)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {
        "module": get_model_state_dict(module, options=options),
        "optimizer": get_optimizer_state_dict(module, optimizer, options=options),
    }


def load_full_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Shard a full module and optimizer state (as :func:`full_state` returns) into place."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(module, state["module"], options=options)
    set_optimizer_state_dict(module, optimizer, state["optimizer"], options=options)


def gather(tree: Any) -> Any:
    """``tree`` with every DTensor replaced by its full tensor (a collective)."""
    from torch.distributed.tensor import DTensor

    return _map(tree, lambda t: t.full_tensor() if isinstance(t, DTensor) else t)


def _scatter(full: Tensor, like: Tensor) -> Tensor:
    """This rank's shard of ``full``, placed like the DTensor ``like`` (no communication:
    every rank holds ``full``)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor) or tuple(full.shape) != tuple(like.shape):
        return full
    local = full.to(like.device, like.dtype)
    return distribute_tensor(local, like.device_mesh, like.placements, src_data_rank=None)


def scatter_like(tree: dict[str, Tensor], like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Full tensors of ``tree`` cut into this rank's shards of the DTensors in ``like``."""
    return {k: _scatter(t, like[k]) for k, t in tree.items()}


def scatter_cache(
    module: nn.Module, optimizer: torch.optim.Optimizer, cache: dict[str, Any]
) -> dict[str, Any]:
    """A roll-back cache (module and optimizer ``state_dict``) of full tensors, re-sharded.

    The optimizer's per-parameter state is keyed by position in its param groups; entries
    shaped like their parameter (moments) are sharded like it, scalars (``step``) are kept.
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    opt = cache["optimizer"]
    state = {
        i: {k: _scatter(v, params[int(i)]) if isinstance(v, Tensor) else v for k, v in s.items()}
        for i, s in opt["state"].items()
    }
    module_state = scatter_like(cache["module"], module.state_dict())
    return {"module": module_state, "optimizer": {**opt, "state": state}}


def _map(tree: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map(v, fn) for v in tree)
    return tree
