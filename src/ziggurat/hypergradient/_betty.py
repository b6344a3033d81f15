"""Betty's ``jvp_fn_mapping``, read-only, on ziggurat's presets.

Betty selects a lower level's method by looking ``Config.type`` up in this table, and its
tutorial adds custom methods by inserting ``fn(vector, curr, prev, sync)`` functions, which read
and write the problems' state. ziggurat's methods are values instead: any
``method(inner, w, lam, v, context) -> HopResult``, passed as ``Config(hypergradient=method)``.
So the table maps each name ``Config(type=...)`` accepts to the preset it builds, and refuses
insertions with that explanation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

from ._base import Method
from ._presets import CONFIG_TYPES, PRESETS

CUSTOM_METHODS = (
    "ziggurat methods are values, not entries of a table: write a callable "
    "method(inner, w, lam, v, context) -> HopResult (or combine a solver and a mixed-product "
    "rule with ziggurat.hypergradient.Implicit) and pass it to the lower problem as "
    "Config(hypergradient=method). Betty's fn(vector, curr, prev, sync) signature, which reads "
    "the problems' state, is not supported"
)


class MethodTable(Mapping[str, Callable[..., Method]]):
    """``Config.type`` names to the preset builders they select (read-only)."""

    def __getitem__(self, name: str) -> Callable[..., Method]:
        if name not in CONFIG_TYPES:
            raise KeyError(
                f"{name!r} is not a Config(type=...) method; the names are {list(CONFIG_TYPES)}"
            )
        return PRESETS[name]

    def __iter__(self) -> Iterator[str]:
        return iter(CONFIG_TYPES)

    def __len__(self) -> int:
        return len(CONFIG_TYPES)

    def __setitem__(self, name: str, fn: Any) -> NoReturn:
        raise TypeError(f"jvp_fn_mapping is read-only: {CUSTOM_METHODS}")

    def __repr__(self) -> str:
        return f"jvp_fn_mapping({', '.join(CONFIG_TYPES)})"


jvp_fn_mapping = MethodTable()
