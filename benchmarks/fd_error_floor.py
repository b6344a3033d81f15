"""Error floors of the first-order-only hypergradients, per dtype.

Part 1: every solver with finite-difference products (``FiniteDifference`` curvature and
``MixedFiniteDifference``, both from ordinary gradients) against its double-backward twin, in
float64, float32 and float32 parameters under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
Solvers run to convergence (``exact``: a dense solve; ``cg``: up to ``10 n`` iterations;
``neumann`` and ``fixed_point``: enough steps of size ``1 / lambda_max`` to shrink the error below
1e-12), so what remains is the products' floor. The ``penalty`` method (F2SA / BOME) with the
same number of steps and its default ``eps`` is listed with them.

Part 2: the penalty method's error against its number of steps and against ``eps`` on
logistic-regression HPO, whose inner loss is not quadratic (so ``eps`` has a truncation error).

Each error is ``||g - g*|| / ||g*||`` against the float64 exact answer at the same float64 point
(cast to the run's dtype): for the bilevel problems ``g`` is the best-response product
``v^T dw*/dlam``; for the three-level chain it is the upper level's whole hypergradient (the fold
of both paths, the method at both hops). Writes Markdown to stdout::

    python benchmarks/fd_error_floor.py > table.md
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from ziggurat import linalg
from ziggurat._products import Linearization
from ziggurat._types import InnerLoss, Params
from ziggurat.analytic import LogisticHPO, QuadraticBilevel, QuadraticTrilevel, RidgeHPO
from ziggurat.hypergradient import (
    FiniteDifference,
    Hop,
    Method,
    MixedFiniteDifference,
    cg,
    exact,
    fixed_point,
    fold,
    neumann,
    penalty,
)

D = torch.float64
FD = {"curvature": FiniteDifference(), "mixed": MixedFiniteDifference()}

Context = Callable[[], AbstractContextManager[object]]
DTYPES: dict[str, tuple[torch.dtype, Context]] = {
    "float64": (torch.float64, nullcontext),
    "float32": (torch.float32, nullcontext),
    "bf16 autocast": (torch.float32, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
}


def rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def cast(tree: Params, dtype: torch.dtype) -> Params:
    return {k: t.to(dtype) for k, t in tree.items()}


@dataclass(frozen=True)
class Hop1:
    """One bilevel hop: a loss for each dtype, the float64 point and the exact answer."""

    inner: Callable[[torch.dtype], InnerLoss]
    w: Params
    lam: Params
    v: Params
    hessian: Tensor

    def truth(self) -> Tensor:
        return exact()(self.inner(D), self.w, self.lam, self.v).vjp["lam"]

    def run(self, method: Method, dtype: torch.dtype, context: Context) -> Tensor:
        inner = self.inner(dtype)
        w, lam, v = (cast(t, dtype) for t in (self.w, self.lam, self.v))
        with context():
            return method(inner, w, lam, v).vjp["lam"]


P = TypeVar("P")


def in_float32(problem: P) -> dict[torch.dtype, P]:
    """The float64 problem and a copy with every tensor field cast to float32 (the same data,
    not a fresh float32 draw)."""
    fields = {
        f.name: getattr(problem, f.name).float()
        for f in dataclasses.fields(problem)  # type: ignore[arg-type]
        if isinstance(getattr(problem, f.name), Tensor)
    }
    return {D: problem, torch.float32: dataclasses.replace(problem, **fields)}  # type: ignore[type-var]


def quadratic() -> Hop1:
    problems = in_float32(QuadraticBilevel.make(n=8, m=5, seed=3))
    w, lam, v = problems[D].point()
    return Hop1(lambda dt: problems[dt].inner, w, lam, v, problems[D].A)


def ridge() -> Hop1:
    problems = in_float32(RidgeHPO.diabetes())
    w, lam, v = problems[D].point()
    return Hop1(lambda dt: problems[dt].inner, w, lam, v, problems[D].hessian(lam))


def logistic() -> Hop1:
    problems = in_float32(LogisticHPO.breast_cancer())
    base = problems[D]
    w, lam, v = base.point()
    hessian = linalg.materialize(Linearization(base.inner, w, lam).hvp, w)
    return Hop1(lambda dt: problems[dt].inner, w, lam, v, hessian)


def long_steps(hessian: Tensor) -> tuple[int, float]:
    """Steps of size ``1 / lambda_max`` that shrink the error below 1e-12, and that size."""
    eig = torch.linalg.eigvalsh(hessian)
    low, high = float(eig.min()), float(eig.max())
    return math.ceil(math.log(1e-12) / math.log(1 - low / high)), 1.0 / high


def solvers(hessian: Tensor) -> dict[str, Callable[[dict[str, object]], Method]]:
    """Each solver run to convergence, given its products (``{}`` means double backward)."""
    n = hessian.shape[0]
    steps, size = long_steps(hessian)
    return {
        "exact": lambda p: exact(**p),  # type: ignore[arg-type]
        "cg": lambda p: cg(10 * n, 1e-13, **p),  # type: ignore[arg-type]
        "neumann": lambda p: neumann(steps, size, **p),  # type: ignore[arg-type]
        "fixed_point": lambda p: fixed_point(steps, size, tol=1e-13, **p),  # type: ignore[arg-type]
    }


class Trilevel:
    """The three-level chain: the upper gradient through both paths, the method at both hops."""

    def __init__(self) -> None:
        self.problems = in_float32(QuadraticTrilevel.make(seed=1))
        tri = self.problems[D]
        self.point = tri.point()
        self.truth = tri.hop_hypergradient(self.point[2], self.point[1], self.point[0])

    def run(
        self, build: Callable[[Tensor], Method], dtype: torch.dtype, context: Context
    ) -> Tensor:
        tri = self.problems[dtype]
        z, y, x = (t.to(dtype) for t in self.point)
        low = Hop(build(self.problems[D].A1), tri.lower, {"z": z}, {"y": y})
        mid = Hop(
            build(self.problems[D].H2_partial()),
            lambda yp, xp: tri.middle(yp, xp, z),
            {"y": y},
            {"x": x},
        )
        with context():
            g1, _ = fold([mid], {"y": y - tri.t})
            g2, _ = fold([low, mid], {"z": z - tri.s})
        return tri.c * x + g1["x"] + g2["x"]


def bilevel_rows(name: str, hop: Hop1) -> list[str]:
    truth = hop.truth()
    lines = []
    for solver, build in solvers(hop.hessian).items():
        cells = [
            f"{rel(hop.run(build(products), dtype, context), truth):.1e}"
            for dtype, context in DTYPES.values()
            for products in (FD, {})
        ]
        lines.append(f"| {name} | {solver} | {' | '.join(cells)} |")
    steps, size = long_steps(hop.hessian)
    cells = [
        f"{rel(hop.run(penalty(steps, size), dtype, context), truth):.1e} | —"
        for dtype, context in DTYPES.values()
    ]
    return [*lines, f"| {name} | penalty | {' | '.join(cells)} |"]


def trilevel_builder(solver: str, products: dict[str, object]) -> Callable[[Tensor], Method]:
    """The method for a hop with Hessian ``h``: ``solver`` with ``products``, or the penalty."""
    if solver == "penalty":
        return lambda h: penalty(*long_steps(h))
    return lambda h: solvers(h)[solver](products)


def trilevel_rows() -> list[str]:
    tri = Trilevel()
    lines = []
    for solver in ("exact", "cg", "neumann", "fixed_point", "penalty"):
        cells = []
        for dtype, context in DTYPES.values():
            for products in (FD, {}):
                if solver == "penalty" and not products:
                    cells.append("—")  # the penalty method has no double-backward twin
                    continue
                got = tri.run(trilevel_builder(solver, products), dtype, context)
                cells.append(f"{rel(got, tri.truth):.1e}")
        lines.append(f"| three-level | {solver} | {' | '.join(cells)} |")
    return lines


def floor_table() -> list[str]:
    head = " | ".join(f"{d} FD | {d} autograd" for d in DTYPES)
    lines = [f"| problem | solver | {head} |", "|---|---|" + "---:|" * (2 * len(DTYPES))]
    for name, hop in {"quadratic": quadratic(), "ridge": ridge(), "logistic": logistic()}.items():
        lines += bilevel_rows(name, hop)
    return lines + trilevel_rows()


def autocast_step_table() -> list[str]:
    """Under bf16 autocast, the step rule's roundoff is bfloat16's; with float32's it would be
    ``(eps_bf16 / eps_f32)^(1/3) = 40.3`` times shorter."""
    lines = [
        "| problem | exact FD, bf16 step (the rule) | exact FD, float32 step |",
        "|---|---:|---:|",
    ]
    _, context = DTYPES["bf16 autocast"]
    for name, hop in {"quadratic": quadratic(), "ridge": ridge(), "logistic": logistic()}.items():
        truth = hop.truth()
        w_norm = float(torch.cat([t.reshape(-1) for t in hop.w.values()]).norm())
        radius = torch.finfo(torch.float32).eps ** (1 / 3) * max(1.0, w_norm)
        short = exact(curvature=FiniteDifference(radius), mixed=MixedFiniteDifference(radius))
        rule = rel(hop.run(exact(**FD), torch.float32, context), truth)  # type: ignore[arg-type]
        fixed = rel(hop.run(short, torch.float32, context), truth)
        lines.append(f"| {name} | {rule:.1e} | {fixed:.1e} |")
    return lines


def penalty_steps_table(hop: Hop1, truth: Tensor) -> list[str]:
    _, size = long_steps(hop.hessian)
    lines = [
        "| steps | penalty float64 | penalty float32 | fixed_point float64 (autograd) |",
        "|---:|---:|---:|---:|",
    ]
    for k in (1, 3, 10, 30, 100, 300, 1000, 3000):
        pen64 = rel(hop.run(penalty(k, size), D, nullcontext), truth)
        pen32 = rel(hop.run(penalty(k, size), torch.float32, nullcontext), truth)
        fp = rel(hop.run(fixed_point(k, size), D, nullcontext), truth)
        lines.append(f"| {k} | {pen64:.2e} | {pen32:.2e} | {fp:.2e} |")
    return lines


def penalty_eps_table(hop: Hop1, truth: Tensor) -> list[str]:
    steps, size = long_steps(hop.hessian)
    lines = [f"| eps | {' | '.join(DTYPES)} |", "|---:|" + "---:|" * len(DTYPES)]
    for eps in (None, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10):
        cells = [
            f"{rel(hop.run(penalty(steps, size, epsilon=eps), dt, ctx), truth):.2e}"
            for dt, ctx in DTYPES.values()
        ]
        label = "default" if eps is None else f"{eps:.0e}"
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"torch {torch.__version__}, Python {platform.python_version()}, one thread\n")
    print("## Relative error of each solver with finite-difference products, per dtype\n")
    print("\n".join(floor_table()))
    print("\n## bf16 autocast: the step from the autocast dtype against the parameters' dtype\n")
    print("\n".join(autocast_step_table()))
    hop = logistic()
    truth = hop.truth()
    steps, size = long_steps(hop.hessian)
    print(f"\n## Penalty method on logistic HPO: error against steps (step {size:.3g})\n")
    print("\n".join(penalty_steps_table(hop, truth)))
    print(f"\n## Penalty method on logistic HPO: error against eps ({steps} steps)\n")
    print("\n".join(penalty_eps_table(hop, truth)))
    print(f"\nRun time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
