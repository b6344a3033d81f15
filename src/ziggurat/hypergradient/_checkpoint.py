"""Checkpointed reverse sweep through unrolled optimizer steps (memory ``O(sqrt T)``).

Plain unrolled differentiation keeps the graph of all ``T`` differentiated steps alive until
the backward pass, so its memory grows as ``O(T)`` (activations and a parameter copy per step).
Here the forward pass runs without a graph and stores only the states at ``S`` segment
boundaries (parameters and optimizer buffers). The reverse sweep then walks the segments
backwards: it recomputes one segment *with* its graph from its stored boundary, and
backpropagates the incoming cotangent to the boundary state and to ``lam``. The ``lam``
gradients of the segments are summed; the boundary cotangent is carried to the previous
segment (Griewank & Walther 2000, "Algorithm 799: revolve"; Chen et al. 2016, "Training deep
nets with sublinear memory cost").

Trade-off: memory is ``S`` stored states plus the graph of one segment (``ceil(T / S)`` steps),
minimised near ``S = sqrt(T)``; compute is one extra forward pass of every step (each step's
gradient is evaluated twice, once without a graph), about ``1.3x`` to ``1.5x`` plain unrolling.
The result equals plain unrolling up to floating-point summation order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import torch
from torch import Tensor

from .. import _tree
from .._products import scalar_loss
from .._second_order import translated
from .._types import InnerLoss, Params
from ..optim import FunctionalOptimizer, OptState, grad_step

Segments = int | str | None

THROUGH_STEPS = "the backward pass through differentiable optimizer steps"


def inner_at(inner: InnerLoss, lam: Params) -> Callable[[Params], Tensor]:
    """``w -> f(w, lam)``, checked to be a scalar: the loss an unrolled step differentiates."""
    return lambda w: scalar_loss(inner(w, lam), "inner loss")


def segment_count(steps: int, segments: int | str) -> int:
    """Number of segments for ``steps`` differentiated steps: ``"sqrt"`` or an int, capped at T."""
    if segments == "sqrt":
        return max(1, min(steps, round(math.sqrt(steps))))
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(
            f"checkpoint_segments must be None, 'sqrt' or an int >= 1, got {segments!r}"
        )
    return min(steps, segments)


def segment_bounds(steps: int, segments: int) -> list[int]:
    """Boundaries ``0 = b_0 < b_1 < ... < b_S = steps`` of ``segments`` near-equal segments."""
    base, extra = divmod(steps, segments)
    bounds = [0]
    for i in range(segments):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return bounds


def _state_leaves(state: OptState) -> OptState:
    buffers = {
        name: {k: t.detach().requires_grad_(True) for k, t in tree.items()}
        for name, tree in state.buffers.items()
    }
    return OptState(state.step, buffers)


def _flat(state: OptState) -> dict[tuple[str, str], torch.Tensor]:
    return {(name, k): t for name, tree in state.buffers.items() for k, t in tree.items()}


def checkpointed_vjp(
    inner: InnerLoss,
    w: Params,
    lam: Params,
    v: Params,
    optimizer: FunctionalOptimizer,
    steps: int,
    segments: int,
    *,
    differentiable_from: int = 0,
) -> Params:
    """``v^T dw_T/dlam`` through ``steps`` optimizer steps from ``w``, by a checkpointed sweep.

    Steps before ``differentiable_from`` run without a graph (truncation). ``lam`` must hold
    leaves that require grad; the result is detached and shaped like ``lam``.
    """
    loss = inner_at(inner, lam)
    w_t, state = _tree.detach(w), optimizer.init(_tree.detach(w))
    for _ in range(differentiable_from):
        w_t, state = grad_step(loss, w_t, optimizer, state, keep=False)
    k = steps - differentiable_from
    bounds = segment_bounds(k, segment_count(k, segments))
    stored: list[tuple[Params, OptState]] = []
    for start, end in pairwise(bounds):
        stored.append((w_t, state))
        for _ in range(start, end):
            w_t, state = grad_step(loss, w_t, optimizer, state, keep=False)

    lam_keys = list(lam)
    total = _tree.zeros_like(_tree.detach(lam))
    cot_w: Params = {key: v[key].detach() for key in v}
    cot_s: dict[tuple[str, str], torch.Tensor] = {}
    for (w_b, s_b), start, end in reversed(list(zip(stored, bounds[:-1], bounds[1:], strict=True))):
        w_in, s_in = _tree.leaves(w_b), _state_leaves(s_b)
        w_e, s_e = w_in, s_in
        for _ in range(start, end):
            w_e, s_e = grad_step(loss, w_e, optimizer, s_e)
        outs = [(w_e[key], c) for key, c in cot_w.items()]
        outs += [(t, cot_s[key]) for key, t in _flat(s_e).items() if key in cot_s]
        live = [(o, c) for o, c in outs if o.requires_grad]
        flat_in = _flat(s_in)
        inputs = list(w_in.values()) + list(flat_in.values()) + [lam[key] for key in lam_keys]
        if not live:
            break
        with translated(THROUGH_STEPS):
            grads = torch.autograd.grad(
                [o for o, _ in live], inputs, grad_outputs=[c for _, c in live], allow_unused=True
            )
        n_w, n_s = len(w_in), len(flat_in)
        cot_w = {
            key: torch.zeros_like(x) if g is None else g
            for (key, x), g in zip(w_in.items(), grads[:n_w], strict=True)
        }
        cot_s = {
            key: torch.zeros_like(x) if g is None else g
            for (key, x), g in zip(flat_in.items(), grads[n_w : n_w + n_s], strict=True)
        }
        for key, g in zip(lam_keys, grads[n_w + n_s :], strict=True):
            if g is not None:
                total[key] = total[key] + g
    return total
