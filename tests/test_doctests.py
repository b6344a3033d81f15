"""The ``Examples:`` of the public functions' docstrings run as doctests.

The API reference shows these examples; running them keeps them true. Each module listed here
must hold at least one example, so a deleted example fails too.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = (
    "ziggurat._extras",
    "ziggurat._products",
    "ziggurat._verification._verify",
    "ziggurat.hypergradient._presets",
    "ziggurat.linalg._cg",
    "ziggurat.linalg._dense",
    "ziggurat.linalg._neumann",
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name) if t.examples]
    assert tests, f"{name} has no docstring examples"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_a_wrong_example_fails() -> None:
    """The runner above reports a failure, not only an error."""

    def wrong() -> None:
        """
        >>> 1 + 1
        3
        """

    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(wrong, "wrong"):
        runner.run(test, out=lambda _: None)
    assert runner.summarize(verbose=False).failed == 1
