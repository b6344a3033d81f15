"""Differentiable Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019).

The update rules follow ``torch.optim.Adam`` / ``AdamW`` (bias correction, ``eps`` added after
the square root, optional AMSGrad).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _checks
from .._types import Params
from ._base import OptState, safe_sqrt


def _check(
    name: str, lr: float | Tensor, betas: tuple[float, float], eps: float, wd: float
) -> None:
    if not isinstance(lr, Tensor):
        _checks.non_negative(f"{name} lr", lr)
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{name} betas[{i}] must be in [0, 1), got {b!r}")
    _checks.non_negative(f"{name} eps", eps)
    _checks.non_negative(f"{name} weight_decay", wd)


@dataclass(frozen=True)
class Adam:
    lr: float | Tensor = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    maximize: bool = False
    decoupled: bool = False  # AdamW: decay the weights directly instead of the gradient

    def __post_init__(self) -> None:
        _check(
            "adamw" if self.decoupled else "adam", self.lr, self.betas, self.eps, self.weight_decay
        )

    def init(self, params: Params) -> OptState:
        zeros = {k: torch.zeros_like(p) for k, p in params.items()}
        buffers = {"exp_avg": zeros, "exp_avg_sq": dict(zeros)}
        if self.amsgrad:
            buffers["max_exp_avg_sq"] = dict(zeros)
        return OptState(0, buffers)

    def step(self, params: Params, grads: Params, state: OptState) -> tuple[Params, OptState]:
        t = state.step + 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        m_old, v_old = state.buffers["exp_avg"], state.buffers["exp_avg_sq"]
        vmax_old = state.buffers.get("max_exp_avg_sq")
        out: Params = {}
        m_new: Params = {}
        v_new: Params = {}
        vmax_new: Params = {}
        for k, p in params.items():
            g = -grads[k] if self.maximize else grads[k]
            if self.weight_decay != 0:
                if self.decoupled:
                    p = p * (1 - self.lr * self.weight_decay)
                else:
                    g = g + self.weight_decay * p
            m = b1 * m_old[k] + (1 - b1) * g
            v = b2 * v_old[k] + (1 - b2) * g * g
            m_new[k], v_new[k] = m, v
            if vmax_old is not None:
                v = torch.maximum(vmax_old[k], v)
                vmax_new[k] = v
            denom = safe_sqrt(v) / (bc2**0.5) + self.eps
            out[k] = p - (self.lr / bc1) * m / denom
        buffers = {"exp_avg": m_new, "exp_avg_sq": v_new}
        if vmax_old is not None:
            buffers["max_exp_avg_sq"] = vmax_new
        return out, OptState(t, buffers)


def adam(
    lr: float | Tensor = 1e-3,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
) -> Adam:
    """Build differentiable Adam; same rule and defaults as ``torch.optim.Adam``."""
    return Adam(lr, tuple(betas), eps, weight_decay, amsgrad, maximize, decoupled=False)  # type: ignore[arg-type]


def adamw(
    lr: float | Tensor = 1e-3,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    maximize: bool = False,
) -> Adam:
    """Build differentiable AdamW; same rule and defaults as ``torch.optim.AdamW``."""
    return Adam(lr, tuple(betas), eps, weight_decay, amsgrad, maximize, decoupled=True)  # type: ignore[arg-type]
