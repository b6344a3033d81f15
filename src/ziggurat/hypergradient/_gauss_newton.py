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
from .._second_order import check_gradient_graph, translated, twice_differentiable
from .._types import MatVec, Params
from ._strategies import Curvature

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
class GaussNewton(Curvature):
    """Curvature ``u -> J^T (d^2 l/dg^2) J u + (d^2 r/dw^2) u`` at the linearisation point.

    Pass it as ``curvature=`` to :func:`cg`, :func:`neumann`, :func:`fixed_point` or
    :func:`exact`. The inner loss given to the method must equal ``l(g(w, lam)) + r(w, lam)``;
    the mixed product ``(d^2 f/dlam dw) u`` is still taken from that inner loss, only ``H`` is
    replaced.

    The model is evaluated once per linearisation. Each product is then a Jacobian-vector
    product ``J u``, a product with the loss's Hessian in output space and a vector-Jacobian
    product ``J^T z`` (plus the regulariser's Hessian-vector product): backward passes through
    graphs cached by :class:`_Graphs`, like :class:`~ziggurat._products.Linearization` does for
    the Hessian.

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

    @property
    def reads_inner(self) -> bool:
        return False

    def matvec(self, lin: Linearization) -> MatVec:
        return _Graphs(self, _tree.detach(lin.w), _tree.detach(lin.lam)).product


def _backward(
    outs: list[Tensor], wrt: list[Tensor], cotangents: list[Tensor], *, create_graph: bool = False
) -> list[Tensor]:
    """``sum_i cotangent_i^T d out_i / d wrt`` keeping the graph; zeros where unused."""
    live = [(o, c) for o, c in zip(outs, cotangents, strict=True) if o.requires_grad]
    if not live:
        return [torch.zeros_like(t) for t in wrt]
    grads = torch.autograd.grad(
        [o for o, _ in live],
        wrt,
        grad_outputs=[c for _, c in live],
        retain_graph=True,
        create_graph=create_graph,
        allow_unused=True,
    )
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt, strict=True)]


class _Graphs:
    """The graphs a Gauss-Newton product runs through, built once per linearisation.

    * ``J^T y`` for a dummy cotangent ``y`` (with ``create_graph=True``), so that
      ``J u = d(u^T J^T y)/dy`` is one backward pass (the double-vjp form of a jvp);
    * the output ``g(w)`` itself, for ``J^T z``;
    * ``dl/dg`` at the outputs, so ``(d^2 l/dg^2) z`` is one backward pass;
    * ``dr/dw``, so ``(d^2 r/dw^2) u`` is one backward pass.

    A product is then four backward passes through cached graphs and no forward evaluation;
    building fresh ``torch.func`` transforms per product costs about ten times more.
    """

    WHERE = "a Gauss-Newton product"

    def __init__(self, curv: GaussNewton, w: Params, lam: Params) -> None:
        w_ = _tree.leaves(w)
        self.keys, self.w = list(w_), list(w_.values())
        with twice_differentiable():  # J u differentiates J^T y again
            out = curv.outputs(w_, lam)
            if not isinstance(out, Tensor):
                raise TypeError(
                    f"gauss_newton outputs must return a tensor, got {type(out).__name__}"
                )
            self.out = out
            self.dummy = torch.zeros_like(out, requires_grad=True)
            self.jt_dummy = _backward([out], self.w, [self.dummy], create_graph=True)
            self.out_leaf = out.detach().requires_grad_(True)
            loss = scalar_loss(curv.loss(self.out_leaf), "gauss_newton loss")
            self.loss_grad = _backward(
                [loss], [self.out_leaf], [torch.ones_like(loss)], create_graph=True
            )
            self.reg_grad: list[Tensor] = []
            self.losses = [out, loss]
            if curv.regularizer is not None:
                reg = scalar_loss(curv.regularizer(w_, lam), "gauss_newton regularizer")
                self.reg_grad = _backward([reg], self.w, [torch.ones_like(reg)], create_graph=True)
                self.losses.append(reg)
        graphs = [*self.jt_dummy, *self.loss_grad, *self.reg_grad]
        check_gradient_graph(graphs, self.losses, self.WHERE)

    def product(self, u: Params) -> Params:
        ud = [u[k].detach() for k in self.keys]
        with translated(self.WHERE, self.losses):
            (ju,) = _backward(self.jt_dummy, [self.dummy], ud)
            (hju,) = _backward(self.loss_grad, [self.out_leaf], [ju])
            result = _backward([self.out], self.w, [hju])
            if self.reg_grad:
                curv = _backward(self.reg_grad, self.w, ud)
                result = [a + b for a, b in zip(result, curv, strict=True)]
        return {k: t.detach() for k, t in zip(self.keys, result, strict=True)}


def gauss_newton(
    outputs: Outputs, loss: OutputLoss, *, regularizer: Regularizer | None = None
) -> GaussNewton:
    """Build the Gauss-Newton curvature for ``f(w, lam) = loss(outputs(w, lam)) + r(w, lam)``."""
    return GaussNewton(outputs, loss, regularizer)
