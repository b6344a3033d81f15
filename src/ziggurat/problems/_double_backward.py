"""What a level is told when its loss cannot be differentiated twice.

The core raises :class:`~ziggurat._second_order.DoubleBackwardError` naming the operation; here
it becomes a ``ValueError`` that also names the problem and the ``Config`` choices that run
instead (:func:`~ziggurat.configs.first_order_choices`). Fused attention never gets here: the
core evaluates every twice-differentiated forward pass with its math kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._second_order import DoubleBackwardError
from ..configs import first_order_choices


def hop_error(lower: str, upper: str, method: str, err: DoubleBackwardError) -> ValueError:
    """A hop through ``lower`` (whose best response ``upper`` differentiates) met ``err``."""
    return ValueError(
        f"problem {lower!r} (the lower level of {upper!r}) uses the hypergradient method "
        f"{method!r}, which differentiates its loss twice, but the second backward pass "
        f"reaches {err.operation}, which has no derivative. Use a method that needs only "
        f"first-order autograd on {lower!r}: {first_order_choices()}"
    )


def unrolled_error(levels: Sequence[str], upper: str, err: DoubleBackwardError) -> ValueError:
    """The backward pass of ``upper`` through the unrolled steps of ``levels`` met ``err``."""
    names = ", ".join(repr(n) for n in levels)
    which = (
        f"problem {names} is an IterativeProblem"
        if len(levels) == 1
        else (f"problems {names} are IterativeProblems")
    )
    return ValueError(
        f"{which}: {upper!r} differentiates through the unrolled steps, i.e. their loss "
        f"twice, but the second backward pass reaches {err.operation}, which has no "
        f"derivative. Make {names} an ImplicitProblem with a method that needs only "
        f"first-order autograd: {first_order_choices()}"
    )
