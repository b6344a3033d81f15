"""Parsing and validating ``{"u2l": ..., "l2u": ...}`` dependencies (Betty's meaning).

* ``l2u[L] = [U, ...]``: ``L`` is a lower level of each ``U``; ``U`` steps after ``L`` has
  finished its inner loop (scheduling and parenthood), and ``U``'s loss reads ``L``.
* ``u2l[U] = [L, ...]``: ``L``'s loss reads ``U``'s parameters, so ``U`` receives a
  hypergradient through ``L`` along every ``l2u`` chain ``L -> X_1 -> ... -> X_m -> U``.

Such a chain is stored, as in Betty, as the path ``[U, X_m, ..., X_1, L, U]``: ``U``'s loss is
differentiated with respect to ``X_m`` (the level directly below it), and each hop
``X_m -> ... -> X_1 -> L -> U`` is the best-response product of a level whose loss reads the
next one (``X_m`` reads ``X_{m-1}``, ..., ``X_1`` reads ``L``, ``L`` reads ``U``), linearised
by that level's own method. In a two-level program both readings coincide: ``[U, L, U]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Graph:
    """Validated dependencies, by problem name."""

    names: tuple[str, ...]
    uppers: dict[str, list[str]]  # l2u: lower -> its upper problems (parents)
    reads: dict[str, list[str]]  # u2l: upper -> lower problems its loss reads
    paths: dict[str, list[list[str]]]  # upper -> paths [U, X_m, ..., X_1, L, U]

    @property
    def leaves(self) -> list[str]:
        """Problems with no lower level: the engine steps these every iteration."""
        lowers = {low for low, ups in self.uppers.items() if ups}
        has_lower = {u for low in lowers for u in self.uppers[low]}
        return [n for n in self.names if n not in has_lower]

    def children(self, name: str) -> list[str]:
        return [low for low in self.names if name in self.uppers.get(low, [])]


def _name_of(item: Any, known: Sequence[str], where: str) -> str:
    name = item if isinstance(item, str) else getattr(item, "name", None)
    if not isinstance(name, str):
        raise ValueError(f"dependencies: {where} holds {item!r}, which is not a problem or a name")
    if name not in known:
        raise ValueError(
            f"dependencies: {where} names problem {name!r}, which is not in `problems` "
            f"(known: {sorted(known)}); add it to Engine(problems=[...]) or fix the name"
        )
    return name


def _edges(
    table: Mapping[Any, Sequence[Any]] | None, known: Sequence[str], key: str
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if table is None:
        return out
    if not isinstance(table, Mapping):
        raise ValueError(f"dependencies[{key!r}] must be a dict, got {type(table).__name__}")
    for src, dsts in table.items():
        s = _name_of(src, known, f"{key} key")
        if isinstance(dsts, (str, bytes)) or not isinstance(dsts, Sequence):
            dsts = [dsts]
        targets = [_name_of(d, known, f"{key}[{s!r}]") for d in dsts]
        for t in targets:
            if t == s:
                raise ValueError(f"dependencies: {key} edge {s} -> {s} points a problem at itself")
        out.setdefault(s, []).extend(t for t in targets if t not in out.get(s, []))
    return out


def _find_cycle(order_edges: dict[str, list[str]], names: Sequence[str]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in order_edges.get(n, []):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in names:
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def _chains(uppers: dict[str, list[str]], start: str, goal: str) -> list[list[str]]:
    """Every ``l2u`` chain from ``start`` up to ``goal`` (the graph is acyclic)."""
    if start == goal:
        return [[goal]]
    out = []
    for up in uppers.get(start, []):
        for rest in _chains(uppers, up, goal):
            out.append([start, *rest])
    return out


def parse(names: Sequence[str], dependencies: Mapping[str, Any] | None) -> Graph:
    """Validate dependencies and enumerate hypergradient paths; ``ValueError`` on any problem."""
    dups = sorted({n for n in names if list(names).count(n) > 1})
    if dups:
        raise ValueError(f"duplicate problem names {dups}; every problem needs a unique name")
    deps = {} if dependencies is None else dependencies
    if not isinstance(deps, Mapping):
        raise ValueError(
            f"dependencies must be a dict with 'u2l' and 'l2u', got {type(deps).__name__}"
        )
    unknown = sorted(set(deps) - {"u2l", "l2u"})
    if unknown:
        raise ValueError(f"dependencies has unknown keys {unknown}; use 'u2l' and 'l2u'")
    uppers = _edges(deps.get("l2u"), names, "l2u")
    reads = _edges(deps.get("u2l"), names, "u2l")
    order = {n: list(uppers.get(n, [])) for n in names}
    for up, lows in reads.items():
        for low in lows:
            order[low].append(up)
    cycle = _find_cycle(order, names)
    if cycle:
        raise ValueError(
            "dependencies contain a cycle: " + " -> ".join(cycle) + "; levels must form a "
            "hierarchy (a lower level cannot also be above its upper level)"
        )
    paths: dict[str, list[list[str]]] = {}
    for up, lows in reads.items():
        for low in lows:
            chains = _chains(uppers, low, up)
            if not chains:
                raise ValueError(
                    f"dependencies: u2l edge {up} -> {low} has no l2u path from {low!r} back to "
                    f"{up!r}; add l2u {{{low!r}: [{up!r}]}} (or a chain through other levels)"
                )
            # a chain [L, X_1, ..., X_m, U] becomes the path [U, X_m, ..., X_1, L, U]
            paths.setdefault(up, []).extend([up, *reversed(c[:-1]), up] for c in chains)
    return Graph(tuple(names), uppers, reads, paths)
