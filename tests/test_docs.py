"""The documentation pages stay true to the code they describe.

Code on the pages is included from the sources by ``pymdownx.snippets`` (a missing file or
section fails ``mkdocs build --strict``); what the pages state in words about the examples is
checked here against the examples themselves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ziggurat.cli import build_parser
from ziggurat.examples import EXAMPLES, load

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DEFAULTS = re.compile(
    r"`ziggurat demo (\w+)` runs (\d+) steps by default; `--method` takes (.+?)\.", re.S
)


def _defaults(page: Path) -> tuple[str, int, list[str]]:
    """The sentence ``ziggurat demo NAME runs N steps by default; --method takes ...``."""
    match = DEFAULTS.search(page.read_text())
    assert match, f"{page.name}: no sentence stating the defaults"
    methods = re.findall(r"`(\w+)`", match.group(3))
    return match.group(1), int(match.group(2)), methods


@pytest.mark.parametrize("name", EXAMPLES)
def test_tutorial_states_the_examples_defaults(name: str) -> None:
    module = load(name)
    stated, steps, methods = _defaults(DOCS / "tutorials" / f"{name}.md")
    assert stated == name
    assert steps == module.DEFAULT_STEPS
    assert methods == list(module.METHODS)  # in order: the first is the default
    text = " ".join((DOCS / "tutorials" / f"{name}.md").read_text().split())
    assert f"`{module.METHODS[0]}` (the default)" in text


def test_a_wrong_default_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "reweight.md"
    page.write_text("`ziggurat demo reweight` runs 60 steps by default; `--method` takes `cg`.")
    assert _defaults(page) == ("reweight", 60, ["cg"])
    assert _defaults(page)[1] != load("reweight").DEFAULT_STEPS


def test_every_flag_on_the_pages_exists() -> None:
    """Every ``ziggurat demo ... --flag`` a page or the README mentions is an option of
    the command line."""
    parser = build_parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]  # type: ignore[union-attr]
    known = {opt for action in demo._actions for opt in action.option_strings}
    pages = [*DOCS.rglob("*.md"), ROOT / "README.md"]
    used = set()
    for page in pages:
        for command in re.findall(r"ziggurat demo[^`\n]*", page.read_text()):
            used |= set(re.findall(r"--[a-z][a-z-]*", command))
    assert used, "no page shows a demo option"
    assert used <= known, sorted(used - known)


def test_every_example_has_a_tutorial_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in EXAMPLES:
        assert f"tutorials/{name}.md" in nav, name
        assert (DOCS / "tutorials" / f"{name}.md").is_file(), name


def test_readme_links_point_to_files() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme)
    assert links, "the README links to no page"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing


def test_readme_starts_with_the_two_commands() -> None:
    """The front page: the two commands come before any section."""
    readme = (ROOT / "README.md").read_text()
    first_section = readme.index("\n## ")
    commands = readme.index("# 1. set up and run the main job")
    assert commands < first_section
    assert readme.index("# 2. set up and run the tests") < first_section


def test_the_hypermodel_snippet_prints_what_it_says(capsys: pytest.CaptureFixture[str]) -> None:
    """The tutorial's HyperModel program runs, and prints the validation loss its comment
    quotes."""
    import runpy

    snippet = DOCS / "snippets" / "hypermodel.py"
    quoted = re.search(r"# (\d\.\d+), against", snippet.read_text())
    assert quoted, "the snippet quotes no result"
    runpy.run_path(str(snippet), run_name="__main__")
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert round(printed, 3) == float(quoted.group(1))
