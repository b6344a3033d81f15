"""What a method needs from the loss it differentiates, for callers that must prepare it."""

from __future__ import annotations

from ..linalg._identity import Identity
from ._base import Method
from ._first_order import FirstOrder
from ._implicit import Implicit, MixedFiniteDifference
from ._sama import Sama


def uses_finite_differences(method: Method) -> bool:
    """Whether ``method`` evaluates the inner loss at perturbed points ``w +- h u``.

    DARTS-style mixed products (``Implicit`` with :class:`MixedFiniteDifference`) and SAMA do.
    Such evaluations must run at full precision: a perturbation below the resolution of a
    reduced-precision forward (bf16 keeps 8 bits) is rounded away.
    """
    if isinstance(method, Sama):
        return True
    return isinstance(method, Implicit) and isinstance(method.mixed, MixedFiniteDifference)


def first_order_only(method: Method) -> bool:
    """Whether ``method`` needs only gradients (no second-order autograd).

    DARTS (identity solver, finite-difference mixed product), SAMA and first-order qualify;
    every solver that takes Hessian-vector products, and double-backward mixed products, do not.
    """
    if isinstance(method, (FirstOrder, Sama)):
        return True
    return (
        isinstance(method, Implicit)
        and isinstance(method.mixed, MixedFiniteDifference)
        and isinstance(method.solver, Identity)
    )
