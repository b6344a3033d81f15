"""Validation helpers for options, raised where the option enters (``ValueError``)."""

from __future__ import annotations

import math


def _is_number(value: object) -> bool:
    # bool is an int subclass, but True is never meant as a number here
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive(name: str, value: float) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def non_negative(name: str, value: float) -> None:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def boolean(name: str, value: object) -> None:
    """A real ``bool``: a string such as ``"false"`` is truthy and would turn a feature on."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def text(name: str, value: object, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        allowed = "a string or None" if optional else "a string"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def int_at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def one_of(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
