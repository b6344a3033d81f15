"""The package's layers, read off its import statements (type-only imports included).

* ``problems/`` and ``envs/`` never import ``ziggurat.engine``: they depend on the
  ``problems.Runtime`` interface, which the engine implements.
* The graph of imports between ``ziggurat``'s sub-packages has no circle.
* No module reaches into a private module of another sub-package (``from ..x._y import``);
  top-level private modules (``ziggurat._tree``, ``ziggurat._rng``, ...) are the shared
  vocabulary every layer may use.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ziggurat

ROOT = Path(ziggurat.__file__).resolve().parent


def _package(path: Path) -> str:
    """The sub-package a module belongs to (``""`` for top-level modules)."""
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else ""


def _imports(path: Path) -> list[list[str]]:
    """Every imported module of ``path`` as parts below ``ziggurat`` (``["engine", "_run"]``)."""
    here = list(path.relative_to(ROOT).with_suffix("").parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "ziggurat":
                target = node.module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names]
            found += [[*target, n] for n in names] if not node.module else [target]
        elif isinstance(node, ast.Import):
            found += [a.name.split(".")[1:] for a in node.names if a.name.startswith("ziggurat.")]
    return found


MODULES = sorted(p for p in ROOT.rglob("*.py"))


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        source = _package(path)
        for target in _imports(path):
            dest = target[0] if target and (ROOT / target[0]).is_dir() else ""
            if source and dest and dest != source:
                graph.setdefault(source, set()).add(dest)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*trail, node, nxt]
            if nxt not in state and (found := visit(nxt, [*trail, node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_problems_and_envs_never_import_the_engine() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in MODULES
        if _package(path) in ("problems", "envs")
        and any(t[:1] == ["engine"] for t in _imports(path))
    ]
    assert offenders == []


def test_no_circle_between_packages() -> None:
    assert _cycle(package_graph()) is None


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = package_graph()
    graph.setdefault("linalg", set()).add("engine")  # engine -> ... -> linalg -> engine
    assert _cycle(graph) is not None


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_module_of_another_package_is_imported(path: Path) -> None:
    source = _package(path)
    private = [
        ".".join(t)
        for t in _imports(path)
        if len(t) >= 2 and (ROOT / t[0]).is_dir() and t[0] != source and t[1].startswith("_")
    ]
    assert private == []
