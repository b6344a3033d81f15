"""Error of stochastic hypergradients against the full-batch exact one, by number of batches.

Per-feature L2 logistic regression on breast_cancer (200 training rows, standardised, float64),
at the exact inner optimum for ``log l2 = -4``. For each batch size and number of batches the
relative error ``||g - g*|| / ||g*||`` is averaged over independent seeds; ``g*`` is the exact
(dense-solve) hypergradient of the full-batch problem. Writes a Markdown table to stdout.

    PYTHONPATH=src python -m benchmarks.stochastic_hypergradient > table.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ziggurat.analytic import LogisticHPO
from ziggurat.hypergradient import exact, random_batches, stochastic


def measure(batch_size: int, num_batches: int, seeds: int) -> tuple[float, float, float]:
    """Mean and standard deviation of the relative error over seeds, and median time (ms)."""
    problem = LogisticHPO.breast_cancer()
    w, lam, v = problem.point()
    ref = exact()(problem.inner, w, lam, v).vjp["lam"]
    errors, times = [], []
    for seed in range(seeds):
        sampler = random_batches(problem.X, problem.y, batch_size=batch_size, seed=seed)
        method = stochastic(problem.batch_loss, sampler, num_batches=num_batches)
        start = time.perf_counter()
        got = method(problem.inner, w, lam, v).vjp["lam"]
        times.append(time.perf_counter() - start)
        errors.append(float((got - ref).norm() / ref.norm()))
    return statistics.mean(errors), statistics.stdev(errors), 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--num-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| batch size | batches | rel. error (mean ± sd) | ms (median) |")
    print("|---:|---:|---:|---:|")
    for bs in args.batch_sizes:
        for nb in args.num_batches:
            mean, sd, ms = measure(bs, nb, args.seeds)
            print(f"| {bs} | {nb} | {mean:.3f} ± {sd:.3f} | {ms:.1f} |")


if __name__ == "__main__":
    main()
