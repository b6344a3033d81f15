"""The functional optimizers against ``torch.optim``, in float64, step by step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from ziggurat import optim
from ziggurat.optim import FunctionalOptimizer

DT = torch.float64
SHAPES = {"weight": (3, 4), "bias": (5,), "kernel": (2, 2, 2)}
STEPS = 6
TOL = {"rtol": 1e-12, "atol": 1e-12}


def make_params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=DT) for k, s in SHAPES.items()}


def make_grads(steps: int, seed: int = 1, zero_mask: bool = False) -> list[dict[str, torch.Tensor]]:
    """A fixed gradient sequence whose scale changes from step to step (exercises AMSGrad)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(steps):
        scale = 10.0 if t % 3 == 0 else 0.1
        step = {k: scale * torch.randn(s, generator=g, dtype=DT) for k, s in SHAPES.items()}
        if zero_mask:
            step["weight"][0] = 0.0  # a row whose gradient is exactly zero from step 1
            step["bias"][:2] = 0.0
        out.append(step)
    return out


def run_torch(
    factory: Callable[..., torch.optim.Optimizer],
    params: dict[str, torch.Tensor],
    grads: list[dict[str, torch.Tensor]],
) -> list[dict[str, torch.Tensor]]:
    leaves = {k: p.clone().requires_grad_(True) for k, p in params.items()}
    opt = factory(list(leaves.values()))
    history = []
    for step in grads:
        for k, p in leaves.items():
            p.grad = step[k].clone()
        opt.step()
        history.append({k: p.detach().clone() for k, p in leaves.items()})
    return history


def run_functional(
    opt: FunctionalOptimizer,
    params: dict[str, torch.Tensor],
    grads: list[dict[str, torch.Tensor]],
) -> list[dict[str, torch.Tensor]]:
    state = opt.init(params)
    history = []
    for step in grads:
        params, state = opt.step(params, step, state)
        history.append(params)
    return history


def assert_same_trajectory(
    ours: list[dict[str, torch.Tensor]], ref: list[dict[str, torch.Tensor]]
) -> None:
    assert len(ours) == len(ref) >= 5
    for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], **TOL, msg=lambda m, t=t, k=k: f"{t} {k}: {m}")


SGD_CASES: list[dict[str, Any]] = [
    {"lr": 0.1},
    {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.1, "momentum": 0.9, "dampening": 0.3},
    {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.2},
    {"lr": 0.05, "weight_decay": 0.2, "maximize": True},
    {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.1, "nesterov": True, "maximize": True},
]

ADAM_CASES: list[dict[str, Any]] = [
    {"lr": 1e-2},
    {"lr": 1e-2, "betas": (0.8, 0.95), "eps": 1e-6},
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 1e-2, "amsgrad": True},
    {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True, "maximize": True},
]

ADAMW_CASES: list[dict[str, Any]] = [
    {"lr": 1e-2},
    {"lr": 1e-2, "weight_decay": 0.3},
    {"lr": 1e-2, "weight_decay": 0.3, "amsgrad": True},
    {"lr": 1e-2, "weight_decay": 0.3, "maximize": True, "betas": (0.5, 0.9)},
]


def _torch_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    return {**kw, "foreach": False}


@pytest.mark.parametrize("kw", SGD_CASES, ids=str)
@pytest.mark.parametrize("zero_mask", [False, True])
def test_sgd_matches_torch(kw: dict[str, Any], zero_mask: bool) -> None:
    params, grads = make_params(), make_grads(STEPS, zero_mask=zero_mask)
    ref = run_torch(lambda p: torch.optim.SGD(p, **_torch_kwargs(kw)), params, grads)
    assert_same_trajectory(run_functional(optim.sgd(**kw), params, grads), ref)


@pytest.mark.parametrize("kw", ADAM_CASES, ids=str)
@pytest.mark.parametrize("zero_mask", [False, True])
def test_adam_matches_torch(kw: dict[str, Any], zero_mask: bool) -> None:
    params, grads = make_params(), make_grads(STEPS, zero_mask=zero_mask)
    ref = run_torch(lambda p: torch.optim.Adam(p, **_torch_kwargs(kw)), params, grads)
    assert_same_trajectory(run_functional(optim.adam(**kw), params, grads), ref)


@pytest.mark.parametrize("kw", ADAMW_CASES, ids=str)
@pytest.mark.parametrize("zero_mask", [False, True])
def test_adamw_matches_torch(kw: dict[str, Any], zero_mask: bool) -> None:
    params, grads = make_params(), make_grads(STEPS, zero_mask=zero_mask)
    ref = run_torch(lambda p: torch.optim.AdamW(p, **_torch_kwargs(kw)), params, grads)
    assert_same_trajectory(run_functional(optim.adamw(**kw), params, grads), ref)


@pytest.mark.parametrize(
    "opt",
    [optim.adam(1e-2), optim.adam(1e-2, amsgrad=True), optim.adamw(1e-2, weight_decay=0.1)],
    ids=["adam", "amsgrad", "adamw"],
)
def test_adam_step_has_finite_derivatives_where_gradients_are_zero(
    opt: FunctionalOptimizer,
) -> None:
    # d sqrt(v)/dv is infinite at v = 0; times dv/dg = 0 that would be NaN without care.
    params = {k: p.requires_grad_(True) for k, p in make_params().items()}
    scale = torch.ones((), dtype=DT, requires_grad=True)
    grads = make_grads(3, zero_mask=True)
    state = opt.init(params)
    current = params
    for step in grads:
        step = {k: scale * g for k, g in step.items()}
        current, state = opt.step(current, step, state)
    objective = sum((p**2).sum() for p in current.values())
    assert isinstance(objective, torch.Tensor)
    derivs = torch.autograd.grad(objective, [scale, *params.values()])
    for d in derivs:
        assert torch.isfinite(d).all()
    assert float(derivs[1][0].abs().max()) > 0  # the zero-gradient row still moves via decay


# ---------------------------------------------------------------------------- from_torch


def _dummy_params() -> list[torch.Tensor]:
    return [torch.zeros(2, dtype=DT, requires_grad=True), torch.zeros(3, dtype=DT)]


@pytest.mark.parametrize(
    ("factory", "kw"),
    [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True}),
        (torch.optim.Adam, {"lr": 1e-2, "betas": (0.7, 0.9), "eps": 1e-5, "weight_decay": 0.1}),
        (torch.optim.Adam, {"lr": 1e-2, "amsgrad": True, "maximize": True}),
        (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 0.2, "decoupled_weight_decay": True}),
        (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.2, "amsgrad": True}),
    ],
    ids=["sgd", "sgd-nesterov", "adam", "adam-amsgrad", "adam-decoupled", "adamw"],
)
def test_from_torch_gives_the_same_updates(
    factory: Callable[..., torch.optim.Optimizer], kw: dict[str, Any]
) -> None:
    params, grads = make_params(), make_grads(STEPS)
    functional = optim.from_torch(factory(_dummy_params(), **kw))
    ref = run_torch(lambda p: factory(p, **kw, foreach=False), params, grads)
    assert_same_trajectory(run_functional(functional, params, grads), ref)


def test_from_torch_rejects_unsupported_optimizers() -> None:
    with pytest.raises(TypeError, match="RMSprop"):
        optim.from_torch(torch.optim.RMSprop(_dummy_params(), lr=0.1))


@pytest.mark.parametrize(
    ("factory", "key", "a", "b"),
    [
        (torch.optim.SGD, "lr", 0.1, 0.2),
        (torch.optim.SGD, "momentum", 0.0, 0.9),
        (torch.optim.Adam, "betas", (0.9, 0.999), (0.8, 0.999)),
        (torch.optim.AdamW, "weight_decay", 0.01, 0.0),
        (torch.optim.Adam, "maximize", False, True),
    ],
)
def test_from_torch_rejects_disagreeing_param_groups(
    factory: Callable[..., torch.optim.Optimizer], key: str, a: object, b: object
) -> None:
    p1, p2 = _dummy_params()
    kwargs = {"lr": 0.1}
    groups = [{"params": [p1], key: a}, {"params": [p2], key: b}]
    with pytest.raises(ValueError, match=key):
        optim.from_torch(factory(groups, **kwargs))


def test_from_torch_accepts_agreeing_param_groups() -> None:
    p1, p2 = _dummy_params()
    torch_opt = torch.optim.SGD([{"params": [p1]}, {"params": [p2]}], lr=0.3, momentum=0.5)
    assert optim.from_torch(torch_opt) == optim.sgd(0.3, momentum=0.5)


# ------------------------------------------------------------ differentiable learning rate


def _toy_loss(w: dict[str, torch.Tensor]) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, generator=g, dtype=DT)
    y = torch.randn(8, generator=g, dtype=DT)
    pred = torch.tanh(x @ w["a"]) @ w["b"]
    return ((pred - y) ** 2).mean()


def _loss_after_sgd(lr: torch.Tensor, steps: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    w = {
        "a": torch.randn(3, 4, generator=g, dtype=DT).requires_grad_(True),
        "b": torch.randn(4, generator=g, dtype=DT).requires_grad_(True),
    }
    opt = optim.sgd(lr, momentum=0.5)
    state = opt.init(w)
    for _ in range(steps):
        grads = torch.autograd.grad(_toy_loss(w), list(w.values()), create_graph=True)
        w, state = opt.step(w, dict(zip(w, grads, strict=True)), state)
    return _toy_loss(w)


def test_learning_rate_tensor_derivative_matches_finite_differences() -> None:
    lr = torch.tensor(0.3, dtype=DT, requires_grad=True)
    (dlr,) = torch.autograd.grad(_loss_after_sgd(lr), [lr])
    h = 1e-5
    lr_p, lr_m = torch.tensor(0.3 + h, dtype=DT), torch.tensor(0.3 - h, dtype=DT)
    fd = (_loss_after_sgd(lr_p).item() - _loss_after_sgd(lr_m).item()) / (2 * h)
    assert abs(fd) > 1e-3
    assert float(dlr) == pytest.approx(fd, rel=1e-7)


# ------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: optim.sgd(-0.1), r"sgd lr .*-0\.1"),
        (lambda: optim.sgd(0.1, momentum=-0.5), r"sgd momentum .*-0\.5"),
        (lambda: optim.sgd(0.1, weight_decay=-1.0), r"sgd weight_decay .*-1\.0"),
        (lambda: optim.sgd(0.1, nesterov=True), r"nesterov.*momentum.*0"),
        (lambda: optim.sgd(0.1, momentum=0.9, dampening=0.1, nesterov=True), r"dampening.*0\.1"),
        (lambda: optim.adam(-1e-3), r"adam lr .*-0\.001"),
        (lambda: optim.adam(betas=(1.0, 0.999)), r"adam betas\[0\] .*1\.0"),
        (lambda: optim.adam(betas=(0.9, -0.1)), r"adam betas\[1\] .*-0\.1"),
        (lambda: optim.adam(eps=-1e-8), r"adam eps .*-1e-08"),
        (lambda: optim.adamw(-2.0), r"adamw lr .*-2\.0"),
        (lambda: optim.adamw(betas=(0.9, 1.5)), r"adamw betas\[1\] .*1\.5"),
        (lambda: optim.adamw(weight_decay=-0.1), r"adamw weight_decay .*-0\.1"),
    ],
)
def test_bad_options_name_option_and_value(build: Callable[[], object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build()
