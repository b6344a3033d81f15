"""Plain-autograd floors of one workload step, timed in the benchmark's own process.

The floor of an upper step is the upper gradient plus the method's floor (``floors.py``) over
primitives timed on the same lower loss written as a pure function, with no library code;
the step floor adds the work an upper step must also do (batch, optimizer step, the method's
vector arithmetic). Only the ziggurat process times them; nothing here imports a library.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import floors
from .programs import K, lower_loss


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
