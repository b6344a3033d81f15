"""Helpers Betty programs call on a problem: the loss step, gradient and optimizer-state
utilities, and read-only views of the problem's options.

Mixed into :class:`~ziggurat.problems.Problem`. None of them changes how a problem trains:
the update still writes gradients and steps the optimizer in one place
(``Problem._apply_gradients``), and these only read that state or act on request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..logging import LoggerBase

if TYPE_CHECKING:
    from ..configs import Config
    from ..engine import Engine

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ProblemHelpers:
    """Betty's problem helpers, on ziggurat's state."""

    if TYPE_CHECKING:
        _config: Config
        _name: str
        engine: Engine | None
        optimizer: torch.optim.Optimizer | None
        scaler: torch.amp.GradScaler | None
        last_metrics: dict[str, float]

        def trainable_parameters(self) -> list[Tensor]: ...
        def loss_of(self, batch: Any) -> Tensor: ...
        def _check_finite(self, loss: float) -> None: ...
        def _own_optimizer(self) -> torch.optim.Optimizer: ...

    # ------------------------------------------------------------------ options (read-only)
    @property
    def gas(self) -> int:
        """``config.gradient_accumulation``: local steps per optimizer update."""
        return self._config.gradient_accumulation

    @property
    def gradient_clipping(self) -> float:
        """``config.gradient_clipping``: the global-norm bound (0 disables clipping)."""
        return self._config.gradient_clipping

    @property
    def warmup_steps(self) -> int:
        """``config.warmup_steps``: local steps before this problem first signals its uppers."""
        return self._config.warmup_steps

    @property
    def log_step(self) -> int:
        """``config.log_step``: the logging period in local steps (<= 0 disables it)."""
        return self._config.log_step

    @property
    def log_local_step(self) -> bool:
        """``config.log_local_step``: log against the local instead of the global step."""
        return self._config.log_local_step

    @property
    def precision(self) -> str:
        """``config.precision``: ``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        return self._config.precision

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of ``precision`` (losses are widened to fp32 all the same)."""
        return _DTYPES[self._config.precision]

    @property
    def logger(self) -> LoggerBase:
        """The engine's logger (``Engine.logger``); before an engine holds this problem, one
        that only writes console lines."""
        return LoggerBase() if self.engine is None else self.engine.logger

    # ------------------------------------------------------------------ loss
    def get_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """The loss this problem differentiates on ``batch``, and what it logs.

        ``training_step(batch)`` under this problem's autocast, checked (a scalar, finite),
        divided by ``gradient_accumulation`` and scaled by the fp16 GradScaler if there is
        one; the dict holds the unscaled loss under ``"loss"`` and the other entries that
        ``training_step`` returned.
        """
        loss = self.loss_of(batch)
        value = float(loss.detach())  # the one host sync of a step's loss
        self._check_finite(value)
        stats = {"loss": value, **self.last_metrics}
        k = self._config.gradient_accumulation
        scaled = loss if k == 1 else loss / k  # dividing by 1 would add a node to the graph
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        return scaled, stats

    # ------------------------------------------------------------------ gradients
    def meta_trainable_parameters(self) -> list[Tensor]:
        """The parameters hypergradients are differentiated through: all trainable ones.

        Betty let subclasses narrow this set, but honoured it in only some methods; here
        every method differentiates through every trainable parameter of the level, and an
        override is refused when the engine is built. To leave a tensor out of both training
        and hypergradients, set its ``requires_grad`` to False.
        """
        return self.trainable_parameters()

    def zero_grad(self) -> None:
        """Discard the gradients written so far (e.g. part of an accumulation window)."""
        for p in self.trainable_parameters():
            p.grad = None

    def clip_grad(self) -> Tensor | None:
        """Clip the written gradients to ``gradient_clipping`` in global norm, as the update
        does before each optimizer step; return the norm before clipping, or ``None`` when
        clipping is off."""
        if self._config.gradient_clipping <= 0:
            return None
        with_grad = [p for p in self.trainable_parameters() if p.grad is not None]
        return nn.utils.clip_grad_norm_(with_grad, self._config.gradient_clipping)

    # ------------------------------------------------------------------ optimizer state
    def get_opt_param_group_for_param(self, param: Tensor) -> dict[str, Any]:
        """The optimizer's param group holding ``param`` (the live dict)."""
        assert self.optimizer is not None
        for group in self.optimizer.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError(
            f"problem {self._name!r}: the tensor is not a parameter of this problem's optimizer"
        )

    def get_opt_state_for_param(self, param: Tensor) -> dict[str, Any]:
        """The optimizer's state for ``param``: the live dict, or an empty one while the
        optimizer holds none for it (before its first step; under ZeRO, on ranks that do not
        own it)."""
        self.get_opt_param_group_for_param(param)
        state: dict[str, Any] = self._own_optimizer().state.get(param, {})
        return state
