"""Functional, differentiable optimizers on parameter trees.

``state = opt.init(params)``; ``params, state = opt.step(params, grads, state)``. Nothing is
updated in place, so reverse-mode autograd can run through any number of steps, and every
hyperparameter may be a tensor that requires grad (e.g. a learned learning rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from .._types import Params


@dataclass(frozen=True)
class OptState:
    """Optimizer state: a step count and named buffers, each a tree shaped like the params."""

    step: int = 0
    buffers: dict[str, Params] = field(default_factory=dict)

    def detach(self) -> OptState:
        return OptState(
            self.step,
            {name: {k: t.detach() for k, t in tree.items()} for name, tree in self.buffers.items()},
        )


class FunctionalOptimizer(Protocol):
    def init(self, params: Params) -> OptState: ...

    def step(self, params: Params, grads: Params, state: OptState) -> tuple[Params, OptState]: ...


def safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` whose derivative at 0 is 0 instead of ``inf`` (no NaN grads)."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), 0.0)
