"""Operations without a double backward: a ``ValueError`` that names them, never autograd's.

Two kinds: ``torch.cdist`` (PyTorch raises in the second backward pass) and a custom
``torch.autograd.Function`` marked ``@once_differentiable`` (PyTorch cuts it from the double
backward's graph, which then silently reads zero). Second-order methods refuse both, in the
core and through the Engine, for implicit levels and for unrolled ones (plain and
checkpointed); the first-order methods run.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ziggurat import DoubleBackwardError, Engine, hvp_forward
from ziggurat import hypergradient as hg
from ziggurat.configs import Config, EngineConfig
from ziggurat.optim import sgd
from ziggurat.problems import ImplicitProblem, IterativeProblem

D = torch.float64
ANCHORS = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=D)


class Sine(torch.autograd.Function):
    """``sin`` with a backward that cannot be differentiated again."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * x.cos()


def features(h: Tensor, kind: str) -> Tensor:
    return Sine.apply(h) if kind == "once" else torch.cdist(h, ANCHORS)[:, :3]


OPERATION = {"once": r"@once_differentiable \(Sine\)", "cdist": r"_cdist_(backward|forward)"}


def core_inner(kind: str):
    def inner(w: dict[str, Tensor], lam: dict[str, Tensor]) -> Tensor:
        h = w["w"].view(1, 3)
        return (features(h, kind) * lam["l"]).pow(2).sum() + w["w"].pow(2).sum()

    return inner


def core_point() -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    g = torch.Generator().manual_seed(0)
    return (
        {"w": torch.randn(3, generator=g, dtype=D)},
        {"l": torch.full((3,), 0.3, dtype=D)},
        {"w": torch.randn(3, generator=g, dtype=D)},
    )


def test_a_once_differentiable_function_would_silently_read_zero() -> None:
    """Why the graph is checked: autograd's own double backward gives no error, only zero."""
    w = torch.randn(3, dtype=D, requires_grad=True)
    lam = torch.ones(3, dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad((Sine.apply(w) * lam).pow(2).sum(), [w], create_graph=True)
    assert torch.autograd.grad(g.sum(), [w, lam], allow_unused=True) == (None, None)


class Square(torch.autograd.Function):
    """``x**2`` with a once-differentiable backward, applied to ``w`` alone: its backward
    receives no input that requires grad, so PyTorch leaves no error node in the gradient's
    graph; only the loss's own graph shows it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_a_once_differentiable_function_without_an_error_node_is_refused() -> None:
    """Without the check the Hessian reads zero here, and cg returns zeros."""
    w, lam, v = core_point()

    def inner(w: dict[str, Tensor], lam: dict[str, Tensor]) -> Tensor:
        return Square.apply(w["w"]).sum() - (w["w"] * lam["l"]).sum()

    with pytest.raises(DoubleBackwardError, match=r"@once_differentiable \(Square\)"):
        hg.cg(5)(inner, w, lam, v)
    fd = hg.cg(5, curvature=hg.FiniteDifference(), mixed=hg.MixedFiniteDifference())
    got = fd(inner, w, lam, v).vjp["l"]  # H = 2 I, mixed = -I: v^T dw*/dlam = v / 2
    torch.testing.assert_close(got, v["w"] / 2, atol=1e-6, rtol=0)


SECOND_ORDER = {
    "cg": hg.cg(5),
    "exact": hg.exact(),
    "neumann": hg.neumann(3, 0.1),
    "unrolled": hg.unrolled(sgd(0.1), 3),
    "unrolled_ckpt": hg.unrolled(sgd(0.1), 4, checkpoint_segments=2),
}


@pytest.mark.parametrize("kind", ["once", "cdist"])
@pytest.mark.parametrize("method", list(SECOND_ORDER))
def test_core_methods_name_the_operation(kind: str, method: str) -> None:
    w, lam, v = core_point()
    with pytest.raises(DoubleBackwardError, match=OPERATION[kind]) as info:
        SECOND_ORDER[method](core_inner(kind), w, lam, v)
    assert "penalty()" in str(info.value) and "curvature=FiniteDifference()" in str(info.value)


@pytest.mark.parametrize("kind", ["once", "cdist"])
def test_gauss_newton_products_name_the_operation(kind: str) -> None:
    w, lam, v = core_point()
    gn = hg.gauss_newton(
        lambda w, lam: features(w["w"].view(1, 3), kind) * lam["l"], lambda o: o.pow(2).sum()
    )
    with pytest.raises(DoubleBackwardError, match=OPERATION[kind]):
        hg.cg(5, curvature=gn)(core_inner(kind), w, lam, v)


def test_forward_over_reverse_names_an_operation_without_a_forward_derivative() -> None:
    """(``torch.func`` cannot trace ``Sine`` at all: it has no ``setup_context``, which
    ``hvp_forward``'s docstring requires of an inner loss.)"""
    w, lam, v = core_point()
    with pytest.raises(DoubleBackwardError, match="_cdist_forward"):
        hvp_forward(core_inner("cdist"), w, lam, v)
    with pytest.raises(DoubleBackwardError, match="_cdist_forward"):
        hg.cg(5, curvature=hg.ForwardOverReverse())(core_inner("cdist"), w, lam, v)


@pytest.mark.parametrize("kind", ["once", "cdist"])
def test_first_order_methods_run_there(kind: str) -> None:
    """The methods the message names agree with each other: FD cg against a long penalty."""
    w, lam, v = core_point()
    fd = hg.cg(20, 1e-12, curvature=hg.FiniteDifference(), mixed=hg.MixedFiniteDifference())
    a = fd(core_inner(kind), w, lam, v).vjp["l"]
    b = hg.penalty(400, 0.2)(core_inner(kind), w, lam, v).vjp["l"]
    assert float(a.norm()) > 1e-3
    assert float((a - b).norm() / a.norm()) < 1e-5


def engine_program(kind: str, config: Config, iterative: bool) -> Engine:
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=D)

    class Upper(ImplicitProblem):
        def training_step(self, batch: Any) -> Tensor:
            return self.lower(x).pow(2).mean()

    class Lower(IterativeProblem if iterative else ImplicitProblem):  # type: ignore[misc]
        def training_step(self, batch: Any) -> Tensor:
            h = self(x) if iterative else self.module(x)
            scale = self.upper.module.weight.view(1, 3)
            return (features(h, kind) * scale).pow(2).mean() + 0.1 * h.pow(2).mean()

    torch.manual_seed(0)
    low, up = nn.Linear(3, 3).to(D), nn.Linear(1, 3).to(D)
    upper = Upper(
        name="upper",
        module=up,
        optimizer=torch.optim.SGD(up.parameters(), lr=0.1),
        train_data_loader=[0],
    )
    lower = Lower(
        name="lower",
        module=low,
        optimizer=torch.optim.SGD(low.parameters(), lr=0.1),
        train_data_loader=[0],
        config=config,
    )
    return Engine(
        problems=[upper, lower],
        config=EngineConfig(train_iters=4, logger_type="none"),
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    )


ENGINE_CASES = {
    "cg": (False, Config(type="cg", cg_iterations=3), r"problem 'lower' \(the lower level of"),
    "unrolled": (True, Config(unroll_steps=2), r"problem 'lower' is an IterativeProblem"),
    "checkpointed": (
        True,
        Config(unroll_steps=2, checkpoint_segments=1),
        r"problem 'lower' is an IterativeProblem",
    ),
}


@pytest.mark.parametrize("kind", ["once", "cdist"])
@pytest.mark.parametrize("case", list(ENGINE_CASES))
def test_engine_names_the_problem_the_operation_and_what_runs(kind: str, case: str) -> None:
    iterative, config, problem = ENGINE_CASES[case]
    engine = engine_program(kind, config, iterative)
    with pytest.raises(ValueError, match=problem) as info:
        engine.run()
    message = str(info.value)
    assert not isinstance(info.value, DoubleBackwardError)  # the surface's own message
    assert "'upper'" in message
    assert re.search(OPERATION[kind], message), message
    assert "curvature='finite_difference'" in message and "'penalty'" in message
    assert engine.global_step <= config.unroll_steps  # by the first upper step


@pytest.mark.parametrize("kind", ["once", "cdist"])
@pytest.mark.parametrize(
    "config",
    [
        Config(type="cg", cg_iterations=3, curvature="finite_difference"),
        Config(type="penalty", penalty_steps=5, penalty_step=0.1),
    ],
    ids=["cg_fd", "penalty"],
)
def test_engine_runs_the_first_order_methods_there(kind: str, config: Config) -> None:
    engine = engine_program(kind, config, iterative=False)
    before = engine.upper.module.weight.detach().clone()
    engine.run()
    assert engine.global_step == 4
    moved = float((engine.upper.module.weight.detach() - before).abs().max())
    assert moved > 1e-6
