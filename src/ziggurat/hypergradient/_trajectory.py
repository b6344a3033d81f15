"""The hop through an unrolled level: its recorded trajectory instead of a pure loss."""

from __future__ import annotations

from dataclasses import dataclass

from .._products import pullback
from .._second_order import translated
from .._types import InnerLoss, Params
from ._base import NO_CONTEXT, HopContext, HopInfo, HopResult, Method


@dataclass(frozen=True)
class Trajectory(Method):
    """``v^T dw_T/dlam`` through the recorded graph of an unrolled inner loop.

    ``w`` must be the live parameters of the unrolled level and ``lam`` the live parameters of
    the level above; ``inner`` is not used. On the first hop of a path the upper level's own
    backward pass already runs through the trajectory (``follows_trajectory``).
    """

    @property
    def name(self) -> str:
        return "trajectory"

    @property
    def follows_trajectory(self) -> bool:
        return True

    def __call__(
        self, inner: InnerLoss, w: Params, lam: Params, v: Params, context: HopContext = NO_CONTEXT
    ) -> HopResult:
        with translated("the backward pass through an unrolled level's recorded steps"):
            out = pullback(((w[k], v[k]) for k in v), lam, retain_graph=True)
        return HopResult(out, HopInfo(self.name))
