"""What :class:`~ziggurat.hpo.HyperModel` accepts, checked where it enters."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

Batch = tuple[Tensor, Tensor]
"""``(inputs, targets)``."""


def check_batch(name: str, batch: object) -> Batch:
    """``batch`` as an ``(inputs, targets)`` pair with one row per sample in each.

    Raises:
        ValueError: naming the ``fit`` argument ``name`` and what was given.
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(f"fit {name} must be a pair (inputs, targets) of tensors, got {batch!r}")
    x, y = batch[0], batch[1]
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
        raise ValueError(f"fit {name} must be a pair (inputs, targets) of tensors, got {batch!r}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"fit {name} inputs and targets must have the same number of rows, "
            f"got {x.shape[0]} and {y.shape[0]}"
        )
    return x, y


def check_hyper(hyper: object) -> dict[str, Tensor]:
    """Leaf copies of the hyperparameters, which must be a non-empty dict of float tensors."""
    if not isinstance(hyper, Mapping) or not hyper:
        raise ValueError(f"HyperModel hyper must be a non-empty dict of tensors, got {hyper!r}")
    out: dict[str, Tensor] = {}
    for name, value in hyper.items():
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise ValueError(
                f"HyperModel hyper[{name!r}] must be a floating-point tensor, got {value!r}"
            )
        out[str(name)] = value.detach().clone().requires_grad_(True)
    return out


def require_callable(name: str, value: object, optional: bool = False) -> None:
    """A ``ValueError`` naming the ``HyperModel`` argument unless ``value`` is callable (or
    ``None`` where ``optional``)."""
    if (value is None and optional) or callable(value):
        return
    raise ValueError(f"HyperModel {name} must be callable, got {value!r}")
