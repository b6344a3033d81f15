"""The hooks a level's program fills in, with their documented defaults (Lightning's pattern:
one class of no-op methods, called unconditionally by :class:`~ziggurat.problems.Problem`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn


class Hooks:
    """User hooks of a level; every one but ``training_step`` has a no-op default."""

    if TYPE_CHECKING:
        _name: str
        optimizer: torch.optim.Optimizer

    def training_step(self, batch: Any) -> Tensor | dict[str, Any]:
        """Return this level's loss on ``batch`` (a scalar, or a dict with ``"loss"``)."""
        raise NotImplementedError(
            f"problem {self._name!r} ({type(self).__name__}) must define training_step(self, batch)"
        )

    def configure_module(self) -> nn.Module | None:
        """Build the module when none was passed. Default: none."""
        return None

    def configure_optimizer(self) -> torch.optim.Optimizer | None:
        """Build the optimizer when none was passed. Default: none."""
        return None

    def configure_scheduler(self) -> Any:
        """Build the learning-rate scheduler when none was passed. Default: none."""
        return None

    def configure_train_data_loader(self) -> Any:
        """Build the data loader(s) when none was passed. Default: none."""
        return None

    def on_inner_loop_start(self) -> None:
        """Called before the first step after each update of the upper problems. No-op."""

    def grad_callback(self) -> None:
        """Called after gradients (hypergradients included) are written, before clipping. No-op."""

    def param_callback(self) -> None:
        """Called after each optimizer step. No-op."""

    def epoch_callback(self) -> None:
        """Called when the first data loader starts a new epoch. No-op."""

    def custom_optimizer_step(self, *args: Any, **kwargs: Any) -> Any:
        """Apply the written gradients, once per update. Default: ``self.optimizer.step()``.

        Runs after the gradients are unscaled and clipped; the optimizer's ``zero_grad`` and
        ``param_callback`` follow. An override cannot be combined with ``precision="fp16"``
        (refused when the engine is built), whose GradScaler takes the step itself.
        """
        return self.optimizer.step()

    def param_groups(self) -> list[dict[str, Any]] | None:
        """Parameter groups for ``configure_optimizer`` to build the optimizer from.

        The optimizer is never rebuilt from them: when this returns groups, the engine checks
        at construction that the optimizer holds exactly these groups and options. Default:
        none.
        """
        return None
