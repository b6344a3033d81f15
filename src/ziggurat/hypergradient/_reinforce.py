"""Score-function (REINFORCE) hypergradients for a sampling step that autograd cannot cross.

When the upper objective is an expectation over a random choice made with probabilities set by
the hyperparameters, ``J(lam) = E_{z ~ p_lam}[R(z)]`` (a sampled augmentation, a discrete
architecture, a data subset, and ``R`` the validation score of whatever the lower level then
trains), the sample ``z`` has no derivative with respect to ``lam``. The score-function identity
(Williams 1992, "Simple statistical gradient-following algorithms for connectionist
reinforcement learning") still gives one::

    grad J(lam) = E[(R(z) - b) grad_lam log p_lam(z)]

for any baseline ``b`` that does not depend on ``z``, because ``E[grad log p_lam(z)] = 0``.
A good baseline leaves the mean alone and removes most of the variance.

This is not a best-response product ``v^T dw*/dlam`` and does not share the method signature:
it estimates the gradient of an expectation directly, from ``log_prob``, ``sample`` and
``reward`` functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .. import _checks, _tree
from .._types import Params

Sample = Callable[[Params, int, torch.Generator], Tensor]
"""``sample(lam, n, generator) -> z``: ``n`` draws from ``p_lam`` (first dimension ``n``)."""

LogProb = Callable[[Tensor, Params], Tensor]
"""``log_prob(z, lam) -> (n,)``: ``log p_lam(z_i)`` per draw, differentiable in ``lam``."""

Reward = Callable[[Tensor], Tensor]
"""``reward(z) -> (n,)``: the score of each draw; never differentiated."""


class Baseline(Protocol):
    """``rewards (n,) -> baselines (n,)``; ``b_i`` must not depend on draw ``i``."""

    def __call__(self, rewards: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class NoBaseline:
    """``b = 0``: the plain estimator."""

    def __call__(self, rewards: Tensor) -> Tensor:
        return torch.zeros_like(rewards)


@dataclass(frozen=True)
class ConstantBaseline:
    """``b = value``, e.g. a running mean of past rewards kept by the caller."""

    value: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise ValueError(f"constant baseline value must be a number, got {self.value!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"constant baseline value must be finite, got {self.value!r}")

    def __call__(self, rewards: Tensor) -> Tensor:
        return torch.full_like(rewards, self.value)


@dataclass(frozen=True)
class LeaveOneOut:
    """``b_i = mean_{j != i} R(z_j)``: the other draws' mean (Kool, van Hoof & Welling 2019,
    "Buy 4 REINFORCE samples, get a baseline for free!"). Independent of draw ``i``, so the
    estimator stays unbiased; needs at least two draws."""

    def __call__(self, rewards: Tensor) -> Tensor:
        n = rewards.shape[0]
        return (rewards.sum() - rewards) / (n - 1)


@dataclass(frozen=True)
class ReinforceResult:
    """The estimate of ``grad_lam E[R]`` and what it was made from.

    Attributes:
        grad: the gradient estimate, a tree shaped like ``lam``.
        value: the mean reward of the draws, an unbiased estimate of ``E[R]``.
        samples: the draws.
        rewards: their rewards.
    """

    grad: Params
    value: float
    samples: Tensor
    rewards: Tensor


@dataclass(frozen=True)
class Reinforce:
    """``(1/n) sum_i (R(z_i) - b_i) grad_lam log p_lam(z_i)`` with ``z_i ~ p_lam`` i.i.d.

    Attributes:
        num_samples: draws per estimate (``>= 2`` with :class:`LeaveOneOut`).
        baseline: the variance-reduction baseline.
    """

    num_samples: int = 16
    baseline: Baseline = LeaveOneOut()

    def __post_init__(self) -> None:
        low = 2 if isinstance(self.baseline, LeaveOneOut) else 1
        _checks.int_at_least("reinforce num_samples", self.num_samples, low)
        if not callable(self.baseline):
            raise ValueError(f"reinforce baseline must be callable, got {self.baseline!r}")

    def __call__(
        self,
        log_prob: LogProb,
        sample: Sample,
        reward: Reward,
        lam: Params,
        generator: torch.Generator | None = None,
    ) -> ReinforceResult:
        gen = generator
        if gen is None:
            gen = torch.Generator()
            gen.seed()  # a fresh, non-deterministic stream; pass a generator to reproduce
        lam_ = _tree.leaves(lam)
        with torch.no_grad():
            z = sample(_tree.detach(lam), self.num_samples, gen)
            r = reward(z).detach()
        if r.shape != (self.num_samples,):
            raise ValueError(
                f"reinforce reward must return one value per draw, shape ({self.num_samples},), "
                f"got {tuple(r.shape)}"
            )
        logp = log_prob(z, lam_)
        if logp.shape != r.shape:
            raise ValueError(
                f"reinforce log_prob must return shape {tuple(r.shape)}, got {tuple(logp.shape)}"
            )
        weights = (r - self.baseline(r)).detach()
        surrogate = (weights * logp).mean()
        grads = torch.autograd.grad(surrogate, list(lam_.values()), allow_unused=True)
        grad = _tree.detach(_tree.fill_none(grads, lam_))
        return ReinforceResult(grad, float(r.mean()), z, r)


def reinforce(num_samples: int = 16, *, baseline: Baseline = LeaveOneOut()) -> Reinforce:
    """Build the score-function estimator (Williams 1992), leave-one-out baseline by default."""
    return Reinforce(num_samples, baseline)
