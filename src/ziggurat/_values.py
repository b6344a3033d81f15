"""Logged values as Python floats: the one conversion from a tensor metric to a number."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def as_float(value: Any) -> float:
    """``value`` as a float; a tensor becomes the mean of its entries (a host sync)."""
    if isinstance(value, Tensor):
        return float(value.detach().float().mean())
    return float(value)
