"""Keyword-only construction shared by the option dataclasses."""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import _checks


def assign(obj: Any, kwargs: dict[str, Any]) -> None:
    """Set every dataclass field of ``obj`` from ``kwargs`` or its default.

    Raises ``TypeError`` listing the unknown keywords and the valid ones.
    """
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(
            f"{type(obj).__name__} got unknown option(s) {unknown}; valid options: {sorted(names)}"
        )
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, kwargs.get(f.name, f.default))


def check_flags(obj: Any) -> None:
    """Every field of ``obj`` annotated ``bool`` must hold ``True`` or ``False``: a string such
    as ``"false"`` is truthy and would turn the feature on."""
    for f in dataclasses.fields(obj):
        if f.type in ("bool", bool):
            _checks.boolean(f"{type(obj).__name__} {f.name}", getattr(obj, f.name))
