"""FSDP2 sharding of the lowest levels (``EngineConfig(strategy="fsdp")``).

Which levels are sharded: every *leaf* (a level with no lower levels). A leaf is never the
upper level of a hop, so no hypergradient needs derivatives with respect to its parameters
through a pure loss, and its own hop method (when it has upper levels) must be first-order:
second-order autograd does not pass through sharded parameters. Levels above the leaves are
replicated, as under ``strategy="ddp"``, and may use any method.

What changes for a sharded level:

* its module is ``fully_shard``-ed as one unit (a module already sharded is refused) and its
  optimizer is rebuilt over the sharded parameters with the same class and param-group
  options (schedulers are re-pointed at it); every forward all-gathers the current shards;
* gradients reach it through ``loss.backward()`` (see ``problems/_hypergrad._backward``) and are
  averaged over ranks by FSDP2's reduce-scatter, so the group's own gradient average skips them;
* pure evaluations overwrite its parameter values in place (``Problem.swap_params``);
* checkpoints hold its full (unsharded) state through ``torch.distributed.checkpoint``'s
  state-dict API, so a file is the same as one written without sharding (DCP's own sharded
  file format is not used: it reads its metadata with ``pickle``, and checkpoints here load
  with ``weights_only=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..problems import Problem


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a DTensor (a sharded parameter, gradient or optimizer state)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def shard(problem: Problem) -> None:
    """Shard ``problem``'s module with FSDP2 and rebuild its optimizer over the shards."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    module, opt = problem.module, problem.optimizer
    assert module is not None and opt is not None
    if any(isinstance(m, FSDPModule) for m in module.modules()):
        raise ValueError(
            f"problem {problem.name!r}: its module is already sharded with fully_shard; "
            "strategy='fsdp' shards each lowest level's module itself, as one unit (see "
            "ziggurat.engine._sharding). Pass the unsharded module"
        )
    names = {id(p): k for k, p in module.named_parameters()}
    fully_shard(module)
    assert isinstance(module, FSDPModule)
    # ahead of FSDP2's own pre-forward hook: every forward gathers the current shards (see
    # _gather_fresh), so values written in place between forwards are always seen
    module.register_forward_pre_hook(_gather_fresh, prepend=True)
    live: dict[str, Tensor] = dict(module.named_parameters())
    problem.use_shards(live)
    if opt.state:
        raise ValueError(
            f"problem {problem.name!r}: its optimizer already holds state, which cannot be "
            "carried over to the FSDP2-sharded parameters; build the engine before training, "
            "or load a checkpoint after building it"
        )
    groups = [
        {**g, "params": [live[_name(names, p, problem)] for p in g["params"]]}
        for g in opt.param_groups
    ]
    problem.optimizer = type(opt)(groups, **opt.defaults)
    repoint_scheduler(problem.scheduler, problem.optimizer)


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


def _name(names: dict[int, str], p: Tensor, problem: Problem) -> str:
    if id(p) not in names:
        raise ValueError(
            f"problem {problem.name!r}: its optimizer updates a tensor that is not a parameter "
            "of its module, which strategy='fsdp' cannot shard; optimize module parameters only"
        )
    return names[id(p)]


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


def scatter_cache(problem: Problem, cache: dict[str, Any]) -> dict[str, Any]:
    """A roll-back cache (module and optimizer ``state_dict``) of full tensors, re-sharded.

    The optimizer's per-parameter state is keyed by position in its param groups; entries
    shaped like their parameter (moments) are sharded like it, scalars (``step``) are kept.
    """
    assert problem.module is not None and problem.optimizer is not None
    params = [p for g in problem.optimizer.param_groups for p in g["params"]]
    opt = cache["optimizer"]
    state = {
        i: {k: _scatter(v, params[int(i)]) if isinstance(v, Tensor) else v for k, v in s.items()}
        for i, s in opt["state"].items()
    }
    module = scatter_like(cache["module"], problem.module.state_dict())
    return {"module": module, "optimizer": {**opt, "state": state}}


def _map(tree: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map(v, fn) for v in tree)
    return tree
