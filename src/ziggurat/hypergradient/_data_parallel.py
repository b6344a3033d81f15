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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .._products import Linearization
from .._types import InnerLoss, MatVec, Params
from ._base import NO_CONTEXT, HopContext, HopResult, Method
from ._implicit import Curvature

Average = Callable[[Params], Params]
"""A collective mean of a tree over the ranks of a data-parallel group."""


@dataclass(frozen=True)
class AveragedCurvature:
    """``u -> mean over ranks of H_r u``: the global-batch Hessian-vector product."""

    curvature: Curvature
    average: Average

    def matvec(self, lin: Linearization) -> MatVec:
        local = self.curvature.matvec(lin)
        return lambda u: self.average(local(u))


@dataclass(frozen=True)
class DataParallel:
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

    @property
    def uses_warm_start(self) -> bool:
        return bool(getattr(self.method, "uses_warm_start", False))

    @property
    def reads_cotangent(self) -> bool:
        return bool(getattr(self.method, "reads_cotangent", True))

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

    Methods with a ``curvature`` field (the implicit family and ``stochastic``) get an
    :class:`AveragedCurvature`; others (DARTS's identity solver, SAMA, first-order) need only
    the averaged cotangent.
    """
    curvature = getattr(method, "curvature", None)
    if dataclasses.is_dataclass(method) and curvature is not None:
        method = dataclasses.replace(method, curvature=AveragedCurvature(curvature, average))
    return DataParallel(method, average)
