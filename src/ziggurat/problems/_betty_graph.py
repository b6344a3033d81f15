"""Betty's ``Problem`` members for wiring a level into a program and replacing its components,
and the table of Betty's members that have no counterpart here.

``add_child``, ``add_parent`` and ``add_paths`` are what the engine wires a level with
(``engine/_wiring.py``), so calling them by hand means what it means to the engine. The
``set_*`` setters replace a component: before the engine has initialised the level they only
assign it (the engine checks it then, as a constructor argument); afterwards the loaders and
the scheduler can be replaced, while the module and the optimizer cannot, since the engine has
prepared the other levels, the hops and the optimizer state around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.optim import Optimizer

from ._data import Loaders

if TYPE_CHECKING:
    from ._problem import Problem
    from ._runtime import Runtime

NOT_PROVIDED: dict[str, str] = {
    "accelerator": "strategy='accelerate' is refused; run with torchrun and "
    "EngineConfig(strategy='ddp', 'zero' or 'fsdp')",
    "add_logger": "the engine's logger is Problem.logger; choose it with "
    "EngineConfig(logger_type=...)",
    "backward": "the step computes the gradients (direct and hypergradients) and writes them "
    "in one place; read or change them in grad_callback()",
    "configure_device": "pass device= to the constructor, or let the engine place the level",
    "configure_distributed_training": "the engine sets up EngineConfig(strategy=...)",
    "configure_roll_back": "use EngineConfig(roll_back=True)",
    "epoch_callback_exec": "override epoch_callback(); the level calls it when its first "
    "loader starts a new epoch",
    "get_batch_single_loader": "use get_batch(), which reads every loader in step",
    "optimizer_step": "the step applies the optimizer once per update; override "
    "custom_optimizer_step() to replace optimizer.step()",
    "patch_data_loader": "loaders are used as given; give each rank its own shard",
    "patch_everything": "modules, optimizers and schedulers are used as given; the engine "
    "prepares them for the strategy",
    "patch_module": "modules are used as given, never wrapped",
    "patch_optimizer": "optimizers are used as given, never rebuilt",
    "patch_scheduler": "schedulers are used as given; build one on problem.optimizer and pass "
    "it to set_scheduler()",
    "set_grads": "the step writes gradients in one place; change them in grad_callback()",
    "step_normal": "use step()",
    "synchronize_params": "the engine broadcasts rank 0's parameters at construction and "
    "averages gradients over ranks at every update",
    "train_data_iterator": "get_batch() reads the loaders; their positions are saved in "
    "checkpoints",
}
"""Betty 0.2.1's public ``Problem`` members that have no counterpart here, with what to use
instead (the README's differences list names each)."""


def not_provided(owner: str, item: str) -> AttributeError | None:
    """The error for Betty's member ``item`` of ``owner`` if this library leaves it out."""
    if item not in NOT_PROVIDED:
        return None
    return AttributeError(f"{owner}: Betty's Problem.{item} is not provided: {NOT_PROVIDED[item]}")


class BettyGraph:
    """Betty's wiring and setters (mixed into ``Problem``, whose members they read are
    declared below for the type checker)."""

    if TYPE_CHECKING:
        _name: str
        _loaders: Loaders
        engine: Runtime | None
        env: Any
        module: nn.Module
        optimizer: Optimizer
        scheduler: Any
        train_data_loader: Any
        children: list[Problem]
        parents: list[Problem]
        paths: list[list[Problem]]
        ready: dict[str, bool]

    def add_child(self, problem: Problem) -> None:
        """Make ``problem`` a lower level of this one: this level then steps only after
        ``problem`` has signalled the end of an inner loop. ``ValueError`` if it already is."""
        if any(c is problem for c in self.children):
            raise ValueError(
                f"problem {self._name!r} already has {problem.name!r} as a lower level"
            )
        self.children.append(problem)
        self.ready[problem.name] = False

    def add_parent(self, problem: Problem) -> None:
        """Make ``problem`` an upper level of this one: this level signals it at the end of
        each inner loop. ``ValueError`` if it already is."""
        if any(p is problem for p in self.parents):
            raise ValueError(
                f"problem {self._name!r} already has {problem.name!r} as an upper level"
            )
        self.parents.append(problem)

    def add_paths(self, paths: Sequence[Sequence[Problem]]) -> None:
        """Add hypergradient paths ``[self, L_1, ..., L_k, self]``: this level's loss reads
        ``L_1``, each ``L_i``'s reads ``L_(i+1)`` and ``L_k``'s reads this level."""
        for path in paths:
            ends = len(path) >= 3 and path[0] is self and path[-1] is self
            if not ends:
                names = [p.name for p in path]
                raise ValueError(
                    f"problem {self._name!r}: a hypergradient path starts and ends at the "
                    f"problem and passes through a lower level between; got {names}"
                )
        self.paths.extend(list(path) for path in paths)

    def add_env(self, env: Any) -> None:
        """Set ``self.env`` unless the level already has one."""
        if self.env is None:
            self.env = env

    def check_ready(self) -> bool:
        """Whether every lower level has signalled since this level's last step."""
        return all(self.ready.values())

    def _replaceable(self, setter: str, instead: str) -> None:
        if self.engine is not None:
            raise RuntimeError(
                f"problem {self._name!r}: {setter}() after the engine was built; {instead}"
            )

    def set_module(self, module: nn.Module) -> None:
        """Replace the module before the engine is built (it is checked then)."""
        self._replaceable(
            "set_module",
            "pass the module to the constructor or return it from configure_module(), or load "
            "new weights into the module in place (problem.module.load_state_dict(...))",
        )
        self.module = module

    def set_optimizer(self, optimizer: Optimizer) -> None:
        """Replace the optimizer before the engine is built (it is checked then)."""
        self._replaceable(
            "set_optimizer",
            "pass the optimizer to the constructor or return it from configure_optimizer(), or "
            "change its options in place (problem.optimizer.param_groups[i]['lr'] = ...)",
        )
        self.optimizer = optimizer

    def set_scheduler(self, scheduler: Any) -> None:
        """Replace the learning-rate scheduler; it steps once per update. Once the engine is
        built, it must drive this level's optimizer, ``problem.optimizer`` (which the engine
        rebuilds for ZeRO and FSDP2): a ``ValueError`` otherwise, where Betty rebuilt it."""
        driven = getattr(scheduler, "optimizer", None)  # torch's schedulers name theirs
        if self.engine is not None and driven is not None and driven is not self.optimizer:
            raise ValueError(
                f"problem {self._name!r}: set_scheduler() got a scheduler of another "
                "optimizer; build it on problem.optimizer, the optimizer this level steps"
            )
        self.scheduler = scheduler

    def set_train_data_loader(self, loader: Any, idx: int = 0) -> None:
        """Replace loader ``idx`` (``0`` for a level with one loader; a level with a tuple of
        loaders keeps the others). Once the engine is built, the new loader starts at its
        first batch."""
        current = self.train_data_loader
        count = len(current) if isinstance(current, tuple) else 1
        if not 0 <= idx < count:
            raise IndexError(
                f"problem {self._name!r}: loader index {idx} out of range for {count} loader(s)"
            )
        if isinstance(current, tuple):
            self.train_data_loader = (*current[:idx], loader, *current[idx + 1 :])
        else:
            self.train_data_loader = loader
        if self.engine is not None:
            self._loaders.replace(idx, loader)
