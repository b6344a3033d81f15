"""Reading what ``training_step`` returned: a scalar loss and the metrics beside it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import _health
from ..systems.fsdp import full, is_sharded

Metric = float | Tensor
"""A logged value: a number, or a tensor kept on its device until a logger reads it."""


def split_output(out: Any, owner: str) -> tuple[Tensor, dict[str, Metric]]:
    """``(loss, metrics)`` from a tensor or a dict with ``"loss"``; errors name ``owner``.

    Tensor metrics are detached but stay tensors: reading them is a host sync, which happens
    only when something logs them.
    """
    metrics: dict[str, Metric] = {}
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError(
                f"problem {owner!r}: training_step returned a dict without 'loss' "
                f"(keys {sorted(out)}); add the loss under 'loss'"
            )
        metrics = {k: _metric(v, owner, k) for k, v in out.items() if k != "loss"}
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


def _metric(value: Any, owner: str, key: str) -> Metric:
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"problem {owner!r}: training_step returned the metric {key!r} = {value!r}, "
            "which is not a number; return numbers or tensors beside 'loss'"
        ) from None


def check_finite(loss: Tensor, owner: str, global_step: int, count: int) -> None:
    """``FloatingPointError`` naming the level and its steps for a NaN or infinite loss,
    through :mod:`ziggurat._health` (raised before the level's next update)."""

    def message() -> str:
        return (
            f"problem {owner!r}: loss is {float(loss)} at global step {global_step}, "
            f"local step {count}; lower the learning rate, clip gradients "
            "(Config(gradient_clipping=...)) or check the data"
        )

    _health.check(loss, message)


def check_finite_gradients(
    grads: dict[str, Tensor], owner: str, global_step: int, count: int
) -> None:
    """``FloatingPointError`` for gradients with a NaN or an infinity (behind a finite loss:
    a square root or logarithm at 0, a division by zero, an overflow)."""
    if not grads:
        return
    tensors = [g.detach() for g in grads.values()]
    if any(is_sharded(g) for g in tensors):  # a DTensor's norm is the whole tensor's
        norms = [full(torch.linalg.vector_norm(g)) for g in tensors]
    else:
        norms = list(torch._foreach_norm(tensors))

    def message() -> str:
        bad = [k for k, g in grads.items() if not bool(torch.isfinite(g).all())]
        return (
            f"problem {owner!r}: its gradients are not finite at global step {global_step}, "
            f"local step {count} ({bad[:5]}), although its loss is; the update is refused. "
            "Look for a square root or logarithm at 0, a division by zero or an overflow in "
            "training_step, or clip gradients (Config(gradient_clipping=...))"
        )

    _health.check(norms, message)
