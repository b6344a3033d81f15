"""Checks that a program's mathematics connects, made once per level and per path.

A hypergradient is structurally zero when the lower loss of a hop never reads the upper
level's parameters, and a level cannot train when its loss reaches none of its own parameters
and no path brings it a hypergradient. Both are graph facts, decided by which tensors autograd
reaches; neither costs a host sync. They are checked at a level's first step and at the first
hop of each path, and raised at once, naming the levels and the likely causes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .. import _rng, _tree
from .._types import InnerLoss, Params

if TYPE_CHECKING:
    from ._problem import Problem


def _route(path: Sequence[Problem]) -> str:
    return " -> ".join(p.name for p in path)


def check_own(problem: Problem, reached: bool) -> None:
    """``problem``'s loss reaches its own parameters (directly, or through the recorded
    trajectory of an unrolled lower level), or a path with hops of its own brings it a
    gradient (those are checked by :func:`check_hop`)."""
    separate = [p for p in problem.paths if not p[1].hop_method().follows_trajectory]
    if reached or separate:
        return
    lowers = [c.name for c in problem.children]
    if problem.paths:
        unrolled = sorted({p[1].name for p in problem.paths})
        cause = (
            f"the steps of its unrolled lower levels {unrolled} never read it: their "
            f"training_step must call self.{problem.name}(...) or read its module"
        )
    elif lowers:
        cause = (
            f"it has lower levels {lowers} but no hypergradient path: if their losses read "
            f"{problem.name!r}, declare it, e.g. dependencies={{'u2l': {{{problem.name!r}: "
            f"{lowers}}}, ...}} (a forgotten u2l)"
        )
    else:
        cause = (
            "its training_step computes the loss from other tensors: read the level's module "
            "(self.module(x)) or parameters, and check that they require grad"
        )
    raise ValueError(
        f"problem {problem.name!r}: its loss does not depend on any of its trainable "
        f"parameters ({sorted(problem.named_trainable_parameters())[:5]}), so its gradient is "
        f"zero and it would never move; {cause}"
    )


def check_hop(path: Sequence[Problem], j: int, inner: InnerLoss, w: Params, lam: Params) -> None:
    """The loss of ``path[j]`` reads the parameters of ``path[j + 1]``: the hop's best-response
    product is not zero by construction (one gradient evaluation, leaving the generators as
    they were)."""
    lower, upper = path[j], path[j + 1]
    with _rng.isolated():
        reached = _reaches(lower, inner, w, _tree.leaves(lam))
    if reached:
        return
    raise ValueError(
        f"problem {path[0].name!r}: its hypergradient along {_route(path)} is zero by "
        f"construction: the loss of {lower.name!r} does not read the parameters of "
        f"{upper.name!r} (checked at the first hop). Likely causes: {lower.name!r}'s "
        f"training_step never calls self.{upper.name}(...) or reads its module; the same "
        f"nn.Module (or parameter) was given to both levels; or the u2l dependency is not "
        f"meant (remove {upper.name!r}: [{lower.name!r}] from u2l)"
    )


def _reaches(lower: Problem, inner: InnerLoss, w: Params, lam_: Params) -> bool:
    """Whether the leaves ``lam_`` reach the lower loss (or the unrolled trajectory ``w``)."""
    if lower.hop_method().follows_trajectory:
        outputs = [t for t in w.values() if t.requires_grad]
        if not outputs:
            return False
        total = torch.stack([t.sum() for t in outputs]).sum()
        grads = torch.autograd.grad(
            total, list(lam_.values()), allow_unused=True, retain_graph=True
        )
        return any(g is not None for g in grads)
    loss = inner(_tree.detach(w), lam_)
    if not loss.requires_grad:
        return False
    grads = torch.autograd.grad(loss, list(lam_.values()), allow_unused=True)
    return any(g is not None for g in grads)
