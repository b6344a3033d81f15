"""The first-order method: no term through the lower level."""

from __future__ import annotations

from dataclasses import dataclass

from .. import _tree
from .._types import InnerLoss, Params
from ._base import NO_CONTEXT, HopContext, HopInfo, HopResult, Method, check_inputs


@dataclass(frozen=True)
class FirstOrder(Method):
    """Treats ``dw*/dlam`` as zero: the upper level keeps only its direct gradient.

    Costs nothing, not even the cotangent: it reads no ``v`` (``reads_cotangent``), so the
    engine skips the backward pass into the lower level's parameters that would produce it.
    Its error is the whole indirect term, which is what ``verify`` reports.
    """

    @property
    def name(self) -> str:
        return "first_order"

    @property
    def reads_cotangent(self) -> bool:
        """``False``: the answer does not depend on ``v``, so callers need not compute it."""
        return False

    @property
    def first_order_only(self) -> bool:
        return True

    @property
    def identically_zero(self) -> bool:
        """``True``: the engine takes no hop through it, and a level whose loss does not read
        its own parameters and gets nothing else takes no optimizer step."""
        return True

    def __call__(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        v: Params,
        context: HopContext = NO_CONTEXT,
    ) -> HopResult:
        check_inputs(w, lam, v)
        return HopResult(vjp=_tree.zeros_like(_tree.detach(lam)), info=HopInfo(self.name))
