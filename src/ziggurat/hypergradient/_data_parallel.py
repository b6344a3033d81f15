"""Data-parallel hypergradients: the global-batch answer from per-rank shards.

Each rank holds the same parameters and a shard of the global batch; every loss is a mean over
its shard, so the global-batch loss is the mean of the per-rank losses. Gradients, Hessian-vector
products and mixed products are linear in the loss, hence global-batch products are the means
of per-rank products. A best-response vjp is linear in the data *given* its cotangent ``v`` for
first-order and identity-solver methods (DARTS, SAMA), but not for a solver such as CG, whose
answer ``H^{-1} v`` depends on the whole Hessian. :class:`DataParallel` makes every method exact:

* the cotangent ``v`` entering the hop is averaged (``dL/dw`` of the global batch);
* an implicit method's curvature is wrapped so every ``H u`` inside the solver is averaged
  (a distributed matvec: the solve is the global-batch solve, on every rank identically).

The hop's output is *not* averaged here: it is averaged at the next hop (as its cotangent) or,
on the last hop, together with the direct gradient at the update (one all-reduce per update).
``average`` is an argument, so this file never imports ``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .._products import Linearization
from .._types import InnerLoss, MatVec, Params
from ._base import NO_CONTEXT, HopContext, HopResult, Method
from ._strategies import Curvature

Average = Callable[[Params], Params]
"""A collective mean of a tree over the ranks of a data-parallel group."""


@dataclass(frozen=True)
class AveragedCurvature(Curvature):
    """``u -> mean over ranks of H_r u``: the global-batch Hessian-vector product."""

    curvature: Curvature
    average: Average

    def matvec(self, lin: Linearization) -> MatVec:
        local = self.curvature.matvec(lin)
        return lambda u: self.average(local(u))

    @property
    def second_order(self) -> bool:
        return self.curvature.second_order

    @property
    def finite_differences(self) -> bool:
        return self.curvature.finite_differences


@dataclass(frozen=True)
class DataParallel(Method):
    """A method evaluated on a sharded batch that returns a global-batch-exact contribution.

    Attributes:
        method: the wrapped method (any ``Method``).
        average: the collective mean over ranks.
    """

    method: Method
    average: Average

    @property
    def name(self) -> str:
        return self.method.name

    # the wrapped method's capabilities, forwarded one by one
    @property
    def reads_cotangent(self) -> bool:
        return self.method.reads_cotangent

    @property
    def warm_starts(self) -> bool:
        return self.method.warm_starts

    @property
    def identically_zero(self) -> bool:
        return self.method.identically_zero

    @property
    def finite_differences(self) -> bool:
        return self.method.finite_differences

    @property
    def first_order_only(self) -> bool:
        return self.method.first_order_only

    @property
    def evaluates_inner(self) -> bool:
        return self.method.evaluates_inner

    @property
    def needs_preconditioner(self) -> bool:
        return self.method.needs_preconditioner

    @property
    def stateful(self) -> bool:
        return self.method.stateful

    @property
    def restricts_to_first_order(self) -> bool:
        return self.method.restricts_to_first_order

    @property
    def follows_trajectory(self) -> bool:
        return self.method.follows_trajectory

    def __call__(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        v: Params,
        context: HopContext = NO_CONTEXT,
    ) -> HopResult:
        return self.method(inner, w, lam, self.average(v), context)


def data_parallel(method: Method, average: Average) -> DataParallel:
    """Wrap ``method`` so that its cotangent and its curvature products are averaged over ranks.

    Methods with curvature products (the implicit family and ``stochastic``) get an
    :class:`AveragedCurvature` through :meth:`Method.with_curvature`; the others (SAMA,
    first-order) return themselves there and need only the averaged cotangent.
    """
    averaged = method.with_curvature(lambda c: AveragedCurvature(c, average))
    return DataParallel(averaged, average)
