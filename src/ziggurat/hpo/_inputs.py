"""What :class:`~ziggurat.hpo.HyperModel` accepts, checked where it enters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..hypergradient import Method

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


def check_method(name: str, method: object) -> None:
    """``method`` must be ``None`` (the default) or a hypergradient method object."""
    if method is None or isinstance(method, Method):
        return
    raise ValueError(
        f"{name} method must be a hypergradient method object such as "
        "ziggurat.hypergradient.cg(50, 1e-10) (from_name('cg') builds one from a name), or "
        f"None for the default, got {method!r}"
    )


def build_optimizer(
    name: str, factory: Callable[[Iterable[Tensor]], Any], tensors: Sequence[Tensor], what: str
) -> torch.optim.Optimizer:
    """``factory(tensors)``, which must be a ``torch.optim.Optimizer`` holding exactly
    ``tensors`` (``what`` names them): one over other tensors would never move them."""
    if not callable(factory):
        raise ValueError(f"fit {name} must be callable (tensors -> optimizer), got {factory!r}")
    optimizer = factory(tensors)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(
            f"fit {name} must return a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    held = {id(t) for g in optimizer.param_groups for t in g["params"]}
    if held != {id(t) for t in tensors}:
        raise ValueError(
            f"fit {name} returned an optimizer over other tensors than {what} (it holds "
            f"{len(held)} tensor(s), {sum(id(t) in held for t in tensors)} of the "
            f"{len(tensors)} given); build it from the tensors it is passed"
        )
    return optimizer
