"""A level's precision: its autocast context and, for fp16 (CUDA), its GradScaler."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """``precision`` (``"fp32"``, ``"bf16"`` or ``"fp16"``) of one level.

    Losses are widened to fp32 whatever the precision, so gradients, cotangents and solves stay
    fp32. fp16 scales the loss and unscales before the update with a GradScaler, which also
    takes the optimizer step (skipped when the unscaled gradients are not finite); it is made
    by :meth:`place`, once the device is known (fp16 needs CUDA).
    """

    def __init__(
        self, precision: str, *, initial_scale: float = 4096.0, growth_factor: float = 2.0
    ) -> None:
        self.name = precision
        self.device = torch.device("cpu")
        self.initial_scale, self.growth_factor = initial_scale, growth_factor
        self.scaler: torch.amp.GradScaler | None = None

    def place(self, device: torch.device) -> None:
        """Run on ``device``; an fp16 level gets its GradScaler."""
        self.device = device
        if self.name == "fp16":
            self.scaler = torch.amp.GradScaler(
                "cuda", init_scale=self.initial_scale, growth_factor=self.growth_factor
            )

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context (a no-op for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def scale(self, loss: Tensor) -> Tensor:
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def owns_step(self) -> bool:
        """Whether the GradScaler takes the optimizer step (fp16)."""
        return self.scaler is not None

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The GradScaler's step and scale update (call only when :meth:`owns_step`)."""
        assert self.scaler is not None
        self.scaler.step(optimizer)
        self.scaler.update()


def widen(loss: Tensor) -> Tensor:
    """A reduced-precision loss as fp32 (others unchanged)."""
    return loss.float() if loss.dtype in (torch.bfloat16, torch.float16) else loss
