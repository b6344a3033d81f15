"""Bilevel workloads written once in Betty's style, run by ziggurat or by Betty 0.2.1.

One process runs one configuration (a fresh process per configuration, so its peak RSS is its
own) and prints one JSON line::

    python -m benchmarks.workloads --root ziggurat|betty --workload a|b|d --method darts \
        [--size 1M] [--iters 30] [--warmup 5]

Workloads:

* ``a``: logistic-regression HPO on breast cancer (30 standardised features, full batch) with a
  learned weight decay per input feature; the lower level is ``nn.Linear(30, 2)``;
* ``b``: Meta-Weight-Net data reweighting (Shu et al. 2019) on digits with 40% symmetric label
  noise: the lower level an MLP 64-64-10 on batches of 64, the upper a 1-32-1 weight net
  trained on a clean meta set;
* ``d``: the same reweighting program on synthetic data with a lower MLP of ~10k, 100k, 1M or
  5M parameters (``--size``), batches of 128.

Each iteration is one lower step and one upper step (``unroll_steps=1``). The time of a lower
step runs from the end of the upper's step to the lower's ``param_callback``, the time of an
upper step from the lower's ``param_callback`` to the return of the upper's ``step`` (batch
fetch, hypergradient, optimizer step).
Medians over the timed iterations after ``warmup``. With ``--root ziggurat`` the process then
also times, with plain ``torch.autograd`` and no library code, one plain training step of the
lower model and the primitives of the cost floor (``floors.py``), after reading its peak RSS.

The programs are built by ``programs.py``, the floors timed by ``step_floors.py``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import statistics

import torch

from .programs import METHODS, SIZES, K, build
from .step_floors import (
    floor_primitives,
    plain_step,
    step_extra_s,
    step_terms,
    upper_floor_s,
)


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def run(
    root: str, workload: str, method: str, size: str, iters: int, warmup: int, floor: bool = True
) -> dict:
    torch.set_num_threads(1)
    stamps: dict[str, list[float]] = {"lower": [], "upper": [], "products": []}
    engine_mod, upper, lower, batch = build(root, workload, method, size, stamps)
    configs = importlib.import_module(f"{root}.configs")
    engine = engine_mod.Engine(
        problems=[upper, lower],
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
        config=configs.EngineConfig(train_iters=warmup + iters, valid_step=10**9),
    )
    engine.run()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lo, up = stamps["lower"], stamps["upper"]
    upper_s = [b - a for a, b in zip(lo, up, strict=False)][warmup:]
    lower_s = [b - a for a, b in zip(up, lo[1:], strict=False)][warmup:]
    out = {
        "root": root,
        "workload": workload,
        "method": method,
        "size": size,
        "upper_ms": median_ms(upper_s),
        "lower_ms": median_ms(lower_s),
        "rss_mb": rss_mb,
        "params": sum(p.numel() for p in lower.module.parameters()),
    }
    products = stamps["products"][warmup:]
    k = max(1, round(statistics.median(products))) if products and method == "cg" else K
    if root == "ziggurat":
        out["solver_products"] = statistics.median(products) if products else None
    if root == "ziggurat" and floor:
        reps = max(5, min(iters, 15))
        out["plain_ms"] = plain_step(workload, lower, batch, reps) * 1e3
        prim, u, u_forward = floor_primitives(workload, upper, lower, batch, reps)
        floor_s = None if prim is None else upper_floor_s(method, prim, u, k, u_forward)
        out["floor_ms"] = None if floor_s is None else floor_s * 1e3
        terms = step_terms(upper, lower, reps)
        out["step_terms_ms"] = {name: t * 1e3 for name, t in terms.items()}
        extra = step_extra_s(method, terms, k) * 1e3
        out["step_floor_ms"] = None if prim is None else out["floor_ms"] + extra
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", choices=("ziggurat", "betty"), required=True)
    parser.add_argument("--workload", choices=("a", "b", "d"), required=True)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--size", choices=list(SIZES), default="10k")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-floor", action="store_true", help="skip the plain and floor timings")
    args = parser.parse_args()
    result = run(
        args.root, args.workload, args.method, args.size, args.iters, args.warmup, not args.no_floor
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
