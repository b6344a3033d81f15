"""Cost of each hypergradient method in units of one gradient (G) and one HVP (H).

Usage::

    PYTHONPATH=src python -m benchmarks.core_cost [--sizes 10k 300k 2M] [--out FILE]

The inner problem is an MLP classifier (tanh, cross-entropy) on synthetic data with a fixed
seed; ``w`` are its weights and biases, ``lam`` one L2 weight per output unit of each weight
matrix, so ``f(w, lam) = CE(w) + 1/2 sum_l sum_i lam_l[i] ||W_l[i, :]||^2`` and the mixed
product is not zero. The primitives (G, B, H, M) are timed with plain ``torch.autograd`` in
the same process, interleaved with the methods; see ``floors.py`` for the floor definitions.

Timing: one thread (``torch.set_num_threads(1)``), ``time.perf_counter``, warm-up rounds, then
rounds in which every timed task runs once, in an order rotated each round; the median over
rounds is reported.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ziggurat
from ziggurat import hypergradient as hg
from ziggurat.optim import sgd

from . import floors

Params = dict[str, Tensor]

SIZES: dict[str, tuple[int, tuple[int, ...]]] = {
    # name: (input features, hidden widths); 10 classes
    "10k": (32, (96, 64)),
    "300k": (128, (512, 448)),
    "2M": (256, (1024, 1024, 640)),
}
REPS = {"10k": 41, "300k": 15, "2M": 5}
WARMUP = {"10k": 3, "300k": 2, "2M": 1}
BATCH = 256
CLASSES = 10
LAM = 1.0  # large enough that the Hessian is positive definite: CG runs all K steps
PRODUCTS = 10  # K in the marginal-cost measurement of H and M


@dataclass
class Problem:
    inner: Callable[[Params, Params], Tensor]
    w: Params
    lam: Params
    v: Params
    alpha: float  # 1 / (estimate of the largest Hessian eigenvalue)


def make_problem(size: str, seed: int = 0) -> Problem:
    torch.manual_seed(seed)
    d_in, hidden = SIZES[size]
    dims = (d_in, *hidden, CLASSES)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers)
    x = torch.randn(BATCH, d_in)
    y = (x @ torch.randn(d_in, CLASSES)).argmax(1)
    w = {k: p.detach().clone() for k, p in model.named_parameters()}
    # one weight per output unit, on its row of the weight matrix and on its bias
    units = {k.removesuffix(".weight"): t.shape[0] for k, t in w.items() if t.ndim == 2}
    lam = {layer: torch.full((n,), LAM) for layer, n in units.items()}

    def inner(w: Params, lam: Params) -> Tensor:
        logits = torch.func.functional_call(model, w, (x,))
        reg = sum(
            (lam[u] * ((w[f"{u}.weight"] ** 2).sum(1) + w[f"{u}.bias"] ** 2)).sum() for u in lam
        )
        return F.cross_entropy(logits, y) + 0.5 * reg

    v = {k: torch.randn_like(t) for k, t in w.items()}
    return Problem(inner, w, lam, v, 1.0 / lambda_max(inner, w, lam))


def lambda_max(inner: Callable[[Params, Params], Tensor], w: Params, lam: Params) -> float:
    """Largest |eigenvalue| of the Hessian by 20 power iterations (sets Neumann's alpha)."""
    u = {k: torch.randn_like(t) for k, t in w.items()}
    est = 1.0
    for _ in range(20):
        hu = ziggurat.hvp(inner, w, lam, u)
        est = float(torch.sqrt(sum((t**2).sum() for t in hu.values())))  # type: ignore[arg-type]
        u = {k: t / est for k, t in hu.items()}
    return est


# ----------------------------------------------------------------------- raw primitives


def raw_build(p: Problem) -> tuple[list[Tensor], list[Tensor], tuple[Tensor, ...]]:
    w_ = [t.detach().requires_grad_(True) for t in p.w.values()]
    lam_ = [t.detach().requires_grad_(True) for t in p.lam.values()]
    f = p.inner(dict(zip(p.w, w_, strict=True)), dict(zip(p.lam, lam_, strict=True)))
    g = torch.autograd.grad(f, w_, create_graph=True)
    return w_, lam_, g


def raw_products(p: Problem, k: int, wrt: str) -> None:
    w_, lam_, g = raw_build(p)
    u = list(p.v.values())
    target = w_ if wrt == "w" else lam_
    for _ in range(k):
        torch.autograd.grad(g, target, grad_outputs=u, retain_graph=True, allow_unused=True)


def raw_grad_lam(p: Problem) -> None:
    lam_ = [t.detach().requires_grad_(True) for t in p.lam.values()]
    f = p.inner({k: t.detach() for k, t in p.w.items()}, dict(zip(p.lam, lam_, strict=True)))
    torch.autograd.grad(f, lam_)


def raw_grad_w(p: Problem) -> None:
    w_ = [t.detach().requires_grad_(True) for t in p.w.values()]
    f = p.inner(dict(zip(p.w, w_, strict=True)), {k: t.detach() for k, t in p.lam.items()})
    torch.autograd.grad(f, w_)


def primitive_tasks(p: Problem) -> dict[str, Callable[[], object]]:
    """The primitives; FO is the ``first_order`` method's own timing (see ``run_size``)."""
    return {
        "G": lambda: raw_grad_lam(p),
        "Gw": lambda: raw_grad_w(p),
        "B": lambda: raw_build(p),
        "B+KH": lambda: raw_products(p, PRODUCTS, "w"),
        "B+KM": lambda: raw_products(p, PRODUCTS, "lam"),
    }


# ---------------------------------------------------------------------------- methods


def method_specs() -> list[floors.MethodSpec]:
    return [
        floors.MethodSpec("first_order", "first_order"),
        floors.MethodSpec("darts", "darts"),
        floors.MethodSpec("sama", "sama"),
        floors.MethodSpec("neumann(5)", "neumann", 5),
        floors.MethodSpec("neumann(20)", "neumann", 20),
        floors.MethodSpec("cg(5)", "cg", 5),
        floors.MethodSpec("cg(20)", "cg", 20),
        floors.MethodSpec("unrolled(sgd, 5)", "unrolled", 5),
    ]


def build_method(spec: floors.MethodSpec, alpha: float) -> hg.Method:
    if spec.kind == "first_order":
        return hg.first_order()
    if spec.kind == "darts":
        return hg.darts()
    if spec.kind == "sama":
        return hg.sama()
    if spec.kind == "neumann":
        return hg.neumann(spec.k, alpha)
    if spec.kind == "cg":
        return hg.cg(spec.k, tol=1e-30)  # tiny tol: every one of the K iterations runs
    return hg.unrolled(sgd(alpha), spec.k)


def method_tasks(p: Problem, specs: list[floors.MethodSpec]) -> dict[str, Callable[[], object]]:
    tasks: dict[str, Callable[[], object]] = {}
    for spec in specs:
        method = build_method(spec, p.alpha)
        tasks[spec.label] = lambda m=method: m(p.inner, p.w, p.lam, p.v)
    return tasks


def check_iterations(p: Problem, specs: list[floors.MethodSpec]) -> None:
    """The floors assume every solver runs all K iterations; fail loudly if one stops early."""
    for spec in specs:
        if spec.kind in ("cg", "neumann"):
            info = build_method(spec, p.alpha)(p.inner, p.w, p.lam, p.v).info
            if info.iterations != spec.k:
                raise RuntimeError(f"{spec.label} ran {info.iterations} iterations, not {spec.k}")


# ----------------------------------------------------------------------------- timing


def time_rounds(tasks: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, float]:
    """Median seconds per task over ``reps`` rounds, each running every task once, rotated."""
    names = list(tasks)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            gc.disable()
            t0 = time.perf_counter()
            tasks[name]()
            dt = time.perf_counter() - t0
            gc.enable()
            if r >= warmup:
                samples[name].append(dt)
    return {n: statistics.median(s) for n, s in samples.items()}


def run_size(size: str, reps: int, warmup: int) -> tuple[floors.Primitives, list[floors.Row]]:
    p = make_problem(size)
    specs = method_specs()
    check_iterations(p, specs)
    tasks = {**primitive_tasks(p), **method_tasks(p, specs)}
    medians = time_rounds(tasks, reps, warmup)
    medians["FO"] = medians["first_order"]
    prims = floors.primitives_from_timings(medians, PRODUCTS)
    return prims, floors.rows(specs, medians, prims)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}; nproc {os.cpu_count()}; torch {torch.__version__} "
        f"({torch.get_num_threads()} thread); Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--reps", type=int, default=None, help="rounds per size (default varies)")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 5:
        parser.error(f"--reps must be >= 5, got {args.reps}")
    torch.set_num_threads(1)
    print(f"machine: {machine()}", flush=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    blocks = []
    for size in args.sizes:
        p = make_problem(size)
        n = sum(t.numel() for t in p.w.values())
        reps = args.reps or REPS[size]
        prims, table = run_size(size, reps, WARMUP[size])
        block = (
            f"### {size} model: {n:,} lower parameters, "
            f"{sum(t.numel() for t in p.lam.values()):,} upper; batch {BATCH}; "
            f"median of {reps} rounds\n\n"
            f"{floors.primitives_table(prims)}\n\n{floors.methods_table(table)}\n"
        )
        print(block, flush=True)
        blocks.append(block)
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s")
    if args.out is not None:
        args.out.write_text(report(blocks, argv, elapsed, load_before))


def report(blocks: list[str], argv: list[str] | None, elapsed: float, load: float) -> str:
    cmd = " ".join(["PYTHONPATH=src python -m benchmarks.core_cost", *(argv or sys.argv[1:])])
    floors_doc = (floors.__doc__ or "").strip()
    return (
        "# Core hypergradient cost\n\n"
        f"Command: `{cmd}`  \n"
        f"Date: {datetime.date.today().isoformat()}  \n"
        f"Machine: {machine()}  \n"
        f"1-minute load average: {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
        "(other processes on a shared machine add noise to every figure)  \n"
        f"Run time: {elapsed:.0f} s\n\n"
        "All timings use one thread (`torch.set_num_threads(1)`), `time.perf_counter`, "
        "warm-up rounds, then medians over rounds that run every task once in a rotated order. "
        "`ratio` is time / floor, `tight ratio` time / tight floor; the target is "
        "ratio <= 1.15.\n\n"
        f"{floors_doc}\n\n" + "\n".join(blocks)
    )


if __name__ == "__main__":
    main()
