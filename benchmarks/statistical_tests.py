"""How often each statistical test's assertion holds on seeds other than the test's own.

The statistical tests (REINFORCE, stochastic hypergradients in the core and through the Engine)
run at fixed seeds, so they are deterministic. This script reruns the statistic behind each of
them on ``--sets`` disjoint sets of other seeds and prints the fraction of sets on which the
test's assertion holds, with a one-sided 95% lower bound on that rate (Clopper-Pearson; for
``k = n`` it is ``0.05 ** (1 / n)``). These are the confidence levels quoted in
``docs/stochastic.md``.

    PYTHONPATH=src python -m benchmarks.statistical_tests [--sets 100] [--skip-engine]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from statistics import NormalDist

import torch

from ziggurat.analytic import LogisticHPO

from . import stats


def lower_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound on a success rate from ``k`` of ``n``."""
    if k == 0:
        return 0.0
    if k == n:
        return (1 - confidence) ** (1 / n)
    # normal approximation with continuity correction; exact enough for a quoted figure
    p = (k - 0.5) / n
    z = NormalDist().inv_cdf(confidence)
    return max(0.0, p - z * (p * (1 - p) / n) ** 0.5)


def rate(name: str, holds: Callable[[int], bool], sets: int) -> None:
    start = time.perf_counter()
    k = sum(holds(i) for i in range(1, sets + 1))
    seconds = time.perf_counter() - start
    print(
        f"| {name} | {k}/{sets} | {k / sets:.3f} | {lower_bound(k, sets):.3f} | {seconds:.0f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=100, help="seed sets per test")
    parser.add_argument("--skip-engine", action="store_true", help="skip the slowest test")
    args = parser.parse_args()
    if args.sets < 1:
        parser.error(f"--sets must be >= 1, got {args.sets}")
    torch.set_num_threads(1)
    print("| test (its assertion) | holds | rate | 95% lower bound | s |")
    print("|---|---:|---:|---:|---:|")
    for baseline in stats.BASELINES:
        label = type(baseline).__name__
        rate(
            f"test_bernoulli_unbiased_at_99_percent[{label}] (covered)",
            lambda i, b=baseline: stats.bernoulli_covered(b, 600 * i),
            args.sets,
        )
    rate(
        "test_gaussian_unbiased_at_99_percent (covered)",
        lambda i: stats.gaussian_covered(600 * i),
        args.sets,
    )
    rate(
        "test_the_confidence_check_detects_a_biased_baseline (not covered)",
        lambda i: not stats.biased_covered(600 * i),
        args.sets,
    )
    rate(
        "test_baselines_reduce_variance (both ratios < 0.25)",
        lambda i: max(stats.variance_ratios(300 * i)) < 0.25,
        args.sets,
    )
    case = stats.logistic_case()

    def core_margin(i: int) -> bool:
        seeds = range(5 * i, 5 * i + 5)
        one = stats.stochastic_mean_error(case, 1, seeds)
        sixteen = stats.stochastic_mean_error(case, 16, seeds)
        return sixteen < 0.6 * one and sixteen < 0.25

    rate("test_error_shrinks_with_the_number_of_batches (margins)", core_margin, args.sets)
    if args.skip_engine:
        return
    problem = LogisticHPO.breast_cancer()

    def engine_margin(seed: int) -> bool:
        one, four, sixteen = (stats.engine_mean_error(problem, b, 10, seed) for b in (1, 4, 16))
        return four < 0.5 * one and sixteen < 0.5 * four and sixteen < 0.15

    rate(
        "test_error_against_the_full_batch_hypergradient_shrinks_with_the_batch_count (margins)",
        engine_margin,
        args.sets,
    )


if __name__ == "__main__":
    main()
