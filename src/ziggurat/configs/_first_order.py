"""The ``Config`` choices that need only first-order autograd, named in error messages.

Derived from the presets' declared capabilities, so a message never lists a method that would
fail: where double backward does not run (an operation without one, an FSDP2-sharded level).
"""

from __future__ import annotations

from functools import cache

from ..hypergradient import CONFIG_TYPES, PRODUCT_RULES, PRODUCT_TYPES, from_name


def _quoted(names: list[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


@cache
def first_order_choices() -> str:
    """``Config(type=...)`` values (and ``curvature=`` pairings) whose method is
    ``first_order_only``, as one phrase."""
    plain = [t for t in CONFIG_TYPES if from_name(t).first_order_only]
    rule = PRODUCT_RULES["finite_difference"]
    products = [
        t for t in CONFIG_TYPES if t in PRODUCT_TYPES and from_name(t, **rule).first_order_only
    ]
    return (
        f"Config(type={_quoted(plain)}); Config(type={_quoted(products)}, "
        "curvature='finite_difference'); or Config(hypergradient=...) with any "
        "ziggurat.hypergradient.Method whose first_order_only is True, such as "
        "fixed_point(..., curvature=FiniteDifference(), mixed=MixedFiniteDifference())"
    )
