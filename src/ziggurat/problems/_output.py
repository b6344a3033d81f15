"""Reading what ``training_step`` returned: a scalar loss and the metrics beside it."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .._values import as_float


def split_output(out: Any, owner: str) -> tuple[Tensor, dict[str, float]]:
    """``(loss, metrics)`` from a tensor or a dict with ``"loss"``; errors name ``owner``."""
    metrics: dict[str, float] = {}
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError(
                f"problem {owner!r}: training_step returned a dict without 'loss' "
                f"(keys {sorted(out)}); add the loss under 'loss'"
            )
        metrics = {k: _metric(owner, k, v) for k, v in out.items() if k != "loss"}
        out = out["loss"]
    if not isinstance(out, Tensor):
        raise TypeError(
            f"problem {owner!r}: training_step must return a tensor or a dict with "
            f"'loss', got {type(out).__name__}"
        )
    if out.numel() != 1:
        raise ValueError(
            f"problem {owner!r}: training_step returned a loss of shape "
            f"{tuple(out.shape)}; return a scalar (e.g. loss.mean())"
        )
    if not out.is_floating_point():
        raise TypeError(
            f"problem {owner!r}: training_step returned a loss of dtype {out.dtype}, which "
            "has no gradient; compute the loss in floating point (e.g. loss.float())"
        )
    return out.reshape(()), metrics


def _metric(owner: str, key: str, value: Any) -> float:
    """A metric beside the loss as a float, or an error naming it."""
    try:
        return as_float(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"problem {owner!r}: training_step returned the metric {key!r} = {value!r}, "
            f"which is not a number ({error}); return numbers or tensors beside 'loss'"
        ) from None


def check_finite(loss: float, owner: str, global_step: int, count: int) -> None:
    """``FloatingPointError`` naming the level and its steps for a NaN or infinite loss."""
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"problem {owner!r}: loss is {loss} at global step {global_step}, local step "
            f"{count}; lower the learning rate, clip gradients "
            "(Config(gradient_clipping=...)) or check the data"
        )
