"""The upper problem's gradient: its direct gradient plus the fold of every path.

For a path ``[U, P_1, P_2, ..., P_k, U]`` (see ``ziggurat.engine._graph``: ``U``'s loss reads
``P_1``, each ``P_i``'s loss reads ``P_{i+1}``, and ``P_k``'s loss reads ``U``) the cotangent
``dL_U/dw_{P_1}`` is folded through each hop's best-response product, the method of each hop
chosen by the problem whose best response it is (as in Betty). Unrolled problems
(``IterativeProblem``) need no fold on the first hop: the direct gradient already
differentiates through their recorded trajectory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import _tree
from .._second_order import DoubleBackwardError, translated
from .._types import Params
from ..hypergradient import Hop, fold
from ._double_backward import hop_error, unrolled_error
from ._functional import pure_mean_loss
from ._hops import HopKey
from ._sharded_loss import backward_keeping_grads, differentiable_in_shards

if TYPE_CHECKING:
    from ._problem import Problem


def _first_lowers(problem: Problem) -> list[Problem]:
    """The first lower level of every path whose first hop is taken separately (not one whose
    method follows the recorded trajectory through the direct backward pass)."""
    seen: dict[str, Problem] = {}
    for path in problem.paths:
        if not path[1].hop_method().follows_trajectory:
            seen.setdefault(path[1].name, path[1])
    return list(seen.values())


def _direct(
    problem: Problem, loss: Tensor, firsts: list[Problem]
) -> tuple[Params, dict[str, Params]]:
    """One backward pass: gradients on the problem's own parameters and on each first lower's.

    Where it runs through the unrolled steps of ``IterativeProblem`` levels (a second-order
    product), an operation of theirs without a double backward is a ``ValueError`` that names
    them.
    """
    groups = [problem.named_trainable_parameters()] + [
        p.named_trainable_parameters() for p in firsts
    ]
    inputs = [t for g in groups for t in g.values()]
    try:
        with translated("the backward pass through unrolled steps"):
            raw = _pass(problem, loss, firsts, inputs)
    except DoubleBackwardError as err:
        unrolled = {p[1].name for p in problem.paths if p[1].hop_method().follows_trajectory}
        raise unrolled_error(sorted(unrolled), problem.name, err) from err
    filled = iter(torch.zeros_like(t) if g is None else g for g, t in zip(raw, inputs, strict=True))
    trees = [{k: next(filled) for k in g} for g in groups]
    return trees[0], {p.name: t for p, t in zip(firsts, trees[1:], strict=True)}


def _pass(
    problem: Problem, loss: Tensor, firsts: list[Problem], inputs: list[Tensor]
) -> tuple[Tensor | None, ...]:
    if any(p.sharded for p in (problem, *firsts)):
        return _backward(problem, loss, inputs)
    if not inputs:
        return ()
    retain = problem.runtime.has_unrolled
    return torch.autograd.grad(loss, inputs, allow_unused=True, retain_graph=retain)


def _backward(problem: Problem, loss: Tensor, inputs: list[Tensor]) -> tuple[Tensor | None, ...]:
    """Gradients of ``loss`` on ``inputs`` by ``loss.backward()`` (FSDP2 delivers a sharded
    parameter's gradient only through ``.grad``), leaving every ``.grad`` as it was."""
    return backward_keeping_grads(loss, inputs, _program_parameters(problem))


def _program_parameters(problem: Problem) -> list[Tensor]:
    return [t for p in problem.runtime.problems for t in p.trainable_parameters()]


def hop_batches(lower: Problem) -> list[Any]:
    """The batches a hop's lower loss averages: the last accumulation window's, then
    ``Config.hypergradient_batches - 1`` fresh ones from ``lower.get_batch()``.

    The fresh draws advance ``lower``'s loader (its checkpointed position), so a resumed run
    draws the same batches; ``cur_batch`` and the window are left alone.
    """
    fresh = [lower.get_batch() for _ in range(lower.config.hypergradient_batches - 1)]
    return [*lower.hop_batches(), *fresh]


def _hops(problem: Problem, index: int, path: list[Problem]) -> tuple[list[Hop], list[HopKey]]:
    hops, keys = [], []
    for j in range(1, len(path) - 1):
        lower, upper = path[j], path[j + 1]
        method = lower.hop_method()
        key = (problem.name, index, j)
        context = lower.hop_context(method, key)
        # a bf16 forward would round away the perturbations of finite differences
        inner = pure_mean_loss(
            lower, upper, hop_batches(lower), full_precision=method.finite_differences
        )
        if lower.sharded:  # its pure loss writes w into the shards: connect its gradient
            inner = differentiable_in_shards(inner, lower, lambda: _program_parameters(problem))
        # data-parallel ranks: global-batch products
        method = problem.runtime.distributed.wrap_method(method)
        w, lam = lower.named_trainable_parameters(), upper.named_trainable_parameters()
        hops.append(Hop(method, inner, w, lam, context))
        keys.append(key)
    return hops, keys


def total_gradient(problem: Problem, loss: Tensor) -> Params:
    """``dL/dtheta`` for ``problem``: direct term plus every path's folded hypergradient."""
    firsts = _first_lowers(problem)
    # no backward pass into a lower level whose hop ignores it; its hop gets zeros
    direct, cotangents = _direct(
        problem, loss, [p for p in firsts if p.hop_method().reads_cotangent]
    )
    for p in firsts:
        if p.name not in cotangents:
            cotangents[p.name] = _tree.zeros_like(_tree.detach(p.named_trainable_parameters()))
    total = _tree.detach(direct)
    problem.last_hop_info = []
    hyper: Params | None = None
    for index, path in enumerate(problem.paths):
        if path[1].name not in cotangents:
            continue  # the direct gradient went through the first lower's trajectory
        hops, keys = _hops(problem, index, path)
        try:
            contribution, infos = fold(hops, cotangents[path[1].name])
        except DoubleBackwardError as err:
            j = 1 if err.hop is None else err.hop + 1
            lower, upper = path[j], path[j + 1]
            raise hop_error(lower.name, upper.name, hops[j - 1].method.name, err) from err
        total = _tree.add(total, contribution)
        hyper = contribution if hyper is None else _tree.add(hyper, contribution)
        for lower, key, hop, info in zip(path[1:-1], keys, hops, infos, strict=True):
            lower.remember_hop(key, hop.method, info)
        problem.last_hop_info.extend(infos)
    problem.set_hypergradient_norm(_tree.norm(hyper) if hyper is not None else math.nan)
    return total
