"""Stochastic implicit differentiation (Grazzi, Pontil & Salzo, AISTATS 2021).

When the inner loss is an average over a large training set, ``f(w, lam) = E_xi f(w, lam; xi)``,
its Hessian and mixed products can be replaced by averages over mini-batches. Grazzi et al.
("Convergence properties of stochastic hypergradients", AISTATS 2021) show that the error of
the resulting hypergradient is controlled by the variance of those estimates, which falls as
more samples are used, and that the solve and the mixed product should use independent samples.

Here the linear system is built from the average of ``num_batches`` mini-batch losses (so the
operator is one fixed linear map during the solve and any solver, CG included, applies), and the
mixed product from ``mixed_batches`` further, independent mini-batches::

    H_S = (1/|S|) sum_{b in S} d^2 f_b/dw^2,     M_T = (1/|T|) sum_{b in T} d^2 f_b/dlam dw,
    v^T dw*/dlam  ~  -M_T H_S^{-1} v.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import _checks, _tree
from .._products import Linearization, scalar_loss
from .._types import InnerLoss, Params
from ..linalg import LinearSolver
from ._base import NO_CONTEXT, HopContext, HopInfo, HopResult, Method, check_inputs
from ._implicit import DoubleBackward, MixedAutograd, check_strategies
from ._strategies import Curvature, MixedRule

BatchLoss = Callable[[Params, Params, Any], Tensor]
"""``f(w, lam, batch) -> scalar``: the inner loss on one mini-batch, scaled like the full loss
(e.g. a mean over the batch's examples when the full loss is a mean)."""

Sampler = Callable[[], Any]
"""Draws one mini-batch; it owns its random state (see :func:`random_batches`)."""


def averaged(loss: BatchLoss, batches: Sequence[Any]) -> InnerLoss:
    """The pure loss ``(w, lam) -> mean_b loss(w, lam, batch_b)`` over fixed batches."""

    def inner(w: Params, lam: Params) -> Tensor:
        terms = [scalar_loss(loss(w, lam, b), "stochastic batch loss") for b in batches]
        return torch.stack(terms).mean()

    return inner


@dataclass(frozen=True)
class Stochastic(Method):
    """``-M_T H_S^{-1} v`` with ``H_S`` and ``M_T`` averaged over independent mini-batches.

    Each call draws ``num_batches`` batches for the Hessian and ``mixed_batches`` (default:
    ``num_batches``) fresh ones for the mixed product. The ``inner`` argument of the method
    signature, the full-batch loss, is not evaluated: every product comes from ``loss`` on
    sampled batches. ``curvature`` must act on the linearisation it is given
    (:class:`DoubleBackward` or :class:`ForwardOverReverse`). A :class:`GaussNewton` (a
    curvature that does not read the loss it is given) is refused at construction: it
    evaluates its own full-batch ``outputs`` closure, so it would ignore the sampled batches
    and silently give a full-batch ``H`` next to a stochastic mixed product.

    The estimate is biased for finite samples (``E[H_S^{-1}] != H^{-1}``), but its error falls
    as the sample grows: roughly like ``1/sqrt(num_batches)`` for the variance part and
    ``1/num_batches`` for the bias.

    Attributes:
        solver: linear solver for ``H_S^{-1} v``.
        loss: ``f(w, lam, batch)``.
        sample: ``() -> batch``.
        num_batches: batches averaged into the Hessian.
        mixed_batches: batches averaged into the mixed product; ``None`` means ``num_batches``.
        curvature: how ``H_S u`` is computed.
        mixed: how ``M_T u`` is computed: by double backward (:class:`MixedAutograd`, the
            default) or by central differences (:class:`MixedFiniteDifference`, which with
            ``curvature=FiniteDifference()`` makes the method ``first_order_only``).
    """

    solver: LinearSolver
    loss: BatchLoss
    sample: Sampler
    num_batches: int = 1
    mixed_batches: int | None = None
    curvature: Curvature = DoubleBackward()
    mixed: MixedRule = MixedAutograd()

    def __post_init__(self) -> None:
        check_strategies("stochastic", self.solver, self.curvature)
        if not isinstance(self.mixed, MixedRule):
            raise ValueError(
                "stochastic mixed must be a mixed-product rule such as MixedAutograd() or "
                f"MixedFiniteDifference(), got {self.mixed!r}"
            )
        if not self.curvature.reads_inner:
            raise ValueError(
                "stochastic does not support curvature=GaussNewton(...): Gauss-Newton evaluates "
                "its own full-batch outputs closure, not the sampled mini-batches, so the solve "
                "would ignore num_batches. Use curvature=DoubleBackward() (the default) or "
                "ForwardOverReverse() with stochastic, or cg(curvature=GaussNewton(...)) for a "
                "full-batch Gauss-Newton hypergradient"
            )
        if not callable(self.loss):
            raise ValueError(f"stochastic loss must be callable, got {self.loss!r}")
        if not callable(self.sample):
            raise ValueError(f"stochastic sample must be callable, got {self.sample!r}")
        _checks.int_at_least("stochastic num_batches", self.num_batches, 1)
        if self.mixed_batches is not None:
            _checks.int_at_least("stochastic mixed_batches", self.mixed_batches, 1)

    @property
    def name(self) -> str:
        return "stochastic"

    @property
    def warm_starts(self) -> bool:
        return self.solver.warm_starts

    @property
    def evaluates_inner(self) -> bool:
        return False  # every product comes from its own mini-batch loss

    @property
    def finite_differences(self) -> bool:
        curvature = self.solver.uses_operator and self.curvature.finite_differences
        return self.mixed.finite_differences or curvature

    @property
    def first_order_only(self) -> bool:
        curvature = self.solver.uses_operator and self.curvature.second_order
        return not (self.mixed.second_order or curvature)

    def with_curvature(self, wrap: Callable[[Curvature], Curvature]) -> Stochastic:
        return dataclasses.replace(self, curvature=wrap(self.curvature))

    def __call__(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        v: Params,
        context: HopContext = NO_CONTEXT,
    ) -> HopResult:
        check_inputs(w, lam, v)
        n_mixed = self.num_batches if self.mixed_batches is None else self.mixed_batches
        hess_loss = averaged(self.loss, [self.sample() for _ in range(self.num_batches)])
        mixed_loss = averaged(self.loss, [self.sample() for _ in range(n_mixed)])
        matvec = self.curvature.matvec(Linearization(hess_loss, w, lam))
        sol = self.solver(matvec, _tree.detach(v), context.warm_start)
        out = _tree.neg(self.mixed(Linearization(mixed_loss, w, lam), sol.x))
        info = HopInfo(self.name, sol.iterations, sol.residual_value, solution=sol.x)
        return HopResult(out, info)
