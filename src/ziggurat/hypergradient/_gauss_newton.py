"""Gauss-Newton curvature: a positive semi-definite stand-in for the inner Hessian.

For an inner loss of the form ``f(w, lam) = l(g(w, lam)) + r(w, lam)`` (a loss ``l`` of a
model's outputs ``g`` plus a regulariser ``r``), the Hessian splits as::

    H = J^T (d^2 l/dg^2) J  +  sum_i (dl/dg_i) d^2 g_i/dw^2  +  d^2 r/dw^2,     J = dg/dw.

The generalised Gauss-Newton matrix keeps the first and last terms and drops the middle one
(Schraudolph 2002, "Fast curvature matrix-vector products for second-order gradient descent";
Martens 2014, "New insights and perspectives on the natural gradient method"). It is positive
semi-definite whenever ``l`` is convex in the outputs and ``r`` is convex in ``w``, so CG,
Neumann and fixed-point solves never meet negative curvature.

It coincides with the Hessian exactly when the dropped term vanishes: when the outputs are
linear (affine) in ``w`` (linear and logistic regression, a network's last layer with the rest
frozen) or when the loss gradient ``dl/dg`` is zero at ``w`` (a model that interpolates a
squared-error target). For a non-linear network away from interpolation they differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _tree
from .._products import Linearization, scalar_loss
from .._types import MatVec, Params

Outputs = Callable[[Params, Params], Tensor]
"""``g(w, lam) -> Tensor``: the model's outputs (e.g. logits) on the inner data."""

OutputLoss = Callable[[Tensor], Tensor]
"""``l(out) -> scalar``: the loss as a function of the outputs only."""

Regularizer = Callable[[Params, Params], Tensor]
"""``r(w, lam) -> scalar``: the part of the inner loss whose Hessian is taken exactly."""


def _require_callable(name: str, value: object) -> None:
    if not callable(value):
        raise ValueError(f"gauss_newton {name} must be callable, got {value!r}")


@dataclass(frozen=True)
class GaussNewton:
    """Curvature ``u -> J^T (d^2 l/dg^2) J u + (d^2 r/dw^2) u`` at the linearisation point.

    Pass it as ``curvature=`` to :func:`cg`, :func:`neumann`, :func:`fixed_point` or
    :func:`exact`. The inner loss given to the method must equal ``l(g(w, lam)) + r(w, lam)``;
    the mixed product ``(d^2 f/dlam dw) u`` is still taken from that inner loss, only ``H`` is
    replaced.

    Each product costs one ``torch.func.jvp`` through the outputs (``J u``), one
    forward-over-reverse product with the loss's Hessian in output space, and one reuse of a
    cached ``torch.func.vjp`` (``J^T``); the regulariser adds one forward-over-reverse product.
    ``outputs``, ``loss`` and ``regularizer`` must therefore be traceable by ``torch.func``
    (no in-place edits of ``.data``, no ``torch.autograd.grad`` inside).

    Attributes:
        outputs: ``g(w, lam) -> Tensor``.
        loss: ``l(out) -> scalar``, convex in ``out`` for a positive semi-definite product.
        regularizer: optional ``r(w, lam) -> scalar`` whose Hessian is added exactly.
    """

    outputs: Outputs
    loss: OutputLoss
    regularizer: Regularizer | None = None

    def __post_init__(self) -> None:
        _require_callable("outputs", self.outputs)
        _require_callable("loss", self.loss)
        if self.regularizer is not None:
            _require_callable("regularizer", self.regularizer)

    def matvec(self, lin: Linearization) -> MatVec:
        w, lam = _tree.detach(lin.w), _tree.detach(lin.lam)

        def model(w_: Params) -> Tensor:
            out = self.outputs(w_, lam)
            if not isinstance(out, Tensor):
                raise TypeError(
                    f"gauss_newton outputs must return a tensor, got {type(out).__name__}"
                )
            return out

        out, pullback = torch.func.vjp(model, w)
        out = out.detach()
        loss_grad = torch.func.grad(lambda o: scalar_loss(self.loss(o), "gauss_newton loss"))
        regularizer = self.regularizer

        def product(u: Params) -> Params:
            ud = _tree.detach(u)
            _, ju = torch.func.jvp(model, (w,), (ud,))
            _, hju = torch.func.jvp(loss_grad, (out,), (ju,))
            (result,) = pullback(hju)
            if regularizer is not None:
                reg_grad = torch.func.grad(
                    lambda w_: scalar_loss(regularizer(w_, lam), "gauss_newton regularizer")
                )
                result = _tree.add(result, torch.func.jvp(reg_grad, (w,), (ud,))[1])
            return _tree.detach(result)

        return product


def gauss_newton(
    outputs: Outputs, loss: OutputLoss, *, regularizer: Regularizer | None = None
) -> GaussNewton:
    """Build the Gauss-Newton curvature for ``f(w, lam) = loss(outputs(w, lam)) + r(w, lam)``."""
    return GaussNewton(outputs, loss, regularizer)
