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
step runs from the upper's ``param_callback`` to the lower's, the time of an upper step from
the lower's ``param_callback`` to the upper's (batch fetch, hypergradient, optimizer step).
Medians over the timed iterations after ``warmup``. With ``--root ziggurat`` the process then
also times, with plain ``torch.autograd`` and no library code, one plain training step of the
lower model and the primitives of the cost floor (``floors.py``), after reading its peak RSS.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("first_order", "darts", "sama", "neumann", "cg")
K = 5  # neumann_iterations and cg_iterations
NEUMANN_ALPHA = 0.1
SIZES: dict[str, tuple[int, int]] = {  # lower MLP d_in -> hidden -> 10
    "10k": (64, 128),
    "100k": (256, 384),
    "1M": (1024, 960),
    "5M": (2048, 2400),
}


def lower_config(configs: Any, method: str) -> Any:
    options: dict[str, dict[str, Any]] = {
        "first_order": {"type": "darts"},  # Betty: switched off on the upper, see upper_config
        "darts": {"type": "darts", "darts_alpha": 0.01},
        "sama": {"type": "sama"},
        "neumann": {"type": "neumann", "neumann_iterations": K, "neumann_alpha": NEUMANN_ALPHA},
        "cg": {"type": "cg", "cg_iterations": K, "cg_alpha": 1.0},
    }
    if method == "first_order" and configs.__name__.startswith("ziggurat"):
        return configs.Config(type="first_order")
    return configs.Config(**options[method])


def upper_config(configs: Any, method: str) -> Any:
    # Betty computes no term through the lower level when the upper's first_order is False
    if method == "first_order" and not configs.__name__.startswith("ziggurat"):
        return configs.Config(first_order=False)
    return configs.Config()


def lower_optimizer(method: str, params: Any, lr: float) -> torch.optim.Optimizer:
    # SAMA's preconditioner is Adam's; with SGD it is plain DARTS in both libraries
    if method == "sama":
        return torch.optim.Adam(params, lr=lr * 0.01)
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


class WeightNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, losses: Tensor) -> Tensor:
        return torch.sigmoid(self.net(losses.unsqueeze(1))).squeeze(1)


class FeatureDecay(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_wd = nn.Parameter(torch.full((features,), -3.0))

    def forward(self) -> Tensor:
        return self.log_wd.exp()


class Loader:
    """An endless iterator over random batches (the same in both libraries)."""

    def __init__(self, x: Tensor, y: Tensor, batch: int, seed: int) -> None:
        self.x, self.y, self.batch = x, y, batch
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.batch >= len(self.x):
            return self.x, self.y
        idx = torch.randint(0, len(self.x), (self.batch,), generator=self.gen)
        return self.x[idx], self.y[idx]


def data(workload: str, size: str) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """(x_train, y_train, x_meta, y_meta, batch)."""
    from sklearn.datasets import load_breast_cancer, load_digits

    rng = np.random.default_rng(0)
    if workload == "a":
        d = load_breast_cancer()
        x = (d.data - d.data.mean(0)) / d.data.std(0)
        idx = rng.permutation(len(x))
        tr, va = idx[:142], idx[142:341]
        xt = torch.tensor(x, dtype=torch.float32)
        yt = torch.tensor(d.target, dtype=torch.long)
        return xt[tr], yt[tr], xt[va], yt[va], 142
    if workload == "b":
        d = load_digits()
        x = torch.tensor(d.data / 16.0, dtype=torch.float32)
        y = d.target.copy()
        idx = rng.permutation(len(x))
        tr, meta = idx[:1078], idx[1078:1167]
        noisy = y[tr].copy()
        flip = rng.random(len(tr)) < 0.4
        noisy[flip] = (noisy[flip] + rng.integers(1, 10, flip.sum())) % 10
        yt = torch.tensor(y, dtype=torch.long)
        return x[tr], torch.tensor(noisy, dtype=torch.long), x[meta], yt[meta], 64
    d_in, _ = SIZES[size]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, d_in, generator=gen)
    y = (x @ torch.randn(d_in, 10, generator=gen)).argmax(1)
    noisy = torch.where(torch.rand(2048, generator=gen) < 0.4, (y + 3) % 10, y)
    return x[:1792], noisy[:1792], x[1792:], y[1792:], 128


def lower_model(workload: str, size: str) -> nn.Module:
    if workload == "a":
        return nn.Linear(30, 2)
    if workload == "b":
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    d_in, hidden = SIZES[size]
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def lower_loss(workload: str, out: Tensor, y: Tensor, lam_out: Tensor, w: Tensor) -> Tensor:
    """The lower objective given the upper module's output ``lam_out`` and first weight ``w``."""
    if workload == "a":
        return F.cross_entropy(out, y) + (lam_out * (w**2).sum(0)).sum()
    losses = F.cross_entropy(out, y, reduction="none")
    return (lam_out * losses).sum() / lam_out.sum()


def build(root: str, workload: str, method: str, size: str, stamps: dict[str, list[float]]) -> Any:
    problems = importlib.import_module(f"{root}.problems")
    configs = importlib.import_module(f"{root}.configs")
    engine_mod = importlib.import_module(f"{root}.engine")
    torch.manual_seed(0)
    xtr, ytr, xm, ym, batch = data(workload, size)
    model = lower_model(workload, size)
    upper_module: nn.Module = FeatureDecay(30) if workload == "a" else WeightNet()
    lr = 0.5 if workload == "a" else 0.1

    class Upper(problems.ImplicitProblem):  # type: ignore[misc,name-defined]
        def training_step(self, batch: Any) -> Tensor:
            x, y = batch
            return F.cross_entropy(self.lower(x), y)

        def param_callback(self) -> None:
            stamps["upper"].append(time.perf_counter())
            if root == "ziggurat" and method in ("neumann", "cg"):  # products a solver spent
                stamps["products"].extend(float(i.iterations) for i in self.last_hop_info)

    class Lower(problems.ImplicitProblem):  # type: ignore[misc,name-defined]
        def training_step(self, batch: Any) -> Tensor:
            x, y = batch
            out = self.module(x)
            if workload == "a":
                lam_out = self.upper()
            else:
                lam_out = self.upper(F.cross_entropy(out, y, reduction="none").detach())
            first = next(iter(self.module.parameters()))
            return lower_loss(workload, out, y, lam_out, first)

        def param_callback(self) -> None:
            stamps["lower"].append(time.perf_counter())

    upper = Upper(
        name="upper",
        module=upper_module,
        optimizer=torch.optim.Adam(upper_module.parameters(), lr=1e-3),
        train_data_loader=Loader(xm, ym, batch, 1),
        config=upper_config(configs, method),
    )
    lower = Lower(
        name="lower",
        module=model,
        optimizer=lower_optimizer(method, model.parameters(), lr),
        train_data_loader=Loader(xtr, ytr, batch, 2),
        config=lower_config(configs, method),
    )
    return engine_mod, upper, lower, (xtr[:batch], ytr[:batch], xm[:batch], ym[:batch])


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def timed(fn: Callable[[], object], reps: int) -> float:
    out = []
    for i in range(reps + 2):
        t0 = time.perf_counter()
        fn()
        if i >= 2:
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


def plain_step(workload: str, lower: Any, batch: tuple[Tensor, ...], reps: int) -> float:
    """One plain training step of the same lower model: forward, backward, optimizer step."""
    model = lower.module
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    x, y = batch[0], batch[1]

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return timed(step, reps)


def pure_lower_loss(workload: str, upper: Any, lower: Any, x: Tensor, y: Tensor) -> Callable:
    """The lower loss as a pure function ``f(w, lam)`` of both modules' parameters."""
    model, umod = lower.module, upper.module
    first = next(iter(dict(model.named_parameters())))

    def f(w: dict[str, Tensor], lam: dict[str, Tensor]) -> Tensor:
        out = torch.func.functional_call(model, w, (x,))
        if workload == "a":
            lam_out = torch.func.functional_call(umod, lam, ())
        else:
            losses = F.cross_entropy(out, y, reduction="none").detach()
            lam_out = torch.func.functional_call(umod, lam, (losses,))
        return lower_loss(workload, out, y, lam_out, w[first])

    return f


def primitive_tasks(
    workload: str, upper: Any, lower: Any, batch: tuple[Tensor, ...], products: int = 10
) -> dict[str, Callable[[], Any]]:
    """The plain-autograd computations that :func:`floor_primitives` times, each returning
    what it computed (so a test can check it is the right quantity).

    ``G``: ``df/dlam``; ``Gw``: ``df/dw``; ``B``: the gradient graph ``df/dw`` built with
    ``create_graph=True``; ``B+KH``: that graph and ``products`` Hessian-vector products
    ``H v`` (the last returned); ``B+KM``: the graph and ``products`` mixed products
    ``(d^2 f/dlam dw) v``; ``U``: the upper loss's gradient with respect to ``w``; ``U0``: the
    upper loss alone. ``v`` is a fixed random direction (``tasks["v"]()`` returns it).
    """
    model = lower.module
    x, y, xm, ym = batch
    w0 = {k: p.detach() for k, p in model.named_parameters()}
    lam0 = {k: p.detach() for k, p in upper.module.named_parameters()}
    f = pure_lower_loss(workload, upper, lower, x, y)

    def leaves(t: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.detach().requires_grad_(True) for k, v in t.items()}

    v = {k: torch.randn_like(t) for k, t in w0.items()}

    def build() -> tuple[dict[str, Tensor], dict[str, Tensor], tuple[Tensor, ...]]:
        w, lam = leaves(w0), leaves(lam0)
        g = torch.autograd.grad(f(w, lam), list(w.values()), create_graph=True)
        return w, lam, g

    def repeated(wrt: str) -> tuple[Tensor, ...]:
        w, lam, g = build()
        target = list(w.values()) if wrt == "w" else list(lam.values())
        out: tuple[Tensor, ...] = ()
        for _ in range(products):
            out = torch.autograd.grad(g, target, grad_outputs=list(v.values()), retain_graph=True)
        return out

    def grad_lam() -> tuple[Tensor, ...]:
        lam = leaves(lam0)
        return torch.autograd.grad(f(w0, lam), list(lam.values()))

    def grad_w() -> tuple[Tensor, ...]:
        w = leaves(w0)
        return torch.autograd.grad(f(w, lam0), list(w.values()))

    def upper_loss(w: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(torch.func.functional_call(model, w, (xm,)), ym)

    def upper_grad() -> tuple[Tensor, ...]:
        w = leaves(w0)
        return torch.autograd.grad(upper_loss(w), list(w.values()))

    return {
        "G": grad_lam,
        "Gw": grad_w,
        "B": lambda: build()[2],
        "B+KH": lambda: repeated("w"),
        "B+KM": lambda: repeated("lam"),
        "U": upper_grad,
        "U0": lambda: upper_loss(leaves(w0)),
        "v": lambda: v,
    }


def floor_primitives(
    workload: str, upper: Any, lower: Any, batch: tuple[Tensor, ...], reps: int
) -> tuple[Any, float, float]:
    """Plain-autograd primitives of the lower loss ``f(w, lam)`` (timed
    :func:`primitive_tasks`), the upper gradient ``U`` and the upper loss's forward alone
    (what a first-order step needs: the upper loss here does not read the upper parameters,
    so their direct gradient costs nothing more)."""
    from . import floors

    tasks = primitive_tasks(workload, upper, lower, batch, products=10)
    t = {name: timed(tasks[name], reps) for name in ("G", "Gw", "B", "B+KH", "B+KM")}
    t["FO"] = 0.0
    u, u_forward = timed(tasks["U"], reps), timed(tasks["U0"], reps)
    try:
        prim = floors.primitives_from_timings(t, 10)
    except ValueError:
        return None, u, u_forward
    return prim, u, u_forward


def upper_floor_s(
    method: str, prim: Any, u: float, k: int = K, u_forward: float | None = None
) -> float:
    """Floor of one upper step: the upper gradient ``U`` plus the method's floor (``FO = 0``).

    A first-order step needs no gradient with respect to the lower weights: given the upper
    loss's forward alone (``u_forward``), that is its floor.

    ``k`` is the number of solver products: ``K`` for Neumann; for CG the number it spent,
    since it stops at a direction of non-positive curvature (often after 2 or 3 of ``K`` on
    these non-convex losses), where Betty's CG always runs ``K``.
    """
    from . import floors

    if method == "first_order" and u_forward is not None:
        return u_forward
    kind = method
    spec = floors.MethodSpec(method, kind, k if kind in ("neumann", "cg") else 0)
    return u + floors.floor(spec, prim).seconds


def step_terms(upper: Any, lower: Any, reps: int) -> dict[str, float]:
    """Plain-torch timings of the work an upper step does beyond ``U`` and the method's floor.

    ``fetch``: one upper batch from the loader; ``opt``: one step of the upper optimizer
    (the workload's Adam, on copies of the upper parameters with gradients set); over trees
    shaped like the lower parameters: ``norm`` (per-tensor norms, then their norm), ``axpy``
    (``w + h v`` into a new tensor, how a perturbation that leaves ``w`` intact is formed),
    ``axpy_`` (the same update in place), ``dot`` (``sum(a * b)``), ``e3`` (one elementwise
    pass reading three tensors, ``addcmul``: the least any elementwise function of Adam's two
    moments and the gradient costs) and ``e2`` (one product of two tensors).
    """
    w = [p.detach().clone() for p in lower.module.parameters()]
    v = [torch.randn_like(t) for t in w]
    buf = [t.clone() for t in w]
    lam = [p.detach().clone().requires_grad_(True) for p in upper.module.parameters()]
    for p in lam:
        p.grad = torch.randn_like(p)
    opt = torch.optim.Adam(lam, lr=1e-3)
    loader = upper.train_data_loader

    def norm() -> None:
        float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in v])))

    def dot() -> None:
        torch.stack([torch.sum(a * b) for a, b in pairs(w, v)]).sum()

    return {
        "fetch": timed(lambda: next(loader), reps),
        "opt": timed(opt.step, reps),
        "norm": timed(norm, reps),
        "axpy": timed(lambda: [torch.add(a, b, alpha=1e-3) for a, b in pairs(w, v)], reps),
        "axpy_": timed(lambda: [a.add_(b, alpha=1e-9) for a, b in pairs(buf, v)], reps),
        "dot": timed(dot, reps),
        "e3": timed(lambda: [torch.addcmul(a, a, b) for a, b in pairs(w, v)], reps),
        "e2": timed(lambda: [a * b for a, b in pairs(w, v)], reps),
    }


def pairs(a: list[Tensor], b: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    return list(zip(a, b, strict=True))


def step_extra_s(method: str, e: dict[str, float], k: int = K) -> float:
    """What an upper step must spend beyond the floor of ``upper_floor_s`` (see ``step_terms``).

    Every step fetches a batch and steps the upper optimizer. DARTS and SAMA take the norm of
    the cotangent (the step is ``radius / ||v||``) and form ``w + h v`` and ``w - h v``
    (two new trees; perturbing in place takes three passes and does not restore ``w``
    exactly); SAMA also builds its diagonal from Adam's state (at least one three-input pass)
    and multiplies the cotangent by it. Neumann(K) updates its term and its sum in each
    iteration and scales the sum once (``2K + 1`` in-place passes). CG spends three in-place
    updates and two dot products per iteration it takes (``k``) and one initial dot product.
    """
    out = e["fetch"] + e["opt"]
    if method in ("darts", "sama"):
        out += e["norm"] + 2 * e["axpy"]
    if method == "sama":
        out += e["e3"] + e["e2"]
    if method == "neumann":
        out += (2 * K + 1) * e["axpy_"]
    if method == "cg":
        out += k * (3 * e["axpy_"] + 2 * e["dot"]) + e["dot"]
    return out


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
