"""Checkpointed unrolling for ``IterativeProblem`` (``Config(checkpoint_segments=...)``).

Plain unrolling keeps the graph of every step of an inner loop until the upper level reads the
result: memory grows with the loop's length ``T`` (activations and a parameter copy per step).
With checkpointing the steps run without a graph; every ``ceil(T / S)`` updates the values
reached are wrapped in one autograd node, :class:`Replay`, whose inputs are the segment's
starting parameters and optimizer buffers and the other levels' parameters. Its backward pass
replays the segment's updates *with* their graph from the stored start, on the stored batches
and random-number states, and pulls the incoming cotangents back to those inputs (Griewank &
Walther 2000; Chen et al. 2016). Memory: ``S`` stored states plus one segment's graph; compute:
each step's gradient is taken once more, in the backward pass. Results equal plain unrolling
up to floating-point summation order.

Replay reads the other levels' parameters as they are when the upper level differentiates; a
level that changed them in between (an in-place update) is detected by version counters and
reported instead of giving a wrong answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import _rng, _tree
from .._second_order import translated
from .._types import Params
from ..optim import FunctionalOptimizer, OptState, grad_step

Micro = tuple[Any, list[Tensor]]
"""One micro-batch of an update: the batch and the RNG states its ``training_step`` ran under."""


@dataclass
class Plan:
    """Everything :class:`Replay` needs to redo one segment.

    Attributes:
        update: ``(w, state, micro-batches) -> (w, state)``: one differentiable update, as the
            problem takes it (loss per micro-batch, summed gradients, clipping, optimizer).
        step: the optimizer's step count at the segment's start.
        keys: parameter names; ``start_buffer_keys`` / ``buffer_keys``: ``(buffer,
            parameter)`` names at the segment's start and end (an optimizer may create its
            buffers at the first step).
        updates: the micro-batches of each update of the segment.
        context: the other levels' parameters, with their versions at the segment's end.
        outputs: the values the segment reached (parameters, then buffers), without a graph.
    """

    update: Callable[[Params, OptState, list[Micro]], tuple[Params, OptState]]
    step: int
    keys: list[str]
    start_buffer_keys: list[tuple[str, str]]
    buffer_keys: list[tuple[str, str]]
    updates: list[list[Micro]]
    context: list[Tensor]
    outputs: list[Tensor]
    versions: list[int] = field(default_factory=list)


def _state(step: int, keys: list[tuple[str, str]], values: list[Tensor]) -> OptState:
    buffers: dict[str, Params] = {}
    for (name, k), t in zip(keys, values, strict=True):
        buffers.setdefault(name, {})[k] = t
    return OptState(step, buffers)


def flat_buffers(state: OptState) -> tuple[list[tuple[str, str]], list[Tensor]]:
    keys = [(name, k) for name, tree in state.buffers.items() for k in tree]
    return keys, [state.buffers[name][k] for name, k in keys]


class Replay(torch.autograd.Function):
    """A segment of unrolled updates as one autograd node (see the module docstring).

    ``forward(plan, *inputs)`` with ``inputs`` = the start parameters, the start buffers and
    ``plan.context``, returns ``plan.outputs``; ``backward`` replays the segment.
    """

    @staticmethod
    def forward(ctx: Any, plan: Plan, *inputs: Tensor) -> tuple[Tensor, ...]:
        ctx.plan = plan
        ctx.save_for_backward(*inputs)
        outputs = tuple(plan.outputs)
        # the outputs get this node as their grad_fn: a plan still holding them would make a
        # reference cycle (outputs -> node -> ctx -> plan -> outputs) that only the cyclic
        # collector frees, so every upper step's segment states would pile up until it runs
        plan.outputs = []
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        plan: Plan = ctx.plan
        changed = [i for i, t in enumerate(plan.context) if t._version != plan.versions[i]]
        if changed:
            raise RuntimeError(
                "checkpointed unrolling: parameters of another level were modified in place "
                "between the inner loop and its differentiation, so its steps cannot be "
                "replayed; differentiate before updating them, or set checkpoint_segments=None"
            )
        inputs = ctx.saved_tensors
        n_w, n_s = len(plan.keys), len(plan.start_buffer_keys)
        with torch.enable_grad():
            start = [t.detach().requires_grad_(True) for t in inputs[: n_w + n_s]]
            w = dict(zip(plan.keys, start[:n_w], strict=True))
            state = _state(plan.step, plan.start_buffer_keys, start[n_w:])
            for micro in plan.updates:
                w, state = plan.update(w, state, micro)
            ends = [w[k] for k in plan.keys] + flat_buffers(state)[1]
            live = [(o, g) for o, g in zip(ends, grads, strict=True) if g is not None]
            live = [(o, g) for o, g in live if o.requires_grad]
            wrt = [*start, *plan.context]
            if not live:
                return (None, *[None] * len(inputs))
            with translated("the replay of a checkpointed segment"):
                out = torch.autograd.grad(
                    [o for o, _ in live], wrt, grad_outputs=[g for _, g in live], allow_unused=True
                )
        return (None, *out)


def close(plan: Plan, start_w: Params, start_state: OptState) -> tuple[Params, OptState]:
    """Wrap a finished segment: its end values, differentiable through :class:`Replay`."""
    plan.versions = [t._version for t in plan.context]
    start = [start_w[k] for k in plan.keys] + [
        start_state.buffers[name][k] for name, k in plan.start_buffer_keys
    ]
    outs = Replay.apply(plan, *start, *plan.context)
    n_w = len(plan.keys)
    w = dict(zip(plan.keys, outs[:n_w], strict=True))
    return w, _state(plan.step + len(plan.updates), plan.buffer_keys, list(outs[n_w:]))


def update_fn(
    loss_of: Callable[[Any], Tensor],
    swap: Callable[[Params], Params],
    optimizer: FunctionalOptimizer,
    accumulation: int,
    clip: Callable[[Params], Params],
    device: torch.device,
) -> Callable[[Params, OptState, list[Micro]], tuple[Params, OptState]]:
    """One differentiable update over its micro-batches, as ``IterativeProblem`` takes it:
    each micro-batch's loss under its recorded RNG states, with the level's parameters swapped
    for ``w``, then :func:`~ziggurat.optim.grad_step` with the level's clipping."""

    def losses(micro: list[Micro]) -> Callable[[Params], list[Tensor]]:
        def at(w: Params) -> list[Tensor]:
            out = []
            for batch, rng in micro:
                old = swap(w)
                try:
                    with _rng.replayed(rng, device):
                        loss = loss_of(batch)
                finally:
                    swap(old)
                out.append(loss if accumulation == 1 else loss / accumulation)
            return out

        return at

    def update(w: Params, state: OptState, micro: list[Micro]) -> tuple[Params, OptState]:
        return grad_step(losses(micro), w, optimizer, state, transform=clip)

    return update


class SegmentRecorder:
    """The open segment of a checkpointed inner loop: where it started, and the micro-batches
    (with their RNG states) of each of its updates.

    Args:
        length: updates per segment (the last segment of an inner loop may be shorter).
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self.start: tuple[Params, OptState] | None = None
        self.updates: list[list[Micro]] = []
        self.micro: list[Micro] = []

    def open(self, w: Params, state: OptState) -> tuple[Params, OptState]:
        """Start a segment at ``(w, state)``; its steps run on the graph-free copies returned."""
        self.start = (w, state)
        self.updates, self.micro = [], []
        return _tree.leaves(w), state.detach()

    def record(self, batch: Any, device: torch.device) -> None:
        """A micro-batch of the next update, with the RNG states its loss runs under."""
        self.micro.append((batch, _rng.torch_states(device)))

    def update(
        self, optimizer: FunctionalOptimizer, w: Params, grads: Params, state: OptState
    ) -> tuple[Params, OptState]:
        """One graph-free update, recorded with its micro-batches."""
        with torch.no_grad():
            w_new, state_new = optimizer.step(_tree.detach(w), grads, state)
        self.updates.append(self.micro)
        self.micro = []
        return _tree.leaves(w_new), state_new.detach()

    @property
    def full(self) -> bool:
        return len(self.updates) == self.length

    def close(
        self,
        update: Callable[[Params, OptState, list[Micro]], tuple[Params, OptState]],
        w: Params,
        state: OptState,
        context: list[Tensor],
    ) -> tuple[Params, OptState]:
        """Wrap the segment, which reached ``(w, state)``, in one replayable autograd node;
        ``context`` are the other levels' parameters its losses read."""
        assert self.start is not None
        start_w, start_state = self.start
        buffer_keys, buffers = flat_buffers(state)
        plan = Plan(
            update=update,
            step=start_state.step,
            keys=list(w),
            start_buffer_keys=flat_buffers(start_state)[0],
            buffer_keys=buffer_keys,
            updates=self.updates,
            context=context,
            outputs=[t.detach() for t in w.values()] + [t.detach() for t in buffers],
        )
        self.start = None
        return close(plan, start_w, start_state)
