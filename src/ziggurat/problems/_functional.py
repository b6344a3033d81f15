"""Turning a problem's stateful ``training_step`` into a pure loss ``f(w, lam)``.

The pure loss evaluates the lower problem's ``training_step`` on a fixed batch with the lower
problem's parameters replaced by ``w`` and the upper problem's by ``lam``. Module parameters are
substituted in place for the call (``_reparametrize``: the slots ``torch.func.functional_call``
writes, found once per module), so ``self.module(x)`` and ``self.upper(x)`` inside
``training_step`` both see the substituted tensors, and buffers are copies, so the live modules
are left exactly as they were; problems that hold their parameters as a dict
(``IterativeProblem``) have that dict swapped for the call (``Problem.evaluate`` then puts it in
the module's slots, :func:`module_substitutions`), and FSDP2-sharded modules (whose
pre-forward hook would re-install the live parameters over substituted ones) have their
parameter values overwritten for the call and restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .._types import InnerLoss, Params
from ._reparametrize import call_substituted


class Substitutable(Protocol):
    """What a pure evaluation needs of a level: where its parameters live and its loss."""

    @property
    def module(self) -> nn.Module: ...

    @property
    def swaps_params(self) -> bool: ...

    def swap_params(self, new: Params) -> Params: ...

    def loss_of(self, batch: Any, full_precision: bool = False) -> Tensor: ...


class Unrolling(Protocol):
    """A level that may keep its parameters outside its module (an unrolled level)."""

    def module_substitution(self) -> tuple[nn.Module, Params] | None: ...


def module_substitutions(levels: Iterable[Unrolling]) -> list[tuple[nn.Module, Params]]:
    """What to put in modules' parameter slots while a loss is evaluated: each unrolled
    level's module with its current iterate, so that ``self.module(x)`` reads that iterate."""
    found = (level.module_substitution() for level in levels)
    return [pair for pair in found if pair is not None]


@contextmanager
def _swapped(problems: list[tuple[Substitutable, Params]]) -> Iterator[None]:
    saved = [(p, p.swap_params(t)) for p, t in problems]
    try:
        yield
    finally:
        for p, old in reversed(saved):
            p.swap_params(old)


def substituted_call(
    fn: Callable[[], Tensor], values: list[tuple[Substitutable, Params]]
) -> Tensor:
    """Run ``fn`` with each problem's parameters replaced by the given tensors."""
    modular = [(p.module, t) for p, t in values if not p.swaps_params]
    swapped = [(p, t) for p, t in values if p.swaps_params]
    with _swapped(swapped):
        return call_substituted(fn, modular)


def pure_loss(
    lower: Substitutable, upper: Substitutable, batch: Any, full_precision: bool = False
) -> InnerLoss:
    """``f(w, lam)``: ``lower``'s loss on ``batch`` at parameters ``w`` and upper ``lam``.

    ``full_precision`` evaluates ``training_step`` without the problem's reduced-precision
    autocast (for methods that perturb ``w``; see ``hypergradient.uses_finite_differences``).
    """

    def inner(w: Params, lam: Params) -> Tensor:
        return substituted_call(
            lambda: lower.loss_of(batch, full_precision), [(lower, w), (upper, lam)]
        )

    return inner


def pure_mean_loss(
    lower: Substitutable, upper: Substitutable, batches: list[Any], full_precision: bool = False
) -> InnerLoss:
    """``f(w, lam)``: the mean of ``lower``'s loss over ``batches`` (an accumulation window)."""
    if len(batches) == 1:
        return pure_loss(lower, upper, batches[0], full_precision)
    parts = [pure_loss(lower, upper, b, full_precision) for b in batches]

    def inner(w: Params, lam: Params) -> Tensor:
        return torch.stack([f(w, lam) for f in parts]).mean()

    return inner
