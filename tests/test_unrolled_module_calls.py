"""An unrolled level's loss may read its weights through ``self.module`` (Betty's
``HigherIterativeProblem`` programs do): ``self.module(x)``, ``self.module.<name>``,
``self.module.parameters()``, ``self.parameters()`` and ``self(x)`` give the hypergradient of
the ``self.params`` form, in two- and three-level programs, and so do upper levels that read
the unrolled level through its module."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from _modules import Vec
from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import exact
from ziggurat.problems import HigherIterativeProblem, ImplicitProblem, IterativeProblem

D = torch.float64
DIM = 4


class Linear(nn.Module):
    """``x -> (x . w + b, w)``: the logits and the weight vector (the shape of Betty's
    logistic-regression example)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(DIM, dtype=D))
        self.b = nn.Parameter(torch.zeros((), dtype=D))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x @ self.w + self.b, self.w


def _from(w: Tensor, b: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    return x @ w + b, w


Read = Callable[[IterativeProblem, Tensor], tuple[Tensor, Tensor]]
OWN: dict[str, Read] = {
    "params": lambda p, x: _from(p.params["w"], p.params["b"], x),
    "call": lambda p, x: p(x),
    "module_call": lambda p, x: p.module(x),
    "module_attr": lambda p, x: _from(p.module.w, p.module.b, x),
    "module_parameters": lambda p, x: _from(*p.module.parameters(), x),
    "parameters": lambda p, x: _from(*p.parameters(), x),
}
"""Ways an unrolled level's ``training_step`` reads its own weights."""

FROM_ABOVE: dict[str, Callable[[IterativeProblem, Tensor], Tensor]] = {
    "call": lambda low, x: low(x)[0],
    "module_call": lambda low, x: low.module(x)[0],
    "module_attr": lambda low, x: x @ low.module.w + low.module.b,
}
"""Ways a level above reads the unrolled level."""


def data(seed: int, n: int = 24) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g, dtype=D)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=D) > 0).to(D)
    return x, y


TRAIN, VALID = data(0), data(1)
T, LR_LOW, LR_UP = 5, 0.5, 0.3
LAM0 = torch.tensor([1.0, 0.5, 2.0, 0.1], dtype=D)


def bilevel(cls: type, own: str, above: str) -> tuple[list[Tensor], list[Tensor]]:
    """Upper ``lam`` (per-weight L2 strength) over an unrolled logistic regression that
    restarts from zero every inner loop; two upper steps. Returns the upper gradients and the
    ``lam`` each was taken at."""
    grads: list[Tensor] = []
    lams: list[Tensor] = []

    class Upper(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.binary_cross_entropy_with_logits(FROM_ABOVE[above](self.lower, x), y)

        def grad_callback(self):
            grads.append(self.module.value.grad.clone())
            lams.append(self.module.value.detach().clone())

    class Lower(cls):  # type: ignore[misc, valid-type]
        def training_step(self, batch):
            x, y = batch
            logits, w = OWN[own](self, x)
            return F.binary_cross_entropy_with_logits(logits, y) + 0.5 * (self.upper() * w**2).sum()

        def on_inner_loop_start(self):
            for p in self.module.parameters():
                p.data.zero_()

    up, low = Vec(LAM0), Linear()
    upper = Upper(
        name="upper",
        module=up,
        optimizer=torch.optim.SGD(up.parameters(), lr=LR_UP),
        train_data_loader=[VALID],
    )
    lower = Lower(
        name="lower",
        module=low,
        optimizer=torch.optim.SGD(low.parameters(), lr=LR_LOW),
        train_data_loader=[TRAIN],
        config=Config(unroll_steps=T),
    )
    Engine(
        [upper, lower],
        EngineConfig(train_iters=2 * T, valid_step=0),
        {"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    ).run()
    return grads, lams


def reference(lam: Tensor) -> Tensor:
    """The upper gradient at ``lam`` by plain unrolling in this test (no library code)."""
    lam = lam.clone().requires_grad_(True)
    w, b = torch.zeros(DIM, dtype=D), torch.zeros((), dtype=D)
    w.requires_grad_(True)
    b.requires_grad_(True)
    (x, y), (xv, yv) = TRAIN, VALID
    for _ in range(T):
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * (lam * w**2).sum()
        gw, gb = torch.autograd.grad(loss, [w, b], create_graph=True)
        w, b = w - LR_LOW * gw, b - LR_LOW * gb
    outer = F.binary_cross_entropy_with_logits(xv @ w + b, yv)
    return torch.autograd.grad(outer, lam)[0]


@pytest.mark.parametrize("cls", [IterativeProblem, HigherIterativeProblem])
def test_own_reads_give_the_params_form_hypergradient(cls: type) -> None:
    """Every way of reading the unrolled weights gives the same upper gradients as
    ``self.params`` (float64, 1e-10), and those equal plain unrolling done here."""
    expected, lams = bilevel(cls, "params", "call")
    assert len(expected) == 2 and min(float(g.norm()) for g in expected) > 1e-3
    assert not torch.equal(lams[0], lams[1])  # the upper level moved between its steps
    for g, lam in zip(expected, lams, strict=True):
        torch.testing.assert_close(g, reference(lam), atol=1e-10, rtol=0)
    for own in OWN:
        got, _ = bilevel(cls, own, "call")
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, atol=1e-10, rtol=0, msg=own)


@pytest.mark.parametrize("above", ["module_call", "module_attr"])
def test_an_upper_level_reading_the_unrolled_module_gets_the_same_hypergradient(
    above: str,
) -> None:
    expected, _ = bilevel(IterativeProblem, "params", "call")
    got, _ = bilevel(IterativeProblem, "module_call", above)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=0)


def trilevel(own: str, above: str) -> tuple[list[Tensor], list[Tensor]]:
    """``top`` (a scalar weight on ``mid``'s L2 term) over ``mid`` (per-weight L2 strength,
    exact hypergradient for ``top``) over ``bottom`` (unrolled logistic regression).
    Returns the gradients of ``mid`` and of ``top``."""
    mids: list[Tensor] = []
    tops: list[Tensor] = []

    class Top(ImplicitProblem):
        def training_step(self, batch):
            return 0.5 * (self.mid() - 0.3).pow(2).sum()

        def grad_callback(self):
            tops.append(self.module.value.grad.clone())

    class Mid(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            logits = FROM_ABOVE[above](self.bottom, x)
            fit = F.binary_cross_entropy_with_logits(logits, y)
            return fit + 0.5 * self.top().sum() * (self.module() - 1.0).pow(2).sum()

        def grad_callback(self):
            mids.append(self.module.value.grad.clone())

    class Bottom(HigherIterativeProblem):
        def training_step(self, batch):
            x, y = batch
            logits, w = OWN[own](self, x)
            return F.binary_cross_entropy_with_logits(logits, y) + 0.5 * (self.mid() * w**2).sum()

    top_mod, mid_mod, low = Vec(torch.tensor([0.7], dtype=D)), Vec(LAM0), Linear()
    top = Top(
        name="top",
        module=top_mod,
        optimizer=torch.optim.SGD(top_mod.parameters(), lr=0.2),
        train_data_loader=[torch.zeros(1)],
    )
    mid = Mid(
        name="mid",
        module=mid_mod,
        optimizer=torch.optim.SGD(mid_mod.parameters(), lr=0.2),
        train_data_loader=[VALID],
        config=Config(hypergradient=exact(), unroll_steps=2),
    )
    bottom = Bottom(
        name="bottom",
        module=low,
        optimizer=torch.optim.SGD(low.parameters(), lr=LR_LOW, momentum=0.5),
        train_data_loader=[TRAIN],
        config=Config(unroll_steps=3),
    )
    Engine(
        [top, mid, bottom],
        EngineConfig(train_iters=12, valid_step=0),
        {"u2l": {mid: [bottom], top: [mid]}, "l2u": {bottom: [mid], mid: [top]}},
    ).run()
    return mids, tops


def test_three_levels_with_module_reads_give_the_params_form_hypergradients() -> None:
    mids, tops = trilevel("params", "call")
    assert (len(mids), len(tops)) == (4, 2)
    assert min(float(g.norm()) for g in [*mids, *tops]) > 1e-4
    for own, above in [
        ("module_call", "module_call"),
        ("module_attr", "module_attr"),
        ("parameters", "call"),
        ("call", "module_call"),
    ]:
        got_mids, got_tops = trilevel(own, above)
        for g, e in zip([*got_mids, *got_tops], [*mids, *tops], strict=True):
            torch.testing.assert_close(g, e, atol=1e-10, rtol=0, msg=f"{own}/{above}")


def test_module_reads_stop_at_the_end_of_the_evaluation() -> None:
    """Between evaluations the module holds its own parameters again, equal to the iterate:
    validation code reads them, and they are not part of the unrolled graph."""
    seen: list[tuple[bool, bool]] = []

    class Low(IterativeProblem):
        def training_step(self, batch):
            seen.append((self.module.value is self.params["value"], self.module.value.is_leaf))
            return (self.module() - 1.0).pow(2).sum()

    module = Vec(torch.zeros(2, dtype=D))
    low = Low(
        name="low",
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=0.25),
        train_data_loader=[torch.zeros(1)],
        config=Config(unroll_steps=2),
    )
    engine = Engine([low], EngineConfig(train_iters=2, valid_step=0))
    engine.run()
    assert seen == [(True, True), (True, False)]  # the iterate; a leaf only at the start
    assert isinstance(module.value, nn.Parameter) and module.value.grad is None
    torch.testing.assert_close(module.value.detach(), torch.full((2,), 0.75, dtype=D))
    torch.testing.assert_close(low.params["value"].detach(), module.value.detach())


# ------------------------------------------------------- a program in Betty's own shape
BETTY_DIM, BETTY_N = 20, 1000


class ChildNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(BETTY_DIM))

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        return inputs @ self.w, self.w


class ParentNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(BETTY_DIM))

    def forward(self) -> Tensor:
        return self.w


def _betty_data() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(BETTY_DIM, generator=g)
    x = torch.randn(BETTY_N, BETTY_DIM, generator=g)
    y = ((x @ w_true + 0.1 * torch.randn(BETTY_N, generator=g)) > 0).float()
    half = BETTY_N // 2
    return (x[:half], y[:half]), (x[half:], y[half:])


BETTY_TRAIN, BETTY_VALID = _betty_data()


class Parent(ImplicitProblem):
    def training_step(self, batch):
        inputs, targets = batch
        return F.binary_cross_entropy_with_logits(self.inner(inputs)[0], targets)

    def configure_train_data_loader(self):
        return [BETTY_VALID]

    def configure_module(self):
        return ParentNet()

    def configure_optimizer(self):
        return torch.optim.SGD(self.module.parameters(), lr=1, momentum=0.9)

    def param_callback(self):
        for p in self.trainable_parameters():
            p.data.clamp_(min=1e-8)


class Child(HigherIterativeProblem):
    def training_step(self, batch):
        inputs, targets = batch
        outs, params = self.module(inputs)
        reg = params.unsqueeze(0) @ torch.diag(self.outer()) @ params.unsqueeze(1)
        return F.binary_cross_entropy_with_logits(outs, targets) + 0.5 * reg.sum()

    def configure_train_data_loader(self):
        return [BETTY_TRAIN]

    def configure_module(self):
        return ChildNet()

    def configure_optimizer(self):
        return torch.optim.SGD(self.module.parameters(), lr=0.1)

    def on_inner_loop_start(self):
        self.module.w.data.zero_()


def betty_shaped_program(train_iters: int) -> Engine:
    """Betty's logistic-regression HPO as a Betty user writes it: a ``HigherIterativeProblem``
    whose loss calls ``self.module(x)``, an upper that reads it by name, ``logger_type="none"``
    and ``log_step=1`` (the losses are read from the console lines)."""
    parent = Parent(name="outer", config=Config(log_step=1, first_order=False, retain_graph=True))
    child = Child(name="inner", config=Config(unroll_steps=100))
    return Engine(
        config=EngineConfig(train_iters=train_iters, logger_type="none"),
        problems=[parent, child],
        dependencies={"l2u": {child: [parent]}, "u2l": {parent: [child]}},
    )


def test_a_betty_shaped_unrolled_program_learns_and_prints_its_losses(caplog) -> None:
    caplog.set_level(logging.INFO, logger="ziggurat")
    betty_shaped_program(train_iters=2000).run()
    line = re.compile(r"^\[outer\] \[global step (\d+)\] loss: ([0-9.e+-]+)$")
    found = [line.match(r.getMessage()) for r in caplog.records if r.name == "ziggurat"]
    steps = [(int(m[1]), float(m[2])) for m in found if m]
    assert [s for s, _ in steps] == list(range(100, 2100, 100))  # one line per upper step
    first, last = steps[0][1], steps[-1][1]
    assert first > 0.55 and last < first - 0.2, steps  # measured: 0.583 -> 0.348
