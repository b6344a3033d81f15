"""ziggurat against Betty 0.2.1 on whole bilevel programs (``workloads.py``), per method.

Usage::

    PYTHONPATH=src python -m benchmarks.engine_compare [--betty /tmp/betty-venv/bin/python]
        [--quick] [--repeats 5] [--out FILE]

Every configuration runs in fresh processes, ours and Betty's alternating, ``--repeats`` times
each; the table shows medians over the repeats of each process's median step times and its
peak RSS (``ru_maxrss``). Without ``--betty`` only ziggurat runs. ``--quick`` is the short
version behind ``ziggurat bench`` (workload b and the 10k/1M scaling points, fewer iterations).

Columns: ``upper``/``lower`` ms per step; ``plain`` ms of one plain PyTorch training step of
the same lower model; ``solver products``: Hessian-vector products a solver spent per upper
step (CG stops at non-positive curvature, Betty's always runs its K); ``floor`` ms of an upper
step's floor (the upper gradient plus the method's floor from ``floors.py`` with the products
spent, timed with plain autograd in the same process); ``x floor`` = upper / floor;
``step floor`` adds what an upper step must also spend and the floor omits (batch fetch, the
upper optimizer's step, the method's vector work: see ``step_floors.step_extra_s``), timed the
same way, and ``x step floor`` = upper / step floor; ``x Betty`` = ours / Betty for
upper-step time and peak RSS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # where `python -m benchmarks.x` finds the package
SRC = ROOT / "src"
ALL = ("first_order", "darts", "sama", "neumann", "cg")
FOUR = ("darts", "sama", "neumann", "cg")


def configs(quick: bool) -> list[tuple[str, str, str, int, int]]:
    """(workload, method, size, iters, warmup)."""
    if quick:
        out = [("b", m, "10k", 15, 3) for m in ALL]
        return out + [("d", m, "1M", 6, 2) for m in FOUR]
    out = [("a", m, "10k", 40, 5) for m in ALL] + [("b", m, "10k", 40, 5) for m in ALL]
    for size, iters in (("10k", 40), ("100k", 30), ("1M", 12), ("5M", 6)):
        out += [("d", m, size, iters, 2) for m in FOUR]
    return out


def run_one(python: str, root: str, cfg: tuple[str, str, str, int, int]) -> dict | None:
    workload, method, size, iters, warmup = cfg
    cmd = [python, "-m", "benchmarks.workloads", "--root", root, "--workload", workload]
    cmd += ["--method", method, "--size", size, "--iters", str(iters), "--warmup", str(warmup)]
    env = dict(os.environ, PYTHONPATH=str(SRC) if root == "ziggurat" else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  {root} {cfg}: failed: {tail}", file=sys.stderr, flush=True)
        return None
    result: dict = json.loads(lines[-1])
    return result


def med(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def table(rows: list[dict]) -> str:
    head = (
        "| workload | params | method | upper ms | lower ms | plain ms | upper / plain | "
        "solver products | floor ms | x floor | step floor ms | x step floor | RSS MB | "
        "Betty upper ms | Betty lower ms | Betty RSS MB | upper x Betty | RSS x Betty |"
    )
    lines = [head, "|" + "---|" * 18]
    for r in rows:
        z, b = r["ours"], r["betty"]
        name = r["workload"] if r["workload"] != "d" else f"d {r['size']}"
        zu, bu = med(z, "upper_ms"), med(b, "upper_ms")
        zr, br = med(z, "rss_mb"), med(b, "rss_mb")
        plain, fl, sf = med(z, "plain_ms"), med(z, "floor_ms"), med(z, "step_floor_ms")
        params = med(z, "params") or med(b, "params")
        lines.append(
            f"| {name} | {fmt(params, ',.0f')} | {r['method']} | {fmt(zu)} | "
            f"{fmt(med(z, 'lower_ms'))} | {fmt(plain)} | {fmt(ratio(zu, plain))} | "
            f"{fmt(med(z, 'solver_products'), '.0f')} | {fmt(fl)} | "
            f"{fmt(ratio(zu, fl))} | {fmt(sf)} | {fmt(ratio(zu, sf))} | {fmt(zr, '.0f')} | "
            f"{fmt(bu)} | {fmt(med(b, 'lower_ms'))} | "
            f"{fmt(br, '.0f')} | {fmt(ratio(zu, bu))} | {fmt(ratio(zr, br))} |"
        )
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{model}; nproc {os.cpu_count()}; torch {torch.__version__} (1 thread per process); "
        f"Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betty", default=None, help="python of a venv with betty-ml 0.2.1")
    parser.add_argument("--quick", action="store_true", help="the short version (< 5 min)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", default=None, help="run only this workload (a, b or d)")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    print(f"machine: {machine()}; 1-min load {load0:.2f}", flush=True)
    rows, failed = [], 0
    for cfg in configs(args.quick):
        if args.only and cfg[0] != args.only:
            continue
        row = {"workload": cfg[0], "method": cfg[1], "size": cfg[2], "ours": [], "betty": []}
        for _ in range(repeats):
            for root, python in (("ziggurat", sys.executable), ("betty", args.betty)):
                if python is None:
                    continue
                res = run_one(python, root, cfg)
                if res is None:
                    failed += 1
                else:
                    row["ours" if root == "ziggurat" else "betty"].append(res)
        print(f"  done {cfg[0]} {cfg[2]} {cfg[1]}", file=sys.stderr, flush=True)
        rows.append(row)
    text = table(rows)
    print(text)
    elapsed, load1 = time.perf_counter() - t0, os.getloadavg()[0]
    print(f"{elapsed:.0f} s; 1-min load {load0:.2f} at start, {load1:.2f} at end")
    if args.out is not None:
        cmd = "PYTHONPATH=src python -m benchmarks.engine_compare " + " ".join(argv or sys.argv[1:])
        args.out.write_text(
            f"Command: `{cmd}`  \nDate: {datetime.date.today()}  \nMachine: {machine()}  \n"
            f"1-minute load average: {load0:.2f} at the start, {load1:.2f} at the end  \n"
            f"Run time: {elapsed:.0f} s; repeats per configuration: {repeats}\n\n{text}\n"
        )
        (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=1))
    if failed:
        print(f"{failed} benchmark process(es) failed (n/a in the table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
