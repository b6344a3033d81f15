"""Substituting module parameters agrees with ``torch.func.functional_call`` and restores."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from ziggurat.problems._reparametrize import (
    call_substituted,
    substituted,
    substituted_parameters,
)


class Tied(nn.Module):
    """Tied weights, a shared submodule, a batch-norm buffer set and a frozen parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.shared = nn.Linear(4, 4)
        self.again = nn.Sequential(self.shared)
        self.norm = nn.BatchNorm1d(4)
        self.scale = nn.Parameter(torch.tensor(2.0), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.again(self.norm(self.b(torch.tanh(self.a(x))))).sum()


def _new_values(module: nn.Module) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        k: torch.randn(p.shape, generator=gen, dtype=torch.float64)
        for k, p in module.named_parameters()
        if p.requires_grad
    }


def test_matches_functional_call_and_leaves_the_module_as_it_was() -> None:
    torch.manual_seed(0)
    m = Tied().double()
    x = torch.randn(8, 4, dtype=torch.float64)
    values = _new_values(m)
    before = {k: t.clone() for k, t in m.state_dict().items()}
    # on a copy: functional_call restores a submodule reachable by two paths in the wrong
    # order and leaves it holding the substituted tensors
    twin = copy.deepcopy(m)
    ref = torch.func.functional_call(
        twin, {**values, **{k: b.clone() for k, b in twin.named_buffers()}}, (x,)
    )
    out = call_substituted(lambda: m(x), [(m, values)])
    assert torch.equal(out, ref)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched
    assert m.b.weight is m.a.weight


def test_gradients_reach_the_substituted_tensors() -> None:
    m = Tied().double()
    x = torch.randn(8, 4, dtype=torch.float64)
    values = {k: v.requires_grad_(True) for k, v in _new_values(m).items()}
    grads = torch.autograd.grad(
        call_substituted(lambda: m(x), [(m, values)]), list(values.values())
    )
    ref_in = {k: v.detach().requires_grad_(True) for k, v in values.items()}
    twin = copy.deepcopy(m)
    bufs = {k: b.clone() for k, b in twin.named_buffers()}
    ref = torch.func.functional_call(twin, {**ref_in, **bufs}, (x,))
    ref_grads = torch.autograd.grad(ref, list(ref_in.values()))
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads, strict=True))


def test_restores_on_an_exception() -> None:
    m = nn.Linear(3, 2)
    live = m.weight
    with (
        pytest.raises(RuntimeError, match="boom"),
        substituted([(m, {"weight": torch.zeros(2, 3)})]),
    ):
        assert torch.equal(m.weight, torch.zeros(2, 3))
        raise RuntimeError("boom")
    assert m.weight is live


def test_a_replaced_submodule_is_substituted_too() -> None:
    m = nn.Sequential(nn.Linear(3, 2))
    x = torch.ones(1, 3)
    zeros = {"0.weight": torch.zeros(2, 3), "0.bias": torch.zeros(2)}
    assert torch.equal(call_substituted(lambda: m(x), [(m, zeros)]), torch.zeros(1, 2))
    m[0] = nn.Linear(3, 2)  # the cached slots now belong to a module no longer in the tree
    assert torch.equal(call_substituted(lambda: m(x), [(m, zeros)]), torch.zeros(1, 2))
    m.add_module("1", nn.Linear(2, 2))
    more = {**zeros, "1.weight": torch.zeros(2, 2), "1.bias": torch.ones(2)}
    assert torch.equal(call_substituted(lambda: m(x), [(m, more)]), torch.ones(1, 2))


def test_a_replaced_parameter_is_substituted_and_restored() -> None:
    m = nn.Linear(3, 2)
    call_substituted(lambda: m(torch.ones(1, 3)), [(m, {"bias": torch.zeros(2)})])
    m.bias = nn.Parameter(torch.full((2,), 5.0))
    new = m.bias
    out = call_substituted(lambda: m(torch.zeros(1, 3)), [(m, {"bias": torch.zeros(2)})])
    assert torch.equal(out, torch.zeros(1, 2))
    assert m.bias is new


def test_unknown_names_are_refused() -> None:
    m = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="no parameters named \\['wieght'\\]"):
        call_substituted(lambda: m(torch.ones(1, 3)), [(m, {"wieght": torch.zeros(2, 3)})])


def test_substituted_parameters_match_functional_call_with_live_buffers() -> None:
    """Parameters only: ``module(x)``, ``module.<name>`` and ``module.parameters()`` read the
    given tensors, and a training-mode forward updates the live running statistics, exactly
    as ``functional_call`` with the parameters alone does."""
    torch.manual_seed(0)
    m = Tied().double()
    x = torch.randn(8, 4, dtype=torch.float64)
    values = _new_values(m)
    twin = copy.deepcopy(m)
    ref = torch.func.functional_call(twin, values, (x,))
    live_a = m.a.weight
    with substituted_parameters([(m, values)]):
        out = m(x)
        assert m.a.weight is values["a.weight"] and m.b.weight is values["a.weight"]
        assert dict(m.named_parameters())["a.weight"] is values["a.weight"]
    assert torch.equal(out, ref)
    assert torch.equal(m.norm.running_mean, twin.norm.running_mean)
    assert float(m.norm.running_mean.abs().sum()) > 0  # they moved from zero
    assert m.a.weight is live_a and m.b.weight is live_a
