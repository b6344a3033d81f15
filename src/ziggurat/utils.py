"""Small helpers that Betty programs import from ``betty.utils``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .logging import flatten_stats


def log_from_loss_dict(loss_dict: Mapping[str, Any]) -> str:
    """``"key: value || key: value"``, the text of a console line; lists and tuples are
    expanded to ``key_0``, ``key_1``, ... and tensors reduced to their mean."""
    return " || ".join(f"{k}: {v:.6g}" for k, v in flatten_stats(loss_dict).items())


def to_vec(tensors: Iterable[Tensor], alpha: float = 1.0) -> Tensor:
    """``alpha`` times the tensors, flattened and concatenated into one vector."""
    return torch.cat([alpha * t.reshape(-1) for t in tensors])


def neg_with_none(tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
    """Each tensor negated; ``None`` entries (unused parameters' gradients) stay ``None``."""
    return [None if t is None else -t for t in tensors]
