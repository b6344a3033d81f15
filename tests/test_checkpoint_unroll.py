"""Checkpointed unrolling equals plain unrolling, and keeps fewer tensors alive."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import Tensor

from ziggurat import optim
from ziggurat.hypergradient import unrolled
from ziggurat.hypergradient._checkpoint import segment_bounds, segment_count
from ziggurat.optim import FunctionalOptimizer

DT = torch.float64
Tree = dict[str, Tensor]


def problem(n: int = 24, d: int = 3, h: int = 5) -> tuple[object, Tree, Tree, Tree]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.sin(x.sum(1))

    def inner(w: Tree, lam: Tree) -> Tensor:
        pred = torch.tanh(x @ w["W1"] + w["b1"]) @ w["w2"]
        penalty = torch.exp(lam["log_l2"]) @ torch.stack([(w[k] ** 2).sum() for k in w])
        return ((pred - y) ** 2).mean() + 0.5 * penalty

    w = {
        "W1": 0.5 * torch.randn(d, h, generator=g, dtype=DT),
        "b1": 0.1 * torch.randn(h, generator=g, dtype=DT),
        "w2": 0.5 * torch.randn(h, generator=g, dtype=DT),
    }
    lam = {"log_l2": torch.tensor([-1.0, -2.0, -0.5], dtype=DT)}
    v = {k: torch.randn(t.shape, generator=g, dtype=DT) for k, t in w.items()}
    return inner, w, lam, v


OPTIMIZERS: dict[str, FunctionalOptimizer] = {
    "sgd": optim.sgd(0.1),
    "momentum": optim.sgd(0.1, momentum=0.9, weight_decay=0.01),
    "nesterov": optim.sgd(0.05, momentum=0.9, nesterov=True),
    "adam": optim.adam(0.05, betas=(0.9, 0.99)),
    "adamw_amsgrad": optim.adamw(0.05, amsgrad=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize(
    ("steps", "segments"), [(1, 1), (5, 1), (5, 2), (7, "sqrt"), (12, 3), (12, 12), (16, 40)]
)
def test_checkpointed_equals_plain(name: str, steps: int, segments: int | str) -> None:
    inner, w, lam, v = problem()
    opt = OPTIMIZERS[name]
    plain = unrolled(opt, steps)(inner, w, lam, v).vjp  # type: ignore[arg-type]
    ckpt = unrolled(opt, steps, checkpoint_segments=segments)(inner, w, lam, v).vjp  # type: ignore[arg-type]
    assert plain["log_l2"].abs().max() > 1e-6  # the comparison is not vacuous
    torch.testing.assert_close(ckpt, plain, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_checkpointed_respects_truncation(name: str) -> None:
    inner, w, lam, v = problem()
    opt = OPTIMIZERS[name]
    plain = unrolled(opt, 10, truncate=4)(inner, w, lam, v).vjp  # type: ignore[arg-type]
    ckpt = unrolled(opt, 10, truncate=4, checkpoint_segments=2)(inner, w, lam, v).vjp  # type: ignore[arg-type]
    full = unrolled(opt, 10)(inner, w, lam, v).vjp  # type: ignore[arg-type]
    torch.testing.assert_close(ckpt, plain, rtol=0, atol=1e-10)
    assert (full["log_l2"] - plain["log_l2"]).abs().max() > 1e-8  # truncation changes it


def test_segment_bounds_cover_the_steps() -> None:
    assert segment_bounds(10, 3) == [0, 4, 7, 10]
    assert segment_bounds(100, 10) == list(range(0, 101, 10))
    assert segment_count(100, "sqrt") == 10
    assert segment_count(3, 8) == 3
    assert segment_count(1, "sqrt") == 1


@pytest.mark.parametrize("bad", [0, -1, "log", 2.5, True])
def test_bad_segments_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="checkpoint_segments"):
        unrolled(optim.sgd(0.1), 4, checkpoint_segments=bad)  # type: ignore[arg-type]


class _Saved:
    """A tensor saved for backward; its bytes count as live until autograd frees it."""

    def __init__(self, t: Tensor, live: dict[int, int]) -> None:
        self.t = t
        key = id(self)
        live[key] = t.untyped_storage().nbytes()
        weakref.finalize(self, live.pop, key, None)


def _peak_saved_bytes(method: object, inner: object, w: Tree, lam: Tree, v: Tree) -> int:
    """Peak bytes of tensors that autograd holds for backward (storage bytes, per save)."""
    live: dict[int, int] = {}
    peak = 0

    def pack(t: Tensor) -> _Saved:
        nonlocal peak
        saved = _Saved(t, live)
        peak = max(peak, sum(live.values()))
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.t):
        method(inner, w, lam, v)  # type: ignore[operator]
    return peak


def test_checkpointing_bounds_saved_memory() -> None:
    # wide inner problem: the saved activations of one step dominate the parameters
    inner, w, lam, v = problem(n=512, d=8, h=64)
    opt = optim.sgd(0.01, momentum=0.9)
    one = _peak_saved_bytes(unrolled(opt, 1), inner, w, lam, v)
    plain = _peak_saved_bytes(unrolled(opt, 64), inner, w, lam, v)
    ckpt = _peak_saved_bytes(unrolled(opt, 64, checkpoint_segments="sqrt"), inner, w, lam, v)
    assert plain > 30 * one  # plain unrolling keeps every step's graph
    assert ckpt < 12 * one  # one segment of 8 steps (plus boundaries, held outside the graph)
    assert ckpt < plain / 5
