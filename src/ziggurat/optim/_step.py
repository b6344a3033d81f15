"""The one differentiable optimizer step: gradients of a loss, then an optimizer update.

Unrolled differentiation (``hypergradient.unroll``), its checkpointed reverse sweep and the
segment replay of checkpointed ``IterativeProblem`` levels all take their steps here, so the
three agree on what a step is: the gradient of each loss with respect to ``w`` (several losses,
e.g. the micro-batches of an accumulation window, are differentiated one at a time and summed
in order), an optional transform of that gradient (clipping), then ``optimizer.step``.

A step that keeps its graph is differentiated twice later (by the caller's backward pass
through it), so its losses are evaluated under
:func:`~ziggurat._second_order.twice_differentiable` and its gradient graph is checked for
operations without a double backward; a step without a graph runs the losses as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .. import _tree
from .._second_order import check_gradient_graph, twice_differentiable
from .._types import Params
from ._base import FunctionalOptimizer, OptState

Losses = Callable[[Params], Tensor | Sequence[Tensor]]
"""``w -> loss`` (a scalar) or ``w -> [loss, ...]`` whose gradients are summed."""


def gradient(losses: Tensor | Sequence[Tensor], w: Params, *, create_graph: bool) -> Params:
    """``sum_i d losses_i / d w``, one backward pass per loss, in order; zeros where unused."""
    total: Params | None = None
    for loss in [losses] if isinstance(losses, Tensor) else losses:
        raw = torch.autograd.grad(
            loss, list(w.values()), create_graph=create_graph, allow_unused=True
        )
        g = _tree.fill_none(raw, w)
        total = g if total is None else _tree.add(total, g)
    if total is None:
        raise ValueError("a differentiable step needs at least one loss")
    return total


def grad_step(
    losses: Losses,
    w: Params,
    optimizer: FunctionalOptimizer,
    state: OptState,
    *,
    keep: bool = True,
    transform: Callable[[Params], Params] | None = None,
) -> tuple[Params, OptState]:
    """One optimizer step on ``losses`` from ``w``.

    With ``keep`` the result stays differentiable with respect to ``w``, the optimizer state
    and whatever the losses read (e.g. upper-level parameters); without it the step runs
    without a graph and returns detached values. Tensors of ``w`` outside any graph become
    leaves that require grad, so the gradient exists.

    Raises:
        DoubleBackwardError: with ``keep``, when a loss calls an operation that cannot be
            differentiated twice (``ziggurat._second_order``).
    """
    w_in = {k: x if x.requires_grad else x.detach().requires_grad_(True) for k, x in w.items()}
    if keep:
        with twice_differentiable():
            out = losses(w_in)
            g = gradient(out, w_in, create_graph=True)
        check_gradient_graph(g.values(), out, "a differentiable optimizer step", w_in.values())
    else:
        g = gradient(losses(w_in), w_in, create_graph=False)
    if transform is not None:
        g = transform(g)
    if keep:
        return optimizer.step(w_in, g, state)
    with torch.no_grad():
        w_out, state_out = optimizer.step(_tree.detach(w_in), _tree.detach(g), state)
    return _tree.detach(w_out), state_out.detach()
