"""Unrolled (iterative) differentiation through differentiable optimizer steps.

``w_T = Phi_T(w_0, lam)`` is ``steps`` updates of a functional optimizer on ``f(., lam)``
starting from ``w_0 = w``; the hop returns ``v^T dw_T/dlam`` by reverse mode (Maclaurin et al.
2015; Franceschi et al. 2017). With ``truncate=K`` only the last ``K`` steps are differentiated
(Shaban et al. 2019): earlier steps still run, but their dependence on ``lam`` is cut.
With ``checkpoint_segments`` the differentiated steps are swept in reverse segment by segment
from stored boundary states (:mod:`._checkpoint`): memory ``O(sqrt T)`` instead of ``O(T)``
for about one extra forward pass of every step.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _checks, _tree
from .._products import pullback
from .._second_order import translated
from .._types import InnerLoss, Params
from ..optim import FunctionalOptimizer, OptState, grad_step
from ._base import NO_CONTEXT, HopContext, HopInfo, HopResult, Method, check_inputs
from ._checkpoint import THROUGH_STEPS, Segments, checkpointed_vjp, inner_at, segment_count


def unroll(
    inner: InnerLoss,
    w: Params,
    lam: Params,
    optimizer: FunctionalOptimizer,
    steps: int,
    *,
    differentiable_from: int = 0,
    state: OptState | None = None,
) -> tuple[Params, OptState]:
    """Run ``steps`` optimizer steps on ``f(., lam)`` from ``w``.

    Steps with index ``>= differentiable_from`` keep their graph (``create_graph=True``), so the
    result is differentiable with respect to ``lam`` (and the starting point of that segment).
    """
    state = optimizer.init(w) if state is None else state
    loss = inner_at(inner, lam)
    for t in range(steps):
        if t == differentiable_from:
            w, state = _tree.detach(w), state.detach()
        w, state = grad_step(loss, w, optimizer, state, keep=t >= differentiable_from)
    return w, state


@dataclass(frozen=True)
class Unrolled(Method):
    """``v^T dw_T/dlam`` through ``steps`` differentiable optimizer steps from ``w``.

    Memory grows with the number of differentiated steps ``K`` (``truncate`` or ``steps``).
    ``checkpoint_segments`` (``"sqrt"`` or an int ``S``) bounds it instead: ``S`` stored
    boundary states plus the graph of one segment of ``ceil(K / S)`` steps, for one extra
    graph-free forward pass of every differentiated step. The result is the same.
    """

    optimizer: FunctionalOptimizer
    steps: int = 1
    truncate: int | None = None
    checkpoint_segments: Segments = None

    def __post_init__(self) -> None:
        _checks.int_at_least("unrolled steps", self.steps, 1)
        if self.truncate is not None:
            _checks.int_at_least("unrolled truncate", self.truncate, 1)
        if self.checkpoint_segments is not None:
            segment_count(self.steps, self.checkpoint_segments)  # validates

    @property
    def name(self) -> str:
        return "unrolled"

    def __call__(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        v: Params,
        context: HopContext = NO_CONTEXT,
    ) -> HopResult:
        check_inputs(w, lam, v)
        lam_ = _tree.leaves(lam)
        k = self.steps if self.truncate is None else min(self.truncate, self.steps)
        if self.checkpoint_segments is not None:
            out = checkpointed_vjp(
                inner,
                w,
                lam_,
                v,
                self.optimizer,
                self.steps,
                segment_count(k, self.checkpoint_segments),
                differentiable_from=self.steps - k,
            )
            return HopResult(vjp=out, info=HopInfo(self.name, self.steps))
        w_t, _ = unroll(
            inner,
            _tree.detach(w),
            lam_,
            self.optimizer,
            self.steps,
            differentiable_from=self.steps - k,
        )
        with translated(THROUGH_STEPS):
            out = pullback(((w_t[key], v[key]) for key in v), lam_)
        return HopResult(vjp=out, info=HopInfo(self.name, self.steps))
