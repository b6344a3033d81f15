"""The examples import ziggurat as user code does: absolute imports of public names only.

An example is meant to be copied out of the package and run as it stands, so it may not use a
relative import (``from ..configs import Config``) or reach a private module or name (any
``_``-prefixed part, as in ``ziggurat._types`` or ``ziggurat.examples._meta``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ziggurat.examples

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(ziggurat.examples.__file__).resolve().parent
LAUNCHERS = ROOT / "examples"
FILES = sorted(PACKAGE.glob("*.py")) + sorted(LAUNCHERS.glob("*.py"))


def _private(dotted: str) -> bool:
    return any(part.startswith("_") for part in dotted.split("."))


def _ours(module: str) -> bool:
    return module.split(".")[0] == "ziggurat"


def _bad_from(node: ast.ImportFrom) -> bool:
    """Relative, or from a private module of ziggurat, or of a private name of ziggurat."""
    if node.level > 0:
        return True
    module = node.module or ""
    return _ours(module) and (_private(module) or any(_private(a.name) for a in node.names))


def offending_imports(source: str) -> list[str]:
    """Each import of ``source`` that is relative or names a private part of ziggurat."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and _bad_from(node):
            names = ", ".join(a.name for a in node.names)
            bad.append(
                f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import {names}"
            )
        elif isinstance(node, ast.Import):
            bad += [
                f"line {node.lineno}: import {a.name}"
                for a in node.names
                if _ours(a.name) and _private(a.name)
            ]
    return bad


def test_every_example_file_is_found() -> None:
    names = {p.name for p in FILES}
    assert {"__init__.py", "common.py", "reweight.py", "nas.py", "hpo.py"} <= names
    assert len([p for p in FILES if p.parent == LAUNCHERS]) >= 6


@pytest.mark.parametrize(
    "path", FILES, ids=lambda p: str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
)
def test_example_imports_only_public_names(path: Path) -> None:
    assert offending_imports(path.read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "from .data import split",
        "from ..configs import Config",
        "from . import data",
        "from ziggurat._types import Params",
        "from ziggurat.examples._meta import meta_train",
        "from ziggurat import _tree",
        "from ziggurat.examples.common import _helper",
        "import ziggurat._verification",
        "def f():\n    from ziggurat.hypergradient._implicit import Curvature\n",
    ],
)
def test_the_check_catches_relative_and_private_imports(source: str) -> None:
    assert len(offending_imports(source)) == 1


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations",
        "from ziggurat import Engine, Params",
        "from ziggurat.examples.common import run_bilevel",
        "import ziggurat.hypergradient",
        "from torch._C import Generator",  # not ziggurat's business
    ],
)
def test_the_check_lets_public_imports_through(source: str) -> None:
    assert offending_imports(source) == []
