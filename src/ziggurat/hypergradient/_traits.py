"""Functional spellings of two declared capabilities (see ``hypergradient.Method``)."""

from __future__ import annotations

from ._base import Method


def uses_finite_differences(method: Method) -> bool:
    """``method.finite_differences``: whether it evaluates the inner loss at ``w +- h u``."""
    return method.finite_differences


def first_order_only(method: Method) -> bool:
    """``method.first_order_only``: whether it needs only gradients (no double backward)."""
    return method.first_order_only
