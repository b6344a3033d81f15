"""Construction-time checks for Betty hooks that ziggurat does not honour the same way.

Each turns what would otherwise be silently ignored into an error that says what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ..problems import Problem


def check_overrides(problems: Sequence[Problem]) -> None:
    """Before any ``configure_*`` hook runs: Betty overrides that would be ignored."""
    for p in problems:
        _check_ignored_overrides(p)


def check_problems(problems: Sequence[Problem]) -> None:
    """After the problems are initialised: what needs their optimizers."""
    for p in problems:
        _check_param_groups(p)


_IGNORED_OVERRIDES = {
    "meta_trainable_parameters": (
        "every hypergradient method differentiates through all of a level's trainable "
        "parameters. Remove the override; to leave tensors out of training and hypergradients "
        "alike, set their requires_grad to False"
    ),
    "trainable_parameters": (
        "a level's parameters are always its module's parameters with requires_grad=True "
        "(named_trainable_parameters()), and its optimizer is used as given (Betty rebuilt it "
        "over the override's tensors). Remove the override; to leave tensors out of training "
        "and hypergradients, call requires_grad_(False) on them and build the optimizer over "
        "the rest"
    ),
}
"""Betty hooks that ziggurat does not call, and why; overriding one is a ``TypeError``."""


def _check_ignored_overrides(problem: Problem) -> None:
    for hook, why in _IGNORED_OVERRIDES.items():
        if getattr(type(problem), hook) is not getattr(Problem, hook):
            raise TypeError(
                f"problem {problem.name!r} overrides {hook}(), which ziggurat does not "
                f"honour: {why}"
            )


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False
    return bool(a == b)


def _group_matches(wanted: dict[str, Any], have: dict[str, Any]) -> bool:
    params = wanted["params"]
    ids = [id(params)] if isinstance(params, Tensor) else [id(t) for t in params]
    if sorted(ids) != sorted(id(t) for t in have["params"]):
        return False
    return all(_same(v, have.get(k)) for k, v in wanted.items() if k != "params")


def _check_param_groups(problem: Problem) -> None:
    wanted = problem.param_groups()
    if wanted is None:
        return
    assert problem.optimizer is not None
    have = problem.optimizer.param_groups
    wanted = list(wanted)
    matched = len(wanted) == len(have) and all(
        any(_group_matches(w, h) for h in have) for w in wanted
    )
    if not matched:
        raise ValueError(
            f"problem {problem.name!r} defines param_groups(), but its optimizer was not built "
            "from those groups and options. ziggurat uses the optimizer as given and never "
            "rebuilds it (Betty did, from param_groups()); build it from them, e.g. "
            "torch.optim.SGD(self.param_groups(), lr=...) in configure_optimizer()"
        )
