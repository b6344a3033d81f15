"""Resolving and checking a level's components when the engine initialises it.

Each check takes what it reads as arguments and raises an error that names the level and the
fix, before training starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from ..configs import Config
from ._user_code import user_code

if TYPE_CHECKING:
    from ._problem import Problem


_RESERVED = frozenset(dir(object)) | {"engine", "module", "optimizer", "scheduler", "config"}


def check_construction(cls: type, name: object, config: object) -> None:
    """A level's name must be an identifier that no attribute shadows; its config a Config."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"problem name must be a Python identifier, got {name!r}")
    if name in _RESERVED or hasattr(cls, name):
        raise ValueError(
            f"problem name {name!r} clashes with an attribute of {cls.__name__}; "
            "choose another name"
        )
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"problem {name!r}: config must be a Config, got {type(config).__name__}")


def resolve(problem: Problem, overrides_step: bool) -> None:
    """Fill ``problem``'s missing components from its ``configure_*`` hooks, in Betty's order
    (the optimizer after the module has moved to the device), and check each one."""
    owner, device, precision = problem.name, problem.device, problem.config.precision
    assert device is not None
    if problem.module is None:
        with user_code(f"problem {owner!r}", "configure_module"):
            problem.module = problem.configure_module()
    require(owner, "module", problem.module, nn.Module, "an nn.Module")
    check_trainable(owner, problem.module)
    moved = move_module(problem.module, device)
    if problem.optimizer is None:
        with user_code(f"problem {owner!r}", "configure_optimizer"):
            problem.optimizer = problem.configure_optimizer()
    require(owner, "optimizer", problem.optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer")
    check_optimizer_holds_parameters(owner, problem.module, problem.optimizer, device, moved)
    if problem.scheduler is None:
        with user_code(f"problem {owner!r}", "configure_scheduler"):
            problem.scheduler = problem.configure_scheduler()
    check_scheduler_optimizer(owner, problem.scheduler, problem.optimizer)
    if problem.train_data_loader is None:
        with user_code(f"problem {owner!r}", "configure_train_data_loader"):
            problem.train_data_loader = problem.configure_train_data_loader()
    check_custom_step(owner, overrides_step, precision)
    check_precision(owner, precision, device)


def require(owner: str, what: str, value: Any, kind: type, kind_name: str) -> None:
    """``value`` (from ``what=`` or ``configure_<what>()``) must be given and a ``kind``."""
    if value is None:
        raise ValueError(
            f"problem {owner!r} has no {what}: pass {what}= or define configure_{what}()"
        )
    if not isinstance(value, kind):
        raise TypeError(
            f"problem {owner!r}: got {type(value).__name__} as its {what}; expected "
            f"{kind_name} (from {what}= or configure_{what}())"
        )


def check_trainable(owner: str, module: nn.Module) -> None:
    """A level trains its module's parameters with ``requires_grad=True``: it needs one."""
    if any(p.requires_grad for p in module.parameters()):
        return
    count = sum(1 for _ in module.parameters())
    held = f"has {count} parameter(s), none with requires_grad=True" if count else "has none"
    raise ValueError(
        f"problem {owner!r} has no trainable parameter: its module ({type(module).__name__}) "
        f"{held}, so the level would never change. Give it a trainable parameter, or drop the "
        "level and call the fixed function from the training_step of the level that reads it"
    )


def check_scheduler_optimizer(owner: str, scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    """A scheduler changes the learning rates of the optimizer it was built on; built on
    another one, the level's learning rate would never change.

    Betty rebuilt every scheduler over its rebuilt optimizer by reflection; ziggurat uses the
    user's optimizer and scheduler as given, so it refuses the pairing instead of repairing it
    (a scheduler's base learning rates come from the optimizer it was built on). Chained
    schedulers (``SequentialLR``, ``ChainedScheduler``) check their parts share one optimizer,
    which they expose as theirs; a scheduler of another kind is not checked.
    """
    if not isinstance(scheduler, LRScheduler) or scheduler.optimizer is optimizer:
        return
    raise ValueError(
        f"problem {owner!r}: its scheduler ({type(scheduler).__name__}) was built on another "
        f"optimizer ({type(scheduler.optimizer).__name__}) than the level's "
        f"({type(optimizer).__name__}), so the level's learning rate would never change. "
        "Build the scheduler on the level's optimizer: in configure_scheduler() use "
        "self.optimizer, or pass the same optimizer object as optimizer= and to the scheduler"
    )


def move_module(module: nn.Module, device: torch.device) -> bool:
    """Move ``module`` to ``device``; whether that replaced its parameter tensors."""
    before = {id(p) for p in module.parameters()}
    module.to(device)
    return {id(p) for p in module.parameters()} != before


def check_optimizer_holds_parameters(
    owner: str,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    replaced: bool,
) -> None:
    """Every trainable parameter of the module must be in the optimizer.

    A level's gradients (direct and hypergradient) are written on every trainable parameter,
    and its hops differentiate through all of them; one the optimizer does not hold would never
    be cleared or stepped by it (its ``.grad`` would grow without bound and enter clipping) or,
    in an unrolled level, would still be updated. ``replaced``: moving the module to ``device``
    replaced its parameter tensors.
    """
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [k for k, p in module.named_parameters() if p.requires_grad and id(p) not in held]
    if missing and replaced:
        raise ValueError(
            f"problem {owner!r}: moving its module to {device} replaced its "
            "parameter tensors (module.to does so between incompatible tensor types), so "
            "its optimizer holds the old ones; build the optimizer in configure_optimizer(), "
            "which runs after the move, or move the module before building the optimizer"
        )
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            f"problem {owner!r}: {len(missing)} trainable parameter(s) of its module are "
            f"not in its optimizer ({shown}); a level trains and differentiates through "
            "every parameter with requires_grad=True. Add them to the optimizer, or freeze "
            "them with requires_grad_(False) before building the engine"
        )


def check_custom_step(owner: str, overridden: bool, precision: str) -> None:
    """An overridden ``custom_optimizer_step`` cannot take fp16's GradScaler step."""
    if overridden and precision == "fp16":
        raise ValueError(
            f"problem {owner!r} overrides custom_optimizer_step, which cannot be "
            "combined with precision='fp16': the GradScaler must take the step itself, to "
            "skip it when the unscaled gradients are not finite. Use precision='bf16' or "
            "'fp32', or remove the override"
        )


def check_precision(owner: str, precision: str, device: torch.device) -> None:
    """fp16 needs CUDA (its GradScaler)."""
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"problem {owner!r}: precision='fp16' needs a CUDA device (GradScaler); "
            f"this problem runs on {device.type}. Use precision='bf16' or 'fp32'"
        )
