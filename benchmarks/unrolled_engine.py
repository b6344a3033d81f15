"""The ``unrolled`` method (an ``IterativeProblem`` lower level) on workload (d), per unroll length.

Usage::

    PYTHONPATH=src python -m benchmarks.unrolled_engine [--sizes 10k 100k 1M]
        [--steps 1 5 20 100] [--repeats 5] [--out FILE]

Workload (d) of ``workloads.py`` (Meta-Weight-Net reweighting on synthetic data, lower MLP of
the given size, batches of 128), with the lower level an ``IterativeProblem`` unrolled for
``T`` SGD-momentum steps (``Config(unroll_steps=T)``) before each upper step, plain or with
``Config(checkpoint_segments="sqrt")``. Betty 0.2.1 cannot run it (its ``IterativeProblem``
fails at the first step), so only ziggurat runs. Every (size, T, mode) runs ``--repeats`` times,
each in a fresh process; the table shows medians over the repeats of each process's median
step times and its peak RSS.

Columns: ``lower ms``, one differentiable lower step (its gradient with ``create_graph=True``
and the differentiable optimizer update); ``upper ms``, the upper step (the backward pass
through the ``T`` recorded steps, and the upper optimizer's step); ``plain ms``, one plain
PyTorch training step of the same lower model; ``lower floor`` ``B``, the gradient graph alone
(``floors.py``); ``upper floor`` ``U + T H``: the upper loss's gradient with respect to the
final weights and one backward through each step's graph, charged as one Hessian-vector
product; ``x floor`` = time / floor.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # where `python -m benchmarks.x` finds the package
SRC = ROOT / "src"


def worker(size: str, steps: int, mode: str, iters: int, warmup: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from ziggurat import Engine
    from ziggurat.configs import Config, EngineConfig
    from ziggurat.problems import ImplicitProblem, IterativeProblem

    from . import floors, programs, step_floors

    torch.set_num_threads(1)
    torch.manual_seed(0)
    xtr, ytr, xm, ym, batch = programs.data("d", size)
    model = programs.lower_model("d", size)
    stamps: dict[str, list[float]] = {"lower": [], "upper": []}

    class Upper(ImplicitProblem):
        def training_step(self, batch: Any) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.lower(x), y)

        def param_callback(self) -> None:
            stamps["upper"].append(time.perf_counter())

    class Lower(IterativeProblem):
        def training_step(self, batch: Any) -> torch.Tensor:
            x, y = batch
            out = self(x)
            lam_out = self.upper(F.cross_entropy(out, y, reduction="none").detach())
            first = next(iter(self.params.values()))
            return programs.lower_loss("d", out, y, lam_out, first)

        def param_callback(self) -> None:
            stamps["lower"].append(time.perf_counter())

    weight_net = programs.WeightNet()
    upper = Upper(
        name="upper",
        module=weight_net,
        optimizer=torch.optim.Adam(weight_net.parameters(), lr=1e-3),
        train_data_loader=programs.Loader(xm, ym, batch, 1),
    )
    segments = "sqrt" if mode == "sqrt" else None
    lower = Lower(
        name="lower",
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        train_data_loader=programs.Loader(xtr, ytr, batch, 2),
        config=Config(unroll_steps=steps, checkpoint_segments=segments),
    )
    engine = Engine(
        problems=[upper, lower],
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
        config=EngineConfig(train_iters=(warmup + iters) * steps, valid_step=0),
    )
    engine.run()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ups, lows = stamps["upper"], stamps["lower"]
    upper_s, lower_s = [], []
    for i, end in enumerate(ups):
        loop = [t for t in lows if (i == 0 or t > ups[i - 1]) and t < end]
        start = ups[i - 1] if i > 0 else None
        if i >= warmup and len(loop) == steps:
            upper_s.append(end - loop[-1])
            marks = ([start] if start is not None else []) + loop
            lower_s += [b - a for a, b in itertools.pairwise(marks)]
    batch_t = (xtr[:batch], ytr[:batch], xm[:batch], ym[:batch])
    reps = 7
    plain = step_floors.plain_step("d", lower, batch_t, reps)
    tasks = step_floors.primitive_tasks("d", upper, lower, batch_t, products=10)
    t = {name: step_floors.timed(tasks[name], reps) for name in ("G", "Gw", "B", "B+KH", "B+KM")}
    t["FO"] = 0.0
    u = step_floors.timed(tasks["U"], reps)
    try:
        prim = floors.primitives_from_timings(t, 10)
    except ValueError:
        prim = None
    return {
        "size": size,
        "steps": steps,
        "mode": mode,
        "params": sum(p.numel() for p in model.parameters()),
        "upper_ms": statistics.median(upper_s) * 1e3,
        "lower_ms": statistics.median(lower_s) * 1e3,
        "plain_ms": plain * 1e3,
        "lower_floor_ms": None if prim is None else prim.build * 1e3,
        "upper_floor_ms": None if prim is None else (u + steps * prim.hvp) * 1e3,
        "rss_mb": rss_mb,
    }


def _med(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def table(groups: list[list[dict[str, Any]]]) -> str:
    lines = [
        "| size | params | T | mode | lower ms | plain ms | lower / plain | lower floor ms | "
        "lower x floor | upper ms | upper floor ms | upper x floor | RSS MB |",
        "|" + "---|" * 13,
    ]
    for rows in groups:
        if not rows:
            continue
        first = rows[0]
        lo, up, plain = _med(rows, "lower_ms"), _med(rows, "upper_ms"), _med(rows, "plain_ms")
        lf, uf = _med(rows, "lower_floor_ms"), _med(rows, "upper_floor_ms")
        lines.append(
            f"| {first['size']} | {first['params']:,} | {first['steps']} | {first['mode']} | "
            f"{_fmt(lo)} | {_fmt(plain)} | {_fmt(_ratio(lo, plain))} | {_fmt(lf)} | "
            f"{_fmt(_ratio(lo, lf))} | {_fmt(up)} | {_fmt(uf)} | {_fmt(_ratio(up, uf))} | "
            f"{_fmt(_med(rows, 'rss_mb'), '.0f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10k", "100k", "1M"])
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 5, 20, 100])
    parser.add_argument("--modes", nargs="+", default=["plain", "sqrt"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", nargs=3, metavar=("SIZE", "T", "MODE"), default=None)
    args = parser.parse_args(argv)
    if args.worker:
        size, steps, mode = args.worker
        iters = max(3, min(20, 200 // int(steps)))
        print(json.dumps(worker(size, int(steps), mode, iters, warmup=1)))
        return 0
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    groups, failed = [], 0
    for size in args.sizes:
        for steps in args.steps:
            for mode in args.modes:
                rows = []
                for _ in range(args.repeats):
                    cmd = [sys.executable, "-m", "benchmarks.unrolled_engine", "--worker"]
                    cmd += [size, str(steps), mode]
                    env = dict(os.environ, PYTHONPATH=str(SRC))
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
                    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                    if proc.returncode != 0 or not lines:
                        failed += 1
                        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                        print(f"  {size} T={steps} {mode}: failed: {tail}", file=sys.stderr)
                        continue
                    rows.append(json.loads(lines[-1]))
                print(f"  done {size} T={steps} {mode}", file=sys.stderr, flush=True)
                groups.append(rows)
    text = table(groups)
    elapsed, load1 = time.perf_counter() - t0, os.getloadavg()[0]
    print(text)
    print(f"{elapsed:.0f} s; 1-min load {load0:.2f} at start, {load1:.2f} at end")
    if args.out is not None:
        cmd = "PYTHONPATH=src python -m benchmarks.unrolled_engine " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        args.out.write_text(
            f"Command: `{cmd}`  \nDate: {datetime.date.today()}  \n"
            f"1-minute load average: {load0:.2f} at the start, {load1:.2f} at the end  \n"
            f"Run time: {elapsed:.0f} s; repeats per configuration: {args.repeats}\n\n{text}\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
