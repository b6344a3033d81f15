"""``benchmarks`` is a package that tests may import; it never imports the tests, and its
scripts run as modules from the repository root (``python -m benchmarks.NAME``)."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")
TEST_MODULES = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"tests"}


def _is_sys_path(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def path_edits_and_test_imports(source: str) -> list[str]:
    """Each use of ``sys.path`` and each import of a module of ``tests/`` in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if _is_sys_path(node):
            found.append(f"line {getattr(node, 'lineno', '?')}: sys.path")
        found += [n for n in _imported(node) if n.split(".")[0] in TEST_MODULES]
    return found


def test_the_scripts_are_found() -> None:
    assert {"engine_compare", "workloads", "floors", "stats", "statistical_tests"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_each_script_imports_as_a_module_of_the_package(name: str) -> None:
    pytest.importorskip("sklearn")  # distributed_scaling reads digits at import
    module = importlib.import_module(f"benchmarks.{name}")
    assert Path(module.__file__ or "").parent == ROOT / "benchmarks"
    assert path_edits_and_test_imports(Path(module.__file__ or "").read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "import sys\nsys.path.insert(0, 'tests')",
        "import sys\nprint(sys.path)",
        "import test_reinforce",
        "from test_stochastic import mean_error",
        "from tests.registry import Spec",
        "import registry",
    ],
)
def test_the_check_catches_path_edits_and_test_imports(source: str) -> None:
    assert path_edits_and_test_imports(source) != []


def test_engine_compare_runs_as_a_module_from_the_root() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "benchmarks.engine_compare", "--help"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout and "--betty" in proc.stdout


def test_the_workload_script_imports_without_ziggurat() -> None:
    """``engine_compare`` runs ``benchmarks.workloads`` with Betty's interpreter, where ziggurat
    is not installed: the script and what it imports must not need it."""
    code = "import sys; sys.modules['ziggurat'] = None; import benchmarks.workloads"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
