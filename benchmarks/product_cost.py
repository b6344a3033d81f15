"""Products from gradients against products by double backward: cost and error, in one run.

Usage::

    PYTHONPATH=src python -m benchmarks.product_cost [--quick] [--out FILE]

Part 1, cost. On the MLP series of ``core_cost`` (tanh MLP classifiers with one L2 weight per
output unit) and on transformer classifiers (``analytic.TinyTransformer``: one encoder layer,
mean-pooled, per-example loss weights as ``lam``), float32, one thread, medians over rotated
rounds (``core_cost.time_rounds``), every figure in milliseconds:

* ``G``: one gradient in ``lam``; ``Gw``: one gradient in ``w`` with the fastest attention
  kernel (flash on the CPU); ``Gw math``: the same under attention's math kernel
  (``ziggurat.twice_differentiable``), the price of the kernel alone;
* ``B``: the gradient graph ``grad_w f`` with ``create_graph=True`` (math kernel);
  ``H``, ``M``: one Hessian-vector / mixed product through it, marginal
  (``(B + K products - B) / K``, ``K = 10``), as in ``floors.py``;
* ``H fd``, ``M fd``: one product by central differences (two gradients each, fused kernel);
* ``cg(10)``, ``cg(10) fd``: a whole hop, ten CG iterations and the mixed product, with
  double-backward products and with finite-difference ones; ``penalty(10)``: the penalty
  method with ten steps;
* the price of the safeguards, in microseconds: ``check``, one walk of the gradient graph
  for operations without a double backward (once per linearisation, once per unrolled step);
  ``kernel``, entering and leaving ``twice_differentiable()``.

Part 2, error. On ``analytic.TransformerReweighting`` (one encoder layer, 323 parameters,
strongly convex at its minimum), each solver run to convergence with double-backward
products and with finite-difference products, and the penalty method, in float64, float32 and
float32 under bf16 autocast, against the float64 dense solve: ``||g - g*|| / ||g*||``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from ziggurat import hvp_fd, mixed_vjp_fd, twice_differentiable
from ziggurat import hypergradient as hg
from ziggurat._second_order import check_gradient_graph
from ziggurat.analytic import TransformerReweighting

from . import core_cost

K = 10
FD = {"curvature": hg.FiniteDifference(), "mixed": hg.MixedFiniteDifference()}
TRANSFORMERS = {
    # name: (sequences, tokens, d_model, heads, feedforward, classes)
    "transformer 2k": (64, 16, 16, 2, 32, 10),
    "transformer 34k": (64, 32, 64, 4, 128, 10),
    "transformer 34k, 128 tokens": (16, 128, 64, 4, 128, 10),
}
REPS = {"10k": 31, "300k": 11, "transformer 2k": 31, "transformer 34k": 11}
REPS["transformer 34k, 128 tokens"] = 11


def transformer_problem(name: str) -> core_cost.Problem:
    """A float32 transformer reweighting problem at its seeded initialisation."""
    n, tokens, d_model, heads, ff, classes = TRANSFORMERS[name]
    p = TransformerReweighting.make(
        n=n,
        n_valid=1,
        tokens=tokens,
        d_model=d_model,
        heads=heads,
        feedforward=ff,
        classes=classes,
        decay=1.0,
        dtype=torch.float32,
    )
    w = {k: t.detach().clone() for k, t in p.net.named_parameters()}
    lam = {"lam": p.lam0.clone()}
    v = {k: torch.randn_like(t) for k, t in w.items()}
    return core_cost.Problem(p.inner, w, lam, v, alpha=1.0)


def cost_tasks(p: core_cost.Problem) -> dict[str, Callable[[], object]]:
    def math(task: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with twice_differentiable():
                return task()

        return run

    with twice_differentiable():
        _, _, graph = core_cost.raw_build(p)
    loss = p.inner(p.w, p.lam)
    cg_ad = hg.cg(K, tol=1e-30)
    cg_fd = hg.cg(K, tol=1e-30, **FD)
    pen = hg.penalty(K, 0.1)
    return {
        "G": lambda: core_cost.raw_grad_lam(p),
        "Gw": lambda: core_cost.raw_grad_w(p),
        "Gw math": math(lambda: core_cost.raw_grad_w(p)),
        "B": math(lambda: core_cost.raw_build(p)),
        "B+KH": math(lambda: core_cost.raw_products(p, K, "w")),
        "B+KM": math(lambda: core_cost.raw_products(p, K, "lam")),
        "H fd": lambda: hvp_fd(p.inner, p.w, p.lam, p.v),
        "M fd": lambda: mixed_vjp_fd(p.inner, p.w, p.lam, p.v),
        "cg(10)": lambda: cg_ad(p.inner, p.w, p.lam, p.v),
        "cg(10) fd": lambda: cg_fd(p.inner, p.w, p.lam, p.v),
        "penalty(10)": lambda: pen(p.inner, p.w, p.lam, p.v),
        "check": lambda: check_gradient_graph(graph, loss),
        "kernel": lambda: _enter(twice_differentiable),
    }


def _enter(context: Callable[[], AbstractContextManager[object]]) -> None:
    with context():
        pass


COLUMNS = ["G", "Gw", "Gw math", "B", "H", "H fd", "M", "M fd", "cg(10)", "cg(10) fd"]
OVERHEAD = ["check", "kernel"]


def cost_row(name: str, p: core_cost.Problem, reps: int) -> str:
    t = core_cost.time_rounds(cost_tasks(p), reps, warmup=2)
    t["H"] = (t["B+KH"] - t["B"]) / K
    t["M"] = (t["B+KM"] - t["B"]) / K
    n = sum(x.numel() for x in p.w.values())
    cells = [f"{1e3 * t[c]:.3f}" for c in [*COLUMNS, "penalty(10)"]]
    ratio = t["cg(10) fd"] / t["cg(10)"]
    extra = [f"{1e6 * t[c]:.0f}" for c in OVERHEAD]
    return f"| {name} | {n:,} | " + " | ".join([*cells, f"{ratio:.2f}", *extra]) + " |"


def cost_table(cases: list[str]) -> str:
    head = (
        "| model | params | G | Gw | Gw math | B | H | H fd | M | M fd | cg(10) | cg(10) fd "
        "| penalty(10) | cg fd / cg | check µs | kernel µs |\n|---|---:|" + "---:|" * 14
    )
    rows = []
    for name in cases:
        p = transformer_problem(name) if name in TRANSFORMERS else core_cost.make_problem(name)
        rows.append(cost_row(name, p, REPS[name]))
        print(rows[-1], flush=True)
    return head + "\n" + "\n".join(rows)


# ------------------------------------------------------------------------------- error

Context = Callable[[], AbstractContextManager[object]]
DTYPES: dict[str, tuple[torch.dtype, Context]] = {
    "float64": (torch.float64, nullcontext),
    "float32": (torch.float32, nullcontext),
    "bf16 autocast": (torch.float32, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
}
STEPS = 60  # neumann, fixed_point, penalty: contraction (1 - 0.21 / 0.48)^60 ~ 5e-16


def solvers(lam_max: float) -> dict[str, Callable[..., hg.Method]]:
    a = 1.0 / lam_max
    return {
        "exact": lambda **kw: hg.exact(**kw),
        "cg": lambda **kw: hg.cg(100, 1e-14, **kw),
        "neumann": lambda **kw: hg.neumann(STEPS, a, **kw),
        "fixed_point": lambda **kw: hg.fixed_point(STEPS, a, **kw),
    }


def cast_problem(p: TransformerReweighting, dtype: torch.dtype) -> TransformerReweighting:
    q = copy.copy(p)
    q.net = copy.deepcopy(p.net).to(dtype)
    q.x, q.xv = p.x.to(dtype), p.xv.to(dtype)
    return q


def error_table() -> str:
    p = TransformerReweighting.make()
    w, lam, v = p.point()
    _, lam_max = p.spectrum()
    ref = p.exact_vjp(v)["lam"]

    def error(method: hg.Method, dtype: torch.dtype, context: Context) -> float:
        q = cast_problem(p, dtype)
        cast = [{k: t.to(dtype) for k, t in tree.items()} for tree in (w, lam, v)]
        with context():
            got = method(q.inner, *cast).vjp["lam"]
        return float((got.double() - ref).norm() / ref.norm())

    names = list(DTYPES)
    head = "| solver | " + " | ".join(f"{d} FD | {d} autograd" for d in names)
    lines = [head + " |", "|---|" + "---:|" * (2 * len(names))]
    for name, build in solvers(lam_max).items():
        cells = []
        for d in names:
            dtype, context = DTYPES[d]
            cells += [f"{error(build(**FD), dtype, context):.1e}"]
            cells += [f"{error(build(), dtype, context):.1e}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    cells = []
    for d in names:
        dtype, context = DTYPES[d]
        cells += [f"{error(hg.penalty(STEPS, 1.0 / lam_max), dtype, context):.1e}", "—"]
    lines.append("| penalty | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small models only")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"machine: {core_cost.machine()}", flush=True)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    cases = ["10k", "transformer 2k"] if args.quick else ["10k", "300k", *TRANSFORMERS]
    cost = cost_table(cases)
    errors = error_table()
    elapsed = time.perf_counter() - started
    cmd = " ".join(["PYTHONPATH=src python -m benchmarks.product_cost", *(argv or sys.argv[1:])])
    report = (
        f"Command: `{cmd}`  \nDate: {datetime.date.today().isoformat()}  \n"
        f"Machine: {core_cost.machine()}  \n"
        f"1-minute load average: {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end  \n"
        f"Run time: {elapsed:.0f} s\n\n"
        f"Cost (ms, float32, one thread):\n\n{cost}\n\n"
        f"Relative error against the float64 dense solve (TransformerReweighting):\n\n{errors}\n"
    )
    print(report)
    if args.out is not None:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
