"""Differentiable SGD: momentum, dampening, Nesterov, weight decay (as ``torch.optim.SGD``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .. import _checks
from .._types import Params
from ._base import OptState


@dataclass(frozen=True)
class SGD:
    lr: float | Tensor = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.lr, Tensor):
            _checks.non_negative("sgd lr", self.lr)
        _checks.non_negative("sgd momentum", self.momentum)
        _checks.non_negative("sgd weight_decay", self.weight_decay)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                "sgd nesterov=True needs momentum > 0 and dampening = 0, got "
                f"momentum={self.momentum!r}, dampening={self.dampening!r}"
            )

    def init(self, params: Params) -> OptState:
        return OptState(0, {})

    def step(self, params: Params, grads: Params, state: OptState) -> tuple[Params, OptState]:
        new_params: Params = {}
        old_buf = state.buffers.get("momentum_buffer")
        new_buf: Params = {}
        for k, p in params.items():
            d = -grads[k] if self.maximize else grads[k]
            if self.weight_decay != 0:
                d = d + self.weight_decay * p
            if self.momentum != 0:
                buf = (
                    d if old_buf is None else self.momentum * old_buf[k] + (1 - self.dampening) * d
                )
                new_buf[k] = buf
                d = d + self.momentum * buf if self.nesterov else buf
            new_params[k] = p - self.lr * d
        buffers = {"momentum_buffer": new_buf} if self.momentum != 0 else {}
        return new_params, OptState(state.step + 1, buffers)


def sgd(
    lr: float | Tensor = 1e-3,
    *,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> SGD:
    """Build differentiable SGD; same update rule and defaults as ``torch.optim.SGD``."""
    return SGD(lr, momentum, dampening, weight_decay, nesterov, maximize)
