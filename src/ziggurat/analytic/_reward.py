"""A score-function problem with a closed-form expected gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._types import Params


@dataclass
class BernoulliReward:
    """Independent draws ``z_i ~ Bernoulli(sigmoid(theta_i))`` scored by
    ``R(z) = offset + c^T z + z_0 z_1``.

    With ``p = sigmoid(theta)``, ``E[R] = offset + c^T p + p_0 p_1``, so
    ``dE[R]/dtheta_i = (c_i + [i = 0] p_1 + [i = 1] p_0) p_i (1 - p_i)``. The constant ``offset``
    leaves the gradient alone and inflates the variance of a score-function estimator without a
    baseline. ``sample``, ``log_prob`` and ``reward`` have the signatures of
    :func:`ziggurat.hypergradient.reinforce`; the parameters are ``{"logits": theta}``.
    """

    theta: Tensor
    c: Tensor
    offset: float

    @classmethod
    def make(cls, *, offset: float = 5.0, dtype: torch.dtype = torch.float64) -> BernoulliReward:
        theta = torch.tensor([0.3, -0.7, 1.2, 0.0], dtype=dtype)
        return cls(theta, torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype), offset)

    def lam(self) -> Params:
        return {"logits": self.theta.clone()}

    def sample(self, lam: Params, n: int, gen: torch.Generator) -> Tensor:
        p = torch.sigmoid(lam["logits"])
        return (torch.rand(n, p.numel(), generator=gen, dtype=p.dtype) < p).to(p.dtype)

    def log_prob(self, z: Tensor, lam: Params) -> Tensor:
        logits = lam["logits"]
        log_p = torch.nn.functional.logsigmoid(logits)
        log_q = torch.nn.functional.logsigmoid(-logits)
        return (z * log_p).sum(1) + ((1 - z) * log_q).sum(1)

    def reward(self, z: Tensor) -> Tensor:
        return self.offset + z @ self.c + z[:, 0] * z[:, 1]

    def expected_gradient(self, lam: Params) -> Params:
        p = torch.sigmoid(lam["logits"])
        slope = self.c.clone()
        slope[0] += p[1]
        slope[1] += p[0]
        return {"logits": slope * p * (1 - p)}
