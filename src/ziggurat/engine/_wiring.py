"""Connecting problems to a validated dependency graph, at construction and on re-wiring.

``Engine.set_dependency`` replaces the graph while a program runs (Betty's dynamic topology).
It is refused unless every problem is at an inner-loop boundary, because three kinds of state
belong to the old graph while an inner loop is open: gradients accumulated so far (their
hypergradients came from the old paths), a roll-back cache (restored when the old upper
levels step) and an unrolled level's trajectory (recorded under the old upper levels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..problems import Problem
from ._graph import Graph


def _declared_attributes(cls: type) -> set[str]:
    """The attributes ``cls`` and its bases declare (``Engine`` annotates every one it sets),
    known before the engine has set them."""
    return {name for klass in cls.__mro__ for name in vars(klass).get("__annotations__", {})}


def check_names(engine: Any, problems: Sequence[Problem]) -> None:
    """``ValueError`` for a problem name that an attribute would shadow.

    Problems reach each other as ``self.<name>`` and the engine reaches them as
    ``engine.<name>``, both through ``__getattr__``, which only runs when normal lookup fails:
    a name that is also an attribute of the engine or of any problem (its class's methods and
    properties, or what it set on itself, such as ``cfg`` or ``paths``) would give that
    attribute instead of the problem.
    """
    for name in (p.name for p in problems):
        if name.startswith("_"):
            raise ValueError(
                f"problem name {name!r} starts with '_', so self.{name} never reaches the "
                "problem (private names are not looked up); rename the problem"
            )
        owner = _owner_of(name, engine, problems)
        if owner is not None:
            raise ValueError(
                f"problem name {name!r} clashes with the attribute {name!r} of {owner}: "
                f"there, .{name} gives that attribute instead of the problem; rename the problem"
            )


def _owner_of(name: str, engine: Any, problems: Sequence[Problem]) -> str | None:
    declared = _declared_attributes(type(engine))
    if name in declared or name in vars(engine) or hasattr(type(engine), name):
        return "the Engine"
    for p in problems:
        if name in vars(p) or hasattr(type(p), name):
            return f"problem {p.name!r} ({type(p).__name__})"
    return None


def wire(problems: Mapping[str, Problem], graph: Graph) -> list[Problem]:
    """Set every problem's children, parents, paths and (cleared) readiness flags from
    ``graph``, through Betty's ``add_child``, ``add_parent`` and ``add_paths``; return the
    leaves, in problem order."""
    for p in problems.values():
        p.children, p.parents, p.paths, p.ready = [], [], [], {}
    for p in problems.values():
        for n in graph.children(p.name):
            p.add_child(problems[n])
        for n in graph.uppers.get(p.name, []):
            p.add_parent(problems[n])
        p.add_paths([[problems[n] for n in path] for path in graph.paths.get(p.name, [])])
    return [problems[n] for n in graph.leaves]


def check_boundary(problems: Sequence[Problem]) -> None:
    """``RuntimeError`` naming the problems that are inside an inner loop."""
    busy = [f"{p.name!r} (local step {p.count})" for p in problems if not p.at_inner_loop_boundary]
    if busy:
        raise RuntimeError(
            "set_dependency: problems " + ", ".join(busy) + " are inside an inner loop (steps "
            "taken since they last signalled their upper levels, an open gradient-accumulation "
            "window or a roll-back cache); re-wire between iterations at which every lower "
            "level has just finished unroll_steps x gradient_accumulation steps"
        )
