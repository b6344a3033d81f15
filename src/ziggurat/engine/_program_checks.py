"""Checks of a program as a whole, each a ``ValueError`` that names the levels and the fix:
levels that share trainable tensors (at construction) and levels that would never step in a
run (when it starts)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from ..problems import Problem


def _trained(problem: Problem) -> dict[int, str]:
    """The tensors ``problem`` trains, by identity: its module's parameters with
    ``requires_grad=True`` and whatever else with ``requires_grad=True`` its optimizer holds
    (a frozen tensor never gets a gradient, so no optimizer moves it)."""
    out = {id(t): k for k, t in problem.module.named_parameters() if t.requires_grad}
    for i, group in enumerate(problem.optimizer.param_groups):
        for j, t in enumerate(group["params"]):
            if t.requires_grad:
                out.setdefault(id(t), f"<optimizer param group {i}, tensor {j}>")
    return out


def check_disjoint_parameters(problems: Sequence[Problem]) -> None:
    """No tensor may be trained by two levels: each level's update would move the other's
    parameters, and every hypergradient assumes a level's parameters are its own."""
    trained = {p.name: _trained(p) for p in problems}
    for a, b in combinations(problems, 2):
        shared = trained[a.name].keys() & trained[b.name].keys()
        if not shared:
            continue
        names = sorted(trained[a.name][i] for i in shared)
        other = sorted(trained[b.name][i] for i in shared)
        seen = "" if other == names else f", {other[:5]} in {b.name!r}"
        raise ValueError(
            f"problems {a.name!r} and {b.name!r} share {len(shared)} trainable tensor(s) "
            f"({names[:5]} in {a.name!r}{seen}): the same nn.Module or parameter was given "
            "to both levels. Each level trains its own parameters: give each its own "
            "module (e.g. copy.deepcopy), or freeze the shared part with requires_grad_(False)"
        )
