"""Map a ``torch.optim`` optimizer to its functional, differentiable twin."""

from __future__ import annotations

import torch

from ._adam import adam, adamw
from ._base import FunctionalOptimizer
from ._sgd import sgd


def from_torch(optimizer: torch.optim.Optimizer) -> FunctionalOptimizer:
    """The functional optimizer with the same hyperparameters as ``optimizer``'s first group.

    Supports SGD, Adam and AdamW; raises ``TypeError`` for others and ``ValueError`` when param
    groups disagree on a hyperparameter (one functional optimizer holds one set).
    """
    groups = optimizer.param_groups
    keys = (
        "lr",
        "momentum",
        "betas",
        "eps",
        "weight_decay",
        "dampening",
        "nesterov",
        "amsgrad",
        "maximize",
        "decoupled_weight_decay",
    )
    first = groups[0]
    for g in groups[1:]:
        for key in keys:
            if key in first and g.get(key) != first[key]:
                raise ValueError(
                    f"param groups disagree on {key!r} ({first[key]!r} vs {g.get(key)!r}); "
                    "differentiable unrolling needs one setting per optimizer"
                )
    lr = float(first["lr"])
    maximize = bool(first.get("maximize", False))
    # torch >= 2.6 spells AdamW also as Adam(decoupled_weight_decay=True)
    decoupled = bool(first.get("decoupled_weight_decay", False))
    if isinstance(optimizer, torch.optim.Adam):  # AdamW subclasses Adam
        build = adamw if decoupled or isinstance(optimizer, torch.optim.AdamW) else adam
        return build(
            lr,
            betas=first["betas"],
            eps=first["eps"],
            weight_decay=first["weight_decay"],
            amsgrad=first["amsgrad"],
            maximize=maximize,
        )
    if isinstance(optimizer, torch.optim.SGD):
        return sgd(
            lr,
            momentum=first["momentum"],
            dampening=first["dampening"],
            weight_decay=first["weight_decay"],
            nesterov=first["nesterov"],
            maximize=maximize,
        )
    raise TypeError(
        f"no differentiable twin for {type(optimizer).__name__}; use torch.optim.SGD, "
        "Adam or AdamW with IterativeProblem, or an ImplicitProblem"
    )
