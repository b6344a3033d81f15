"""What ``Config(type="auto")``'s measurements cost: whole-run time against the method it chose.

Usage::

    PYTHONPATH=src python -m benchmarks.auto_overhead [--sizes 100k 1M] [--steps 300]
        [--repeats 3] [--target 0.1]

For each size of workload (d) (the Meta-Weight-Net program of ``engine_compare``), a run of
``--steps`` upper steps with ``Config(type="auto", target_error=target)`` at the default
``auto_interval`` (100), then the same program with the method ``auto`` chose last, fixed
(``cg(k)`` or ``darts``). Each run is a fresh process; runs alternate; the table shows medians
of the whole-run wall time and the overhead ``(auto - fixed) / auto``, the share of training
time the decisions take (measurements and the drift checks' host syncs), and the time inside
``Auto.measure`` itself as a share of the auto run (which does not depend on which fixed method
it is compared with: ``auto`` changes its choice during the run, so the first ratio also holds
the difference between its choices and the last one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(size: str, steps: int, method: str, target: float) -> dict:
    import torch

    from benchmarks import programs
    from ziggurat import configs
    from ziggurat.engine import Engine
    from ziggurat.hypergradient import Auto, auto

    torch.set_num_threads(1)
    measuring = [0.0]
    measure = Auto.measure

    def timed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return measure(self, *args, **kwargs)
        finally:
            measuring[0] += time.perf_counter() - t0

    Auto.measure = timed  # type: ignore[method-assign]
    if method == "auto":
        config = configs.Config(type="auto", target_error=target)
    else:
        choice = json.loads(method)
        built, _ = auto(target).build(choice)
        config = configs.Config(hypergradient=built)
    programs.lower_config = lambda _configs, _method: config  # type: ignore[assignment]
    stamps: dict[str, list[float]] = {"lower": [], "upper": [], "products": []}
    _, upper, lower, _ = programs.build("ziggurat", "d", "cg", size, stamps)
    engine = Engine(
        problems=[upper, lower],
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
        config=configs.EngineConfig(train_iters=steps, valid_step=10**9),
    )
    start = time.perf_counter()
    engine.run()
    seconds = time.perf_counter() - start
    last = upper.decisions[-1][2] if upper.decisions else None
    chosen = None if last is None else {"kind": last.chosen.kind, **last.chosen.settings}
    labels = [d.chosen.label for _, _, d in upper.decisions]
    return {"seconds": seconds, "chosen": chosen, "labels": labels, "measuring": measuring[0]}


def spawn(size: str, steps: int, method: str, target: float) -> dict:
    code = (
        "import json, sys; from benchmarks.auto_overhead import one; "
        f"print(json.dumps(one({size!r}, {steps}, sys.argv[1], {target})))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code, method], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["100k", "1M"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.1)
    args = parser.parse_args()
    print(
        "| size | steps | auto s | fixed s | fixed method | (auto - fixed) / auto "
        "| measuring / auto | auto's choices |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        first = spawn(size, args.steps, "auto", args.target)
        fixed_choice = json.dumps(first["chosen"])
        autos, fixeds = [first], []
        for r in range(args.repeats):
            fixeds.append(spawn(size, args.steps, fixed_choice, args.target)["seconds"])
            if r + 1 < args.repeats:
                autos.append(spawn(size, args.steps, "auto", args.target))
        a = statistics.median(x["seconds"] for x in autos)
        share = statistics.median(x["measuring"] / x["seconds"] for x in autos)
        f = statistics.median(fixeds)
        print(
            f"| {size} | {args.steps} | {a:.2f} | {f:.2f} | {fixed_choice} | "
            f"{(a - f) / a:.1%} | {share:.1%} | {', '.join(first['labels'])} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
