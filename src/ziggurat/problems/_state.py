"""A level's checkpoint entry: how ``Problem.checkpoint_state``, ``check_checkpoint_state``
and ``load_checkpoint_state`` build, check and restore it from the level's parts (its clock,
hop memory, loaders, module, optimizer and scheduler). The engine only assembles the levels'
entries into a file (``ziggurat.engine._checkpoint``).

The entry's keys and their order are the checkpoint format (version 2); an
``IterativeProblem`` fills ``iterative`` and leaves ``cache`` and ``grads`` empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._types import Params
from ..systems import fsdp as _fsdp
from ._data import to_device

if TYPE_CHECKING:
    from ._problem import Problem

gather = _fsdp.gather

RANK_KEYS = ("loaders", "grads", "window")
"""Entries of a level's state that differ between data-parallel ranks."""


def grads_of(params: Params) -> dict[str, Tensor]:
    """Copies of the gradients written so far (an open accumulation window's)."""
    return {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}


def module_and_optimizer(
    module: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool
) -> dict[str, Any]:
    """Module and optimizer ``state_dict``; full tensors for a sharded level (a collective),
    so the file is the same as an unsharded run's."""
    if sharded:
        return _fsdp.full_state(module, optimizer)
    return {"module": module.state_dict(), "optimizer": optimizer.state_dict()}


def load_module_and_optimizer(
    module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], sharded: bool
) -> None:
    if sharded:
        _fsdp.load_full_state(module, optimizer, state)
    else:
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])


def scheduler_name(scheduler: Any) -> str | None:
    """The scheduler's class, with the classes it chains (``SequentialLR(LinearLR, StepLR)``)."""
    if scheduler is None:
        return None
    inner = getattr(scheduler, "_schedulers", None)
    name = type(scheduler).__name__
    if isinstance(inner, (list, tuple)) and inner:
        return f"{name}({', '.join(type(s).__name__ for s in inner)})"
    return name


def layout(
    optimizer: torch.optim.Optimizer, own_optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """What a checkpoint's optimizer and scheduler state only fits: their classes and each
    param group's option names (a state of one optimizer loads into another silently)."""
    return {
        "optimizer": type(own_optimizer).__name__,
        "group_options": [
            sorted(k for k in g if k not in ("params", "initial_lr"))
            for g in optimizer.param_groups
        ],
        "scheduler": scheduler_name(scheduler),
    }


def check_layout(where: str, saved: dict[str, Any], live: dict[str, Any]) -> None:
    fix = "build the engine with the optimizer and scheduler the checkpoint was saved with"
    if saved["optimizer"] != live["optimizer"]:
        raise ValueError(
            f"{where}: saved with optimizer {saved['optimizer']}, this engine has "
            f"{live['optimizer']}; {fix}"
        )
    if saved["group_options"] != live["group_options"]:
        raise ValueError(
            f"{where}: the optimizer's param group options differ (saved "
            f"{saved['group_options']}, this engine has {live['group_options']}); {fix}"
        )
    if saved["scheduler"] != live["scheduler"]:
        raise ValueError(
            f"{where}: saved with scheduler {saved['scheduler']}, this engine has "
            f"{live['scheduler']}; {fix}"
        )


def _shapes(tree: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tree.items() if isinstance(v, Tensor)}


def check_module(where: str, saved: dict[str, Any], module: nn.Module) -> None:
    saved_shapes, live = _shapes(saved), _shapes(module.state_dict())
    if saved_shapes != live:
        diff = sorted(
            k for k in saved_shapes.keys() | live.keys() if saved_shapes.get(k) != live.get(k)
        )
        shown = ", ".join(f"{k}: saved {saved_shapes.get(k)}, now {live.get(k)}" for k in diff[:5])
        raise ValueError(
            f"{where}: parameter names or shapes differ ({diff[:5]}; {shown}); build the "
            "module the checkpoint was saved with"
        )


def check_tree(where: str, what: str, saved: dict[str, Any], params: Params) -> None:
    """``saved`` (gradients, a warm start, unrolled parameters) must name some of ``params``,
    each with its shape: loading it would otherwise fail, or break the next step, after the
    engine had changed."""
    unknown = sorted(set(saved) - set(params))
    if unknown:
        raise ValueError(
            f"{where}: the saved {what} name tensors this level does not have ({unknown[:5]}; "
            f"it has {sorted(params)[:5]}); build the module the checkpoint was saved with"
        )
    wrong = [
        f"{k}: saved {tuple(t.shape)}, now {tuple(params[k].shape)}"
        for k, t in saved.items()
        if isinstance(t, Tensor) and tuple(t.shape) != tuple(params[k].shape)
    ]
    if wrong:
        raise ValueError(
            f"{where}: the saved {what} have other shapes than this level's parameters "
            f"({'; '.join(wrong[:5])}); build the module the checkpoint was saved with"
        )


def check_hop_memory(where: str, state: dict[str, Any], params: Params) -> None:
    """Gradients of the open window and of the last update, and each hop's warm start."""
    check_tree(where, "gradients", state["grads"], params)
    if state["last_grads"] is not None:
        check_tree(where, "last-update gradients", state["last_grads"], params)
    for key, start in state["warm_starts"]:
        check_tree(where, f"warm start of hop {tuple(key)}", start, params)


def check_iterative(where: str, saved: dict[str, Any] | None, params: Params) -> None:
    """An ``IterativeProblem``'s unrolled state: exactly its parameters, with their shapes."""
    if saved is None:
        return
    names = sorted(saved["params"])
    if names != sorted(params):
        raise ValueError(
            f"{where}: the saved unrolled parameters {names[:5]} are not this level's "
            f"{sorted(params)[:5]}; build the module the checkpoint was saved with"
        )
    check_tree(where, "unrolled parameters", saved["params"], params)
    for buffer, tree in saved["opt_buffers"].items():
        check_tree(where, f"optimizer buffers {buffer!r}", tree, params)
    if saved["pending"] is not None:
        check_tree(where, "pending gradients", saved["pending"], params)


def check_window(where: str, state: dict[str, Any], accumulation: int) -> None:
    """An open accumulation window continues only under the accumulation it was saved with
    (its gradients were divided by that count)."""
    saved = state["config"]["gradient_accumulation"]
    if state["window"] and saved != accumulation:
        raise ValueError(
            f"{where}: saved inside a gradient-accumulation window ({len(state['window'])} of "
            f"{saved} batches), this level has gradient_accumulation={accumulation}; resume "
            f"with gradient_accumulation={saved}, or from a checkpoint at an update boundary"
        )


def check_groups(where: str, saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    groups = [len(g["params"]) for g in saved["param_groups"]]
    if groups != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(f"{where}: optimizer parameter groups differ")


def check_lowers(where: str, saved: list[str], live: list[str]) -> None:
    if saved != live:
        raise ValueError(
            f"{where}: saved with lower levels {saved}, this engine gives it {live}; build the "
            "engine with the dependencies in force when it was saved (or call set_dependency "
            "with them before load)"
        )


def sharded_entries(
    state: dict[str, Any], params: Params, module: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """``state``'s full tensors of parameter-shaped entries cut into this rank's shards."""
    out = dict(state)
    out["grads"] = _fsdp.scatter_like(state["grads"], params)
    if state["last_grads"] is not None:
        out["last_grads"] = _fsdp.scatter_like(state["last_grads"], params)
    out["warm_starts"] = [[k, _fsdp.scatter_like(v, params)] for k, v in state["warm_starts"]]
    if state["cache"] is not None:
        out["cache"] = _fsdp.scatter_cache(module, optimizer, state["cache"])
    return out


def entry(problem: Problem) -> dict[str, Any]:
    """``problem``'s entry: a collective for a sharded level (full tensors)."""
    clock, hops = problem._clock.state(), problem._hops.state()
    optimizer, scheduler, scaler = problem.optimizer, problem.scheduler, problem.scaler
    state = {
        "kind": type(problem).__name__,
        "layout": layout(optimizer, problem._own_optimizer(), scheduler),
        **module_and_optimizer(problem.module, optimizer, problem.sharded),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "count": clock["count"],
        "global_step": clock["global_step"],
        "ready": dict(problem.ready),
        "inner_loop_start": clock["inner_loop_start"],
        "last_grads": hops["last_grads"],
        "cache": problem._cache,
        "warm_starts": hops["warm_starts"],
        "config": problem.config.to_dict(),
        "iterative": None,
        **rank_entries(problem),
    }
    if hops["method_states"]:  # only with a stateful method (auto): older files stay as they were
        state["method_states"] = hops["method_states"]
    return gather(state) if problem.sharded else state


def rank_entries(problem: Problem) -> dict[str, Any]:
    """The entries that differ between data-parallel ranks (:data:`RANK_KEYS`)."""
    grads = problem.written_gradients()
    return {
        "loaders": problem._loaders.state(),
        "grads": gather(grads) if problem.sharded else grads,
        "window": problem._clock.state()["window"],
    }


ENTRY_KEYS = (
    "kind",
    "layout",
    "module",
    "optimizer",
    "scheduler",
    "scaler",
    "count",
    "global_step",
    "ready",
    "inner_loop_start",
    "last_grads",
    "cache",
    "warm_starts",
    "config",
    "iterative",
    *RANK_KEYS,
)
"""The keys of a level's entry (format version 2). ``method_states`` (the state of stateful
methods per hop, ``auto``'s decisions) was added later and may be absent."""


def check_entry(problem: Problem, state: dict[str, Any], where: str) -> None:
    """``ValueError`` unless ``state`` fits ``problem``, before anything changes: every
    mismatch that loading it would hit, or that would break the next step."""
    missing = [k for k in ENTRY_KEYS if k not in state]
    if missing:
        raise ValueError(f"{where}: the entry lacks {missing}; it is damaged or hand-edited")
    if state["kind"] != type(problem).__name__:
        raise ValueError(f"{where}: saved as {state['kind']}, now {type(problem).__name__}")
    check_module(where, state["module"], problem.module)
    live = layout(problem.optimizer, problem._own_optimizer(), problem.scheduler)
    check_layout(where, state["layout"], live)
    check_groups(where, state["optimizer"], problem.optimizer)
    problem._loaders.check(state["loaders"], where)
    check_lowers(where, sorted(state["ready"]), sorted(c.name for c in problem.children))
    params = problem.named_trainable_parameters()
    check_hop_memory(where, state, params)
    if state["cache"] is not None:
        check_module(f"{where}, roll-back cache", state["cache"]["module"], problem.module)
    check_iterative(where, state["iterative"], params)
    check_window(where, state, problem.config.gradient_accumulation)


def load_entry(problem: Problem, state: dict[str, Any]) -> None:
    """Restore a checked entry, except its data loaders' positions (``Problem.load_data_state``
    restores those first, so that a loader which cannot reach its position changes nothing)."""
    state = {
        k: v if k in ("module", "optimizer") else to_device(v, problem.device)
        for k, v in state.items()
    }
    module, optimizer = problem.module, problem.optimizer
    load_module_and_optimizer(module, optimizer, state, problem.sharded)
    if problem.sharded:
        state = sharded_entries(state, problem.named_trainable_parameters(), module, optimizer)
    if problem.scheduler is not None:
        problem.scheduler.load_state_dict(state["scheduler"])
    if problem.scaler is not None and state["scaler"] is not None:
        problem.scaler.load_state_dict(state["scaler"])
    problem._clock.load(state)
    problem.ready = dict(state["ready"])
    problem._hops.load(state)
    problem._cache = state["cache"]
    for k, p in problem.named_trainable_parameters().items():
        p.grad = state["grads"][k].clone() if k in state["grads"] else None
