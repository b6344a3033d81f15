"""Gradients in ``w`` of a pure loss on an FSDP2-sharded level.

A pure evaluation of a sharded level writes ``w`` into the shards in place, without autograd
(``Problem.swap_params``): FSDP2's unsharding hooks would override a functional substitution.
The loss then depends on ``w`` only through FSDP2's all-gather, which ``torch.autograd.grad``
does not see, so its gradient in ``w`` is not connected. :class:`ShardedLoss` connects it: a
first-order ``torch.autograd.Function`` whose forward evaluates the loss with FSDP2's forward
(``w`` written into the shards for it) and at once runs ``loss.backward()`` on it, while the
gathered copy still holds ``w``: FSDP2 reduce-scatters the shards' gradients into their
``.grad``, and the upper parameters' gradients land on leaves made for the call. Every other
``.grad`` the pass could touch is set aside and put back (:func:`backward_keeping_grads`).
The Function's backward scales those gradients by the incoming one. The gradients are taken
whether or not they are asked for, which is why the Function is used only when some ``w``
requires grad: a method asking for a gradient in ``w`` (a gradient in ``lam`` alone runs
the plain forward, through which autograd reaches the replicated ``lam``).

The data-parallel contract (``hypergradient.DataParallel``, ``systems.ShardedDataParallel``):
FSDP2's reduce-scatter averages over ranks, so the gradient in the sharded ``w`` is the global
batch's already, and the group's averages pass sharded tensors through; the gradient in the
replicated ``lam`` is this rank's, averaged at the update as every hop's output is.

The loss is differentiable once (``once_differentiable``): the methods that run on a sharded
level need only first-order autograd, and that is what the engine admits there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .._types import InnerLoss, Params


def backward_keeping_grads(
    loss: Tensor, inputs: list[Tensor], held: Iterable[Tensor], grad: Tensor | None = None
) -> tuple[Tensor | None, ...]:
    """The gradients of ``loss`` on ``inputs`` by ``loss.backward(grad)``, leaving every
    ``.grad`` of ``held`` and ``inputs`` as it was.

    FSDP2 delivers a sharded parameter's gradient only through ``.grad`` (its reduce-scatter
    runs in backward hooks; ``torch.autograd.grad`` never sees the sharded tensors). Gradients
    already held (an open accumulation window) are set aside for the pass and put back after
    it, so the one place that writes gradients stays ``Problem._apply_gradients``.
    """
    kept = {id(t): t for t in held}
    kept.update({id(t): t for t in inputs})
    saved = {key: t.grad for key, t in kept.items()}
    for t in kept.values():
        t.grad = None
    try:
        loss.backward(grad)
        return tuple(t.grad for t in inputs)
    finally:
        for key, t in kept.items():
            t.grad = saved[key]


class ShardedLevel(Protocol):
    """What :func:`differentiable_in_shards` needs of a level of the hop."""

    @property
    def sharded(self) -> bool: ...

    def named_trainable_parameters(self) -> Params: ...


@dataclass(frozen=True)
class _Call:
    """One evaluation: the loss, the two levels (``w``'s and ``lam``'s), and the ``.grad`` to
    keep."""

    inner: InnerLoss
    lower: ShardedLevel
    upper: ShardedLevel
    held: Callable[[], list[Tensor]]
    w_keys: list[str]
    lam_keys: list[str]


def _side(
    values: tuple[Tensor, ...], keys: list[str], level: ShardedLevel
) -> tuple[Params, list[Tensor]]:
    """The values a side is evaluated at, and the tensors its gradient lands on: the live
    shards of a sharded level (its pure loss writes the values into them), else fresh leaves."""
    if level.sharded:
        live = level.named_trainable_parameters()
        return dict(zip(keys, (t.detach() for t in values), strict=True)), [live[k] for k in keys]
    leaves = {
        k: t.detach().requires_grad_(t.requires_grad) for k, t in zip(keys, values, strict=True)
    }
    return leaves, list(leaves.values())


class ShardedLoss(torch.autograd.Function):
    """``f(w, lam)`` of a hop with an FSDP2-sharded level, differentiable once in ``w`` and
    ``lam``.

    ``apply(call, *w_values, *lam_values)``. The forward pass takes the gradients at once,
    with the values still in the gathered copy its FSDP2 forward used: a backward pass of FSDP2
    run later, from inside autograd's own backward pass (reentrant), crashes the process.
    """

    @staticmethod
    def forward(ctx: Any, call: _Call, *values: Tensor) -> Tensor:
        n = len(call.w_keys)
        w, w_in = _side(values[:n], call.w_keys, call.lower)
        lam, lam_in = _side(values[n:], call.lam_keys, call.upper)
        with torch.enable_grad():
            loss = call.inner(w, lam)
            inputs = w_in + lam_in
            if loss.requires_grad:
                grads = backward_keeping_grads(loss, inputs, call.held())
            else:
                grads = (None,) * len(inputs)
        ctx.grads = grads
        return loss.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        grads = [None if g is None else g * grad for g in ctx.grads]
        return (None, *grads)


def differentiable_in_shards(
    inner: InnerLoss, lower: ShardedLevel, upper: ShardedLevel, held: Callable[[], list[Tensor]]
) -> InnerLoss:
    """``inner`` (a pure loss of a hop from ``lower`` to ``upper``, one of them sharded) with
    gradients in the sharded side's values connected.

    ``held`` lists every tensor whose ``.grad`` a backward pass must leave alone (the trainable
    parameters of the whole program). When no gradient is asked of a sharded side, ``inner``
    runs as it is: plain autograd reaches the replicated side.
    """

    def loss(w: Params, lam: Params) -> Tensor:
        wants_w = lower.sharded and any(t.requires_grad for t in w.values())
        wants_lam = upper.sharded and any(t.requires_grad for t in lam.values())
        if not (wants_w or wants_lam):
            return inner(w, lam)
        call = _Call(inner, lower, upper, held, list(w), list(lam))
        out: Tensor = ShardedLoss.apply(call, *w.values(), *lam.values())
        return out

    return loss
