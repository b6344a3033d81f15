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
from statistics import NormalDist

import torch

from .. import _checks, _tree
from .._types import Params
from ._report import EstimatorReport, EstimatorRow

Estimator = Callable[[torch.Generator], Params]
"""``estimate(generator) -> gradient estimate``, a tree shaped like the truth."""


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
