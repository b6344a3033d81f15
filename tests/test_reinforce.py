"""REINFORCE (Williams 1992): unbiased against closed-form expected gradients; baselines cut
variance."""

from __future__ import annotations

import pytest
import torch

from benchmarks.stats import (
    BASELINES,
    BERNOULLI,
    THETA,
    bernoulli_covered,
    bernoulli_truth,
    biased_covered,
    gaussian_covered,
    variance_ratios,
)
from ziggurat.hypergradient import ConstantBaseline, NoBaseline, reinforce

D = torch.float64
bernoulli_sample = BERNOULLI.sample
bernoulli_log_prob = BERNOULLI.log_prob
bernoulli_reward = BERNOULLI.reward


def test_bernoulli_closed_form_against_enumeration() -> None:
    """The expected gradient of ``analytic.BernoulliReward`` against autograd through the exact
    expectation, a sum over all 16 outcomes."""
    theta = THETA.clone().requires_grad_(True)
    outcomes = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=D)] * 4)
    probs = BERNOULLI.log_prob(outcomes, {"logits": theta}).exp()
    expectation = (probs * BERNOULLI.reward(outcomes)).sum()
    (grad,) = torch.autograd.grad(expectation, theta)
    assert torch.allclose(grad, bernoulli_truth(THETA), rtol=1e-12, atol=1e-14)


# Each statistic lives in benchmarks/stats.py as a function of its first seed, so that
# benchmarks/statistical_tests.py can rerun it on other seeds and measure how often the test's
# assertion holds (docs/stochastic.md).
@pytest.mark.parametrize("baseline", BASELINES)
def test_bernoulli_unbiased_at_99_percent(baseline) -> None:
    """600 independent estimates of 8 draws each (seeds 0..599); the mean of every coordinate
    lies within a joint 99% confidence interval (normal approximation, Bonferroni over the four
    coordinates) around the closed-form gradient. Confidence level 99%: a correct estimator
    fails with probability about 1% over seed choices."""
    assert bernoulli_covered(baseline)


def test_gaussian_unbiased_at_99_percent() -> None:
    """z ~ N(mu, sigma^2), R = (z - 1)^2: E[R] = (mu - 1)^2 + sigma^2, so the gradient in
    (mu, log sigma) is (2 (mu - 1), 2 sigma^2). Joint 99% interval as above, 600 estimates."""
    assert gaussian_covered()


def test_the_confidence_check_detects_a_biased_baseline() -> None:
    """A baseline that includes the draw's own reward shrinks the estimator by (n-1)/n: with
    n = 2 it halves the gradient, and the same 99% check must reject it."""
    assert not biased_covered()


def test_baselines_reduce_variance() -> None:
    """Total variance over 300 seeds, each baseline below a quarter of the plain estimator's
    (measured: 5.0 plain, 0.35 leave-one-out, 0.57 constant)."""
    loo, const = variance_ratios()
    assert loo < 0.25
    assert const < 0.25


def test_value_is_the_mean_reward_and_shapes_are_checked() -> None:
    gen = torch.Generator().manual_seed(0)
    lam = {"logits": THETA}
    result = reinforce(4)(bernoulli_log_prob, bernoulli_sample, bernoulli_reward, lam, gen)
    assert result.value == pytest.approx(float(bernoulli_reward(result.samples).mean()))
    with pytest.raises(ValueError, match=r"reward must return one value per draw.*got \(4, 4\)"):
        reinforce(4)(bernoulli_log_prob, bernoulli_sample, lambda z: z, lam, gen)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="reinforce num_samples must be an integer >= 2, got 1"):
        reinforce(1)
    with pytest.raises(ValueError, match="reinforce num_samples must be an integer >= 1, got 0"):
        reinforce(0, baseline=NoBaseline())
    with pytest.raises(ValueError, match="constant baseline value must be finite, got nan"):
        ConstantBaseline(float("nan"))
    with pytest.raises(ValueError, match="reinforce baseline must be callable"):
        reinforce(4, baseline=3.0)  # type: ignore[arg-type]
