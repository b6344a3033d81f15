"""Checks of a program as a whole, each a ``ValueError`` that names the levels and the fix:
levels that share trainable tensors (at construction) and levels that would never step in a
run (when it starts)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from ..problems import Problem
from ._graph import Graph


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


def _period(problem: Problem) -> tuple[int, int]:
    """Local steps between two signals of ``problem`` to its upper levels, and its warm-up."""
    cfg = problem.config
    return cfg.unroll_steps * cfg.gradient_accumulation, cfg.warmup_steps


def _signals(steps: int, period: int, warmup: int) -> int:
    """Signals to the upper levels in ``steps`` local steps: one at every multiple of
    ``period`` beyond ``warmup`` (``Problem.inner_loop_ends``)."""
    return max(0, steps // period - warmup // period)


def _first_signal(period: int, warmup: int) -> int:
    """The local step of the first signal."""
    return period * (warmup // period + 1)


def planned_steps(graph: Graph, problems: Sequence[Problem], train_iters: int) -> dict[str, int]:
    """How many steps each level takes in ``train_iters`` iterations, at most.

    The lowest levels step every iteration; a level steps when each of its lower levels has
    signalled since its last step, so at most as often as its least frequent lower level
    signals (exactly that with one lower level; zero exactly when one of them never signals).
    """
    by_name = {p.name: p for p in problems}
    steps: dict[str, int] = {}

    def count(name: str) -> int:
        if name not in steps:
            lowers = graph.children(name)
            steps[name] = min(
                (_signals(count(c), *_period(by_name[c])) for c in lowers), default=train_iters
            )
        return steps[name]

    return {name: count(name) for name in graph.names}


def _iterations_needed(graph: Graph, problems: Sequence[Problem]) -> int:
    """The fewest iterations in which every level can take a step."""
    by_name = {p.name: p for p in problems}

    def needed(name: str, k: int) -> int:
        """Iterations for ``name`` to take ``k`` steps (its lower levels signal ``k`` times)."""
        out = k
        for c in graph.children(name):
            period, warmup = _period(by_name[c])
            out = max(out, needed(c, period * (k + warmup // period)))
        return out

    return max(needed(name, 1) for name in graph.names)


def check_every_level_steps(graph: Graph, problems: Sequence[Problem], train_iters: int) -> None:
    """``ValueError`` naming a level that would never step in a run of ``train_iters``
    iterations (``unroll_steps`` larger than ``train_iters``, say), with the numbers."""
    if train_iters == 0:
        return  # nothing steps, as asked
    steps = planned_steps(graph, problems, train_iters)
    idle = [n for n in graph.names if steps[n] == 0]
    if not idle:
        return
    name = idle[0]
    by_name = {p.name: p for p in problems}
    silent = [c for c in graph.children(name) if _signals(steps[c], *_period(by_name[c])) == 0]
    low = silent[0]
    cfg = by_name[low].config
    period, warmup = _period(by_name[low])
    raise ValueError(
        f"problem {name!r} would never step in this run: it steps once each of its lower "
        f"levels {graph.children(name)} has signalled, but {low!r} takes {steps[low]} step(s) "
        f"in train_iters={train_iters} and signals its upper levels only after "
        f"unroll_steps ({cfg.unroll_steps}) x gradient_accumulation "
        f"({cfg.gradient_accumulation}) = {period} steps beyond warmup_steps ({warmup}), "
        f"first at its step {_first_signal(period, warmup)}. Steps per level, at most: "
        f"{steps}. Set EngineConfig train_iters >= {_iterations_needed(graph, problems)}, or "
        f"lower the unroll_steps, gradient_accumulation or warmup_steps of {low!r}"
    )
