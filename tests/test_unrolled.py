"""Unrolled hypergradients against ``torch.autograd`` through a hand-written loop.

The reference loops below spell out each update rule imperatively on plain tensors (they do not
use ``ziggurat.optim``), so a wrong rule or a wrong cut in ``unroll`` shows up as a mismatch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from ziggurat import optim
from ziggurat.hypergradient import Unrolled, unroll, unrolled
from ziggurat.optim import FunctionalOptimizer

DT = torch.float64
NAMES = ("W1", "b1", "w2")
Tree = dict[str, Tensor]


def data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(10)
    x = torch.randn(24, 3, generator=g, dtype=DT)
    y = torch.sin(x.sum(1)) + 0.1 * torch.randn(24, generator=g, dtype=DT)
    return x, y


X, Y = data()


def inner(w: Tree, lam: Tree) -> Tensor:
    """Tiny tanh regression with one log-L2 weight per parameter tensor."""
    pred = torch.tanh(X @ w["W1"] + w["b1"]) @ w["w2"]
    penalty = sum(torch.exp(lam["log_l2"][i]) * (w[k] ** 2).sum() for i, k in enumerate(NAMES))
    return ((pred - Y) ** 2).mean() + 0.5 * penalty


def point() -> tuple[Tree, Tree, Tree]:
    g = torch.Generator().manual_seed(11)
    w = {
        "W1": 0.5 * torch.randn(3, 5, generator=g, dtype=DT),
        "b1": 0.1 * torch.randn(5, generator=g, dtype=DT),
        "w2": 0.5 * torch.randn(5, generator=g, dtype=DT),
    }
    lam = {"log_l2": torch.tensor([-1.0, -2.0, -0.5], dtype=DT)}
    v = {k: torch.randn(t.shape, generator=g, dtype=DT) for k, t in w.items()}
    return w, lam, v


# ------------------------------------------------------------ hand-written update rules
# Each rule maps (w, g, buffers, t) -> (w, buffers) with t counted from 1.

Rule = Callable[[Tree, Tree, dict[str, Tree], int], tuple[Tree, dict[str, Tree]]]
LR, MOMENTUM, B1, B2, EPS, WD = 0.1, 0.9, 0.9, 0.99, 1e-8, 0.05


def sgd_rule(w: Tree, g: Tree, buf: dict[str, Tree], t: int) -> tuple[Tree, dict[str, Tree]]:
    return {k: w[k] - LR * g[k] for k in w}, buf


def momentum_rule(w: Tree, g: Tree, buf: dict[str, Tree], t: int) -> tuple[Tree, dict[str, Tree]]:
    # torch.optim.SGD starts the buffer at the first gradient, not at zero
    m = dict(g) if t == 1 else {k: MOMENTUM * buf["m"][k] + g[k] for k in w}
    return {k: w[k] - LR * m[k] for k in w}, {"m": m}


def _adam_moments(g: Tree, buf: dict[str, Tree], t: int) -> tuple[Tree, Tree]:
    if t == 1:
        m = {k: (1 - B1) * g[k] for k in g}
        v = {k: (1 - B2) * g[k] ** 2 for k in g}
    else:
        m = {k: B1 * buf["m"][k] + (1 - B1) * g[k] for k in g}
        v = {k: B2 * buf["v"][k] + (1 - B2) * g[k] ** 2 for k in g}
    return m, v


def _adam_move(w: Tree, m: Tree, v: Tree, t: int, lr: float) -> Tree:
    out = {}
    for k in w:
        m_hat = m[k] / (1 - B1**t)
        v_hat = v[k] / (1 - B2**t)
        out[k] = w[k] - lr * m_hat / (torch.sqrt(v_hat) + EPS)
    return out


def adam_rule(w: Tree, g: Tree, buf: dict[str, Tree], t: int) -> tuple[Tree, dict[str, Tree]]:
    m, v = _adam_moments(g, buf, t)
    return _adam_move(w, m, v, t, 0.05), {"m": m, "v": v}


def adamw_rule(w: Tree, g: Tree, buf: dict[str, Tree], t: int) -> tuple[Tree, dict[str, Tree]]:
    m, v = _adam_moments(g, buf, t)
    decayed = {k: w[k] * (1 - 0.05 * WD) for k in w}
    return _adam_move(decayed, m, v, t, 0.05), {"m": m, "v": v}


CASES: dict[str, tuple[FunctionalOptimizer, Rule]] = {
    "sgd": (optim.sgd(LR), sgd_rule),
    "sgd-momentum": (optim.sgd(LR, momentum=MOMENTUM), momentum_rule),
    "adam": (optim.adam(0.05, betas=(B1, B2), eps=EPS), adam_rule),
    "adamw": (optim.adamw(0.05, betas=(B1, B2), eps=EPS, weight_decay=WD), adamw_rule),
}


def reference_vjp(rule: Rule, steps: int, cut_before: int = 0) -> Tree:
    """``v^T dw_T/dlam`` by autograd through the loop; state detached before step ``cut_before``."""
    w, lam, v = point()
    lam = {k: t.clone().requires_grad_(True) for k, t in lam.items()}
    w = {k: t.clone().requires_grad_(True) for k, t in w.items()}
    buf: dict[str, Tree] = {}
    for step in range(steps):
        if step == cut_before:
            w = {k: t.detach().requires_grad_(True) for k, t in w.items()}
            buf = {name: {k: t.detach() for k, t in b.items()} for name, b in buf.items()}
        grads = torch.autograd.grad(inner(w, lam), list(w.values()), create_graph=True)
        w, buf = rule(w, dict(zip(w, grads, strict=True)), buf, step + 1)
    out = sum((w[k] * v[k]).sum() for k in w)
    assert isinstance(out, Tensor)
    (d,) = torch.autograd.grad(out, list(lam.values()))
    return {"log_l2": d}


def assert_close(ours: Tree, ref: Tree, tol: float = 1e-10) -> None:
    for k in ref:
        err = float((ours[k] - ref[k]).norm() / ref[k].norm())
        assert err < tol, f"{k}: relative error {err:.2e}"
    assert float(ref["log_l2"].norm()) > 1e-6  # the test would be vacuous otherwise


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("steps", [2, 6])  # one Adam step is ~lr*sign(g): flat in lam
def test_unrolled_matches_autograd_through_hand_written_loop(name: str, steps: int) -> None:
    opt, rule = CASES[name]
    w, lam, v = point()
    result = unrolled(opt, steps)(inner, w, lam, v)
    assert_close(result.vjp, reference_vjp(rule, steps))
    assert result.info.iterations == steps


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("truncate", [1, 3])
def test_truncated_unrolled_matches_loop_detached_before_last_k_steps(
    name: str, truncate: int
) -> None:
    opt, rule = CASES[name]
    steps = 6
    w, lam, v = point()
    result = unrolled(opt, steps, truncate=truncate)(inner, w, lam, v)
    ref = reference_vjp(rule, steps, cut_before=steps - truncate)
    assert_close(result.vjp, ref)
    full = reference_vjp(rule, steps)
    assert float((ref["log_l2"] - full["log_l2"]).norm()) > 1e-6  # truncation matters here


def test_truncate_at_least_steps_is_the_full_unroll() -> None:
    opt, rule = CASES["adam"]
    w, lam, v = point()
    result = unrolled(opt, 4, truncate=10)(inner, w, lam, v)
    assert_close(result.vjp, reference_vjp(rule, 4))


def test_unroll_returns_trajectory_values_of_the_hand_written_loop() -> None:
    opt, rule = CASES["sgd-momentum"]
    w, lam, _ = point()
    ours, state = unroll(inner, w, lam, opt, 5)
    ref = {k: t.clone().requires_grad_(True) for k, t in w.items()}
    buf: dict[str, Tree] = {}
    for step in range(5):
        grads = torch.autograd.grad(inner(ref, lam), list(ref.values()))
        ref, buf = rule(ref, dict(zip(ref, grads, strict=True)), buf, step + 1)
        ref = {k: t.detach().requires_grad_(True) for k, t in ref.items()}
    for k in w:
        torch.testing.assert_close(ours[k], ref[k].detach(), rtol=1e-12, atol=1e-12)
    assert state.step == 5


def test_unrolled_result_carries_no_graph() -> None:
    w, lam, v = point()
    lam = {k: t.clone().requires_grad_(True) for k, t in lam.items()}
    out = unrolled(optim.sgd(LR), 3)(inner, w, lam, v).vjp
    assert not any(t.requires_grad for t in out.values())
    assert all(math.isfinite(float(t.abs().max())) for t in out.values())


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: unrolled(optim.sgd(0.1), 0), r"unrolled steps .*0"),
        (lambda: unrolled(optim.sgd(0.1), -3), r"unrolled steps .*-3"),
        (lambda: unrolled(optim.sgd(0.1), 5, truncate=0), r"unrolled truncate .*0"),
        (lambda: Unrolled(optim.sgd(0.1), 2, truncate=-1), r"unrolled truncate .*-1"),
        (lambda: unrolled(optim.sgd(0.1), 2.5), r"unrolled steps .*2\.5"),  # type: ignore[arg-type]
    ],
)
def test_bad_unrolled_options_name_option_and_value(
    build: Callable[[], object], pattern: str
) -> None:
    with pytest.raises(ValueError, match=pattern):
        build()
