"""Worked examples on offline data; each module has ``run(steps, method, seed, progress)``.

``ziggurat demo NAME`` runs one of :data:`EXAMPLES` and prints its results table.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ziggurat.examples.result import Result as Result
from ziggurat.examples.result import Row as Row

EXAMPLES = ("reweight", "hpo", "maml", "fewshot", "three_level", "nas", "transformer")
DEFAULT = "reweight"


def load(name: str) -> ModuleType:
    """The example module called ``name`` (one of :data:`EXAMPLES`)."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; choose one of {', '.join(EXAMPLES)}")
    return importlib.import_module(f"{__name__}.{name}")
