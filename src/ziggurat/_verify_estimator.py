"""Measure a stochastic gradient estimator against a known expected gradient.

A score-function (REINFORCE) estimate is random, so one call's error says little: what can be
checked is that the mean of many independent estimates approaches the truth at the rate its
standard error predicts. ``verify_estimator`` runs each estimator ``estimates`` times with
independent, seeded generators and reports the error of the mean, its standard error, the
largest per-coordinate ``z`` score and whether the mean lies inside a joint confidence interval
(normal approximation, Bonferroni over the coordinates), next to the error of a single call.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

import torch

from . import _checks, _tree
from ._types import Params
from ._verify import find_row

Estimator = Callable[[torch.Generator], Params]
"""``estimate(generator) -> gradient estimate``, a tree shaped like the truth."""


@dataclass(frozen=True)
class EstimatorRow:
    """One estimator's figures over ``estimates`` independent calls.

    Attributes:
        rel_error_mean: ``||mean - g*|| / ||g*||`` for the mean of the calls.
        rel_std_error: ``sqrt(sum_i se_i^2) / ||g*||``, the size ``rel_error_mean`` has for an
            unbiased estimator (``se_i``: standard error of coordinate ``i`` of the mean).
        max_z: ``max_i |mean_i - g*_i| / se_i``.
        covered: whether every coordinate lies within its interval at the report's level.
        rel_error_one: mean over calls of ``||g_s - g*|| / ||g*||``, what one call gives.
        seconds: median wall time of one call.
    """

    method: str
    rel_error_mean: float
    rel_std_error: float
    max_z: float
    covered: bool
    rel_error_one: float
    seconds: float


@dataclass(frozen=True)
class EstimatorReport:
    """Rows of :func:`verify_estimator`, printable as a table."""

    estimates: int
    level: float
    rows: list[EstimatorRow] = field(default_factory=list)

    def row(self, method: str) -> EstimatorRow:
        return find_row(self.rows, method)

    def __str__(self) -> str:
        width = max([14, *(len(r.method) + 2 for r in self.rows)])
        ci = f"in {self.level:.0%} CI"
        head = (
            f"{'estimator':<{width}}{'err(mean)':>11}{'std.err':>10}{'max|z|':>8}{ci:>11}"
            f"{'err(one)':>10}{'ms':>8}"
        )
        lines = [
            f"{self.estimates} independent calls per estimator. err(mean): relative error of "
            "their mean;",
            "std.err: its expected size if unbiased; max|z|: largest |mean - truth| / standard "
            "error;",
            f"{ci}: every coordinate in its joint {self.level:.0%} interval (Bonferroni); "
            "err(one): mean error of one call",
            head,
            "-" * len(head),
        ]
        for r in self.rows:
            lines.append(
                f"{r.method:<{width}}{r.rel_error_mean:>11.2e}{r.rel_std_error:>10.2e}"
                f"{r.max_z:>8.2f}{'yes' if r.covered else 'no':>11}{r.rel_error_one:>10.3f}"
                f"{r.seconds * 1e3:>8.3f}"
            )
        return "\n".join(lines)


def _row(name: str, samples: torch.Tensor, truth: torch.Tensor, z_crit: float) -> EstimatorRow:
    n = samples.shape[0]
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(n)
    scale = float(truth.norm())
    err = mean - truth
    # a standard error below the rounding of the mean (a deterministic estimator) counts as
    # that rounding, so exact answers are covered and wrong ones are not
    rounding = n * torch.finfo(se.dtype).eps * (truth.abs() + mean.abs())
    z = err.abs() / torch.maximum(se, rounding).clamp_min(torch.finfo(se.dtype).tiny)
    one = (samples - truth).norm(dim=1) / scale
    return EstimatorRow(
        name,
        float(err.norm()) / scale,
        float(se.norm()) / scale,
        float(z.max()),
        bool((z <= z_crit).all()),
        float(one.mean()),
        math.nan,
    )


def verify_estimator(
    estimators: Mapping[str, Estimator],
    truth: Params,
    *,
    estimates: int = 400,
    seed: int = 0,
    level: float = 0.99,
) -> EstimatorReport:
    """Run each estimator ``estimates`` times and compare the calls with ``truth``.

    Call ``s`` gets ``torch.Generator().manual_seed(seed + s)``, the same for every estimator,
    so the rows are reproducible and comparable. ``covered`` uses the two-sided normal
    interval at ``level``, Bonferroni-corrected over the coordinates of ``truth``: an unbiased
    estimator is outside it with probability about ``1 - level``.
    """
    _checks.int_at_least("verify_estimator estimates", estimates, 2)
    if not 0.0 < level < 1.0:
        raise ValueError(f"verify_estimator level must be in (0, 1), got {level!r}")
    flat_truth = _tree.flatten(_tree.detach(truth)).double()
    if float(flat_truth.norm()) == 0.0:
        raise ValueError("verify_estimator: the true gradient is zero; relative errors undefined")
    z_crit = NormalDist().inv_cdf(1 - (1 - level) / (2 * flat_truth.numel()))
    report = EstimatorReport(estimates, level)
    for name, estimate in estimators.items():
        rows, times = [], []
        for s in range(estimates):
            gen = torch.Generator().manual_seed(seed + s)
            start = time.perf_counter()
            got = estimate(gen)
            times.append(time.perf_counter() - start)
            _tree.check_same_shapes(truth, got, f"verify_estimator: {name!r} against the truth")
            rows.append(_tree.flatten(_tree.detach(got)).double())
        row = _row(name, torch.stack(rows), flat_truth, z_crit)
        report.rows.append(dataclasses.replace(row, seconds=statistics.median(times)))
    return report
