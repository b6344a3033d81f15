"""Small modules shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


class Vec(nn.Module):
    """A module that is one parameter vector: ``module()`` returns it."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())

    def forward(self) -> torch.Tensor:
        return self.value
