"""SAMA: optimizer-aware first-order hypergradients (Choe et al., NeurIPS 2023, arXiv 2310.05674).

SAMA replaces the inverse Hessian by the Jacobian of the lower optimizer's update with respect
to its gradient, ``D = du/dg`` (diagonal for Adam), so ``v^T dw*/dlam ~ -(d^2 f/dlam dw)(D v)``,
with the mixed product taken by central finite differences (no second-order autograd).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks, _tree
from .._products import mixed_vjp_fd
from .._types import InnerLoss, Params
from ._base import NO_CONTEXT, HopContext, HopInfo, HopResult, Method, check_inputs


def adam_preconditioner(
    exp_avg: Params,
    exp_avg_sq: Params,
    last_grad: Params,
    *,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Params:
    """Diagonal of ``du/dg`` for the Adam update ``u = lr m_hat / (sqrt(v_hat) + eps)``.

    ``exp_avg`` and ``exp_avg_sq`` are the moments *after* the step that consumed ``last_grad``
    (as ``torch.optim.Adam`` stores them). With ``s = sqrt(v / bc2)``::

        du/dg = lr / bc1 * [(1 - b1) / (s + eps) - m (1 - b2) g / (bc2 s (s + eps)^2)]

    which, without bias correction and with ``eps -> 0``, is the
    ``[(1-b1) b2 v_old - b1 (1-b2) g m_old] / v^{3/2}`` form of the SAMA paper.
    """
    if step < 1:
        raise ValueError(f"adam_preconditioner needs a step >= 1 (after one update), got {step}")
    b1, b2 = betas
    bc1, bc2 = 1 - b1**step, 1 - b2**step
    keys = list(exp_avg)
    if not keys:
        return {}
    m, v, g = (
        [exp_avg[k] for k in keys],
        [exp_avg_sq[k] for k in keys],
        [last_grad[k] for k in keys],
    )
    # du/dg = -lr / bc1 * [(1 - b2) m g / (bc2 s (s + eps)) - (1 - b1)] / (s + eps), over all
    # tensors at once (one call per pass, not per tensor) and in place where possible: it runs
    # on every parameter at every upper step. Where s = 0, v = 0 and so g = 0: clamping the
    # product s (s + eps) keeps that term at 0. (Clamping s alone did not: tiny * eps
    # underflows to 0 in float32, and 0 / 0 made the preconditioner NaN for any parameter that
    # never had a gradient.) Negating through the last factor is exact, so the value is the
    # same as lr / bc1 * [(1 - b1) - ...] / (s + eps).
    s = torch._foreach_div(v, bc2)
    torch._foreach_sqrt_(s)
    denom = torch._foreach_add(s, eps)
    term = torch._foreach_mul(m, g)
    torch._foreach_mul_(term, (1 - b2) / bc2)
    torch._foreach_mul_(s, denom)
    torch._foreach_clamp_min_(s, torch.finfo(s[0].dtype).tiny)
    torch._foreach_div_(term, s)
    torch._foreach_sub_(term, 1 - b1)
    torch._foreach_div_(term, denom)
    torch._foreach_mul_(term, -lr / bc1)
    return dict(zip(keys, term, strict=True))


@dataclass(frozen=True)
class Sama(Method):
    """SAMA hop: ``-(d^2 f/dlam dw)(D v)`` by central differences of radius ``radius``.

    ``D`` comes from ``context.preconditioner`` (see :func:`adam_preconditioner`); without one,
    ``D = I`` and SAMA is DARTS with radius ``radius`` (Betty behaves the same for SGD).
    Costs two gradients (2 G).
    """

    radius: float = 1.0

    def __post_init__(self) -> None:
        _checks.positive("sama radius", self.radius)

    @property
    def name(self) -> str:
        return "sama"

    @property
    def finite_differences(self) -> bool:
        return True

    @property
    def first_order_only(self) -> bool:
        return True

    @property
    def needs_preconditioner(self) -> bool:
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
        u = _tree.detach(v)
        if context.preconditioner is not None:
            _tree.check_same_shapes(w, context.preconditioner, "sama preconditioner")
            u = _tree.mul(context.preconditioner, u)
        out = _tree.neg(mixed_vjp_fd(inner, w, lam, u, self.radius))
        return HopResult(vjp=out, info=HopInfo(self.name))
