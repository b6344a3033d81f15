"""The statistics behind the statistical tests, each a function of its first seed.

The tests (``tests/test_reinforce.py``, ``tests/test_stochastic.py``,
``tests/test_engine_stochastic.py``) assert on these at fixed seeds, so they are deterministic;
``statistical_tests.py`` reruns the same functions on other seeds and reports how often each
assertion holds (``docs/stochastic.md``). They live here, not in the tests, so that the tests
import the benchmarks and never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ziggurat import Engine, Params
from ziggurat.analytic import BernoulliReward, LogisticHPO
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import (
    ConstantBaseline,
    LeaveOneOut,
    Method,
    NoBaseline,
    exact,
    random_batches,
    reinforce,
    stochastic,
)
from ziggurat.problems import ImplicitProblem

D = torch.float64


def rel(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return float((a - b).norm() / b.norm())


# REINFORCE (Williams 1992) on closed-form expected gradients: tests/test_reinforce.py

BERNOULLI = BernoulliReward.make()  # offset 5: harmless in expectation, ruinous for variance
THETA = BERNOULLI.theta
BASELINES = [NoBaseline(), LeaveOneOut(), ConstantBaseline(BERNOULLI.offset)]
GAUSS_LAM = {"mu": torch.tensor(0.4, dtype=D), "log_sigma": torch.tensor(-0.3, dtype=D)}


def bernoulli_truth(theta: Tensor) -> Tensor:
    """The closed-form gradient of ``E[R]`` for the Bernoulli problem at ``theta``."""
    return BERNOULLI.expected_gradient({"logits": theta})["logits"]


def gaussian_sample(lam: Params, n: int, gen: torch.Generator) -> Tensor:
    return lam["mu"] + lam["log_sigma"].exp() * torch.randn(n, generator=gen, dtype=D)


def gaussian_log_prob(z: Tensor, lam: Params) -> Tensor:
    return torch.distributions.Normal(lam["mu"], lam["log_sigma"].exp()).log_prob(z)


def estimates(
    method: Any,
    log_prob: Callable[..., Tensor],
    sample: Callable[..., Tensor],
    reward: Callable[[Tensor], Tensor],
    lam: Params,
    seeds: int,
    first: int = 0,
) -> Tensor:
    """One estimate per seed ``first .. first + seeds - 1``, as the rows of a matrix."""
    rows = []
    for seed in range(first, first + seeds):
        gen = torch.Generator().manual_seed(seed)
        grad = method(log_prob, sample, reward, lam, gen).grad
        rows.append(torch.cat([t.reshape(-1) for t in grad.values()]))
    return torch.stack(rows)


def within_confidence(est: Tensor, truth: Tensor, level: float = 0.99) -> bool:
    """Each coordinate's mean within its two-sided confidence interval, Bonferroni-corrected so
    that all coordinates hold jointly at ``level`` for an unbiased estimator."""
    z = NormalDist().inv_cdf(1 - (1 - level) / (2 * truth.numel()))
    se = est.std(0) / est.shape[0] ** 0.5
    return bool(((est.mean(0) - truth).abs() <= z * se).all())


def _bernoulli_estimates(method: Any, seeds: int, first: int) -> Tensor:
    b = BERNOULLI
    return estimates(method, b.log_prob, b.sample, b.reward, {"logits": THETA}, seeds, first)


def bernoulli_covered(baseline: Any, first: int = 0) -> bool:
    """600 estimates of 8 draws with ``baseline``: is the mean in the joint 99% interval?"""
    est = _bernoulli_estimates(reinforce(8, baseline=baseline), 600, first)
    return within_confidence(est, bernoulli_truth(THETA))


def gaussian_covered(first: int = 0) -> bool:
    """``z ~ N(mu, sigma^2)``, ``R = (z - 1)^2``: 600 estimates in the joint 99% interval?"""
    est = estimates(
        reinforce(8),
        gaussian_log_prob,
        gaussian_sample,
        lambda z: (z - 1) ** 2,
        GAUSS_LAM,
        600,
        first,
    )
    sigma2 = float(GAUSS_LAM["log_sigma"].exp() ** 2)
    truth = torch.tensor([2 * (0.4 - 1.0), 2 * sigma2], dtype=D)
    return within_confidence(est, truth)


def biased_covered(first: int = 0) -> bool:
    """The same check on a baseline that includes each draw's own reward (biased)."""
    est = _bernoulli_estimates(reinforce(2, baseline=lambda r: r.mean().expand_as(r)), 600, first)
    return within_confidence(est, bernoulli_truth(THETA))


def variance_ratios(first: int = 0) -> tuple[float, float]:
    """Total variance of leave-one-out and of the constant baseline over the plain one's."""

    def total_variance(baseline: Any) -> Tensor:
        return _bernoulli_estimates(reinforce(8, baseline=baseline), 300, first).var(0).sum()

    plain = total_variance(NoBaseline())
    loo = total_variance(LeaveOneOut())
    const = total_variance(ConstantBaseline(BERNOULLI.offset))
    return float(loo / plain), float(const / plain)


# Stochastic hypergradients in the core (Grazzi et al. 2021): tests/test_stochastic.py

LogisticCase = tuple[LogisticHPO, Params, Params, Params, Tensor]
"""``(problem, w, lam, v, exact hypergradient)`` at the problem's point."""


def logistic_case() -> LogisticCase:
    problem = LogisticHPO.breast_cancer()
    w, lam, v = problem.point()
    return problem, w, lam, v, exact()(problem.inner, w, lam, v).vjp["lam"]


def stochastic_mean_error(case: LogisticCase, num_batches: int, seeds: range) -> float:
    """Mean relative error of ``stochastic`` with ``num_batches`` batches of 32, over seeds."""
    problem, w, lam, v, ref = case
    errors = []
    for seed in seeds:
        sampler = random_batches(problem.X, problem.y, batch_size=32, seed=seed)
        method: Method = stochastic(problem.batch_loss, sampler, num_batches=num_batches)
        errors.append(rel(method(problem.inner, w, lam, v).vjp["lam"], ref))
    return sum(errors) / len(errors)


# Fresh hop batches through the Engine: tests/test_engine_stochastic.py

ENGINE_BATCH = 16


class Hyper(nn.Module):
    """The upper level's parameters: one log L2 weight per feature."""

    def __init__(self, log_l2: Tensor) -> None:
        super().__init__()
        self.log_l2 = nn.Parameter(log_l2.clone())

    def forward(self) -> Tensor:
        return self.log_l2


class Classifier(ImplicitProblem):
    """Lower level: logistic regression with the upper level's per-feature penalty."""

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        assert isinstance(self.module, nn.Linear)
        logits = self.module(x).squeeze(-1)
        penalty = 0.5 * (self.hpo().exp() * self.module.weight[0] ** 2).sum()
        return F.binary_cross_entropy_with_logits(logits, y) + penalty


class HPO(ImplicitProblem):
    """Upper level: validation cross-entropy; records each step's gradient and point."""

    records: list[dict[str, Any]]

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(self.classifier(x).squeeze(-1), y)

    def grad_callback(self) -> None:
        assert self.module is not None and self.module.log_l2.grad is not None
        lower = self.classifier.module
        self.records.append(
            {
                "grad": self.module.log_l2.grad.clone(),
                "lam": self.module.log_l2.detach().clone(),
                "w": lower.weight.detach()[0].clone(),
                "b": lower.bias.detach()[0].clone(),
                "batch": self.classifier.cur_batch,
            }
        )


def train_loader(problem: LogisticHPO, seed: int) -> DataLoader:
    """Shuffled batches of ``ENGINE_BATCH`` training rows, the order drawn at ``seed``."""
    data = TensorDataset(problem.X, problem.y)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=ENGINE_BATCH, shuffle=True, generator=gen, drop_last=True)


def build_engine(problem: LogisticHPO, steps: int, seed: int = 0, **lower_options: Any) -> Engine:
    """Lower level at the Newton optimum of lam0, small SGD steps on both levels."""
    star = problem.w_star({"lam": problem.lam0})
    net = nn.Linear(30, 1).to(D)
    with torch.no_grad():
        net.weight.copy_(star["w"][None])
        net.bias.copy_(star["b"][None])
    hyper = Hyper(problem.lam0)
    hpo = HPO(
        "hpo",
        module=hyper,
        optimizer=torch.optim.SGD(hyper.parameters(), lr=0.02),
        train_data_loader=[(problem.Xv, problem.yv)],
    )
    hpo.records = []
    classifier = Classifier(
        "classifier",
        Config(hypergradient=exact(), **lower_options),
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        train_data_loader=train_loader(problem, seed),
    )
    deps = {"u2l": {hpo: [classifier]}, "l2u": {classifier: [hpo]}}
    return Engine([hpo, classifier], EngineConfig(train_iters=steps, valid_step=0), deps)


def record_point(rec: dict[str, Any]) -> tuple[Params, Params]:
    """The ``(w, lam)`` an upper step was taken at."""
    return {"w": rec["w"], "b": rec["b"]}, {"lam": rec["lam"]}


def full_batch_exact(problem: LogisticHPO, rec: dict[str, Any]) -> Tensor:
    """``-M H^{-1} v`` with the Hessian and mixed product of the whole training loss, at the
    recorded point (the upper loss does not read lam, so this is its whole gradient)."""
    w, lam = record_point(rec)
    w_ = {k: t.clone().requires_grad_(True) for k, t in w.items()}
    v = dict(zip(w, torch.autograd.grad(problem.outer(w_, lam), list(w_.values())), strict=True))
    return exact()(problem.inner, w, lam, v).vjp["lam"]


def engine_mean_error(problem: LogisticHPO, batches: int, steps: int, seed: int) -> float:
    """Mean relative error, over ``steps`` upper steps, of the engine's hypergradient with
    ``hypergradient_batches=batches`` against the full-batch exact one; loader order ``seed``."""
    engine = build_engine(problem, steps, seed, hypergradient_batches=batches)
    engine.run()
    records = engine.hpo.records
    assert len(records) == steps
    return sum(rel(r["grad"], full_batch_exact(problem, r)) for r in records) / steps
