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

from .. import _health, _tree
from .._second_order import DoubleBackwardError, translated
from .._types import Params
from ..hypergradient import Hop, fold
from . import _connection
from ._double_backward import hop_error, unrolled_error
from ._functional import pure_mean_loss
from ._hops import HopKey
from ._sharded_loss import backward_keeping_grads, differentiable_in_shards

if TYPE_CHECKING:
    from ._problem import Problem


def _first_lowers(problem: Problem) -> list[Problem]:
    """The first lower level of every path whose first hop is taken separately (not one whose
    method follows the recorded trajectory through the direct backward pass) and reads its
    cotangent."""
    seen: dict[str, Problem] = {}
    for path in _taken(problem):
        method = path[1].hop_method()
        if not method.follows_trajectory and method.reads_cotangent:
            seen.setdefault(path[1].name, path[1])
    return list(seen.values())


def _taken(problem: Problem) -> list[list[Problem]]:
    """The paths that bring something: not those with a hop whose method is identically zero
    (``first_order``)."""
    return [
        path
        for path in problem.paths
        if not any(p.hop_method().identically_zero for p in path[1:-1])
    ]


def _direct(
    problem: Problem, loss: Tensor, firsts: list[Problem]
) -> tuple[Params, dict[str, Params]]:
    """One backward pass: the gradients that reach the problem's own parameters (absent
    entries did not), and the cotangents on each first lower's (zeros where unreached).

    Where it runs through the unrolled steps of ``IterativeProblem`` levels (a second-order
    product), an operation of theirs without a double backward is a ``ValueError`` that names
    them.
    """
    own = problem.named_trainable_parameters()
    groups = [p.named_trainable_parameters() for p in firsts]
    inputs = [*own.values(), *(t for g in groups for t in g.values())]
    if not inputs:
        return {}, {}
    try:
        with translated("the backward pass through unrolled steps"):
            raw = _pass(problem, loss, firsts, inputs)
    except DoubleBackwardError as err:
        unrolled = {p[1].name for p in problem.paths if p[1].hop_method().follows_trajectory}
        raise unrolled_error(sorted(unrolled), problem.name, err) from err
    n = len(own)
    direct = {k: g for k, g in zip(own, raw[:n], strict=True) if g is not None}
    cotangents: dict[str, Params] = {}
    rest = iter(zip(raw[n:], inputs[n:], strict=True))
    for p, g in zip(firsts, groups, strict=True):
        cotangents[p.name] = {
            k: torch.zeros_like(t) if d is None else d for k, (d, t) in zip(g, rest, strict=False)
        }
    return direct, cotangents


def _pass(
    problem: Problem, loss: Tensor, firsts: list[Problem], inputs: list[Tensor]
) -> tuple[Tensor | None, ...]:
    if any(p.sharded for p in (problem, *firsts)):
        return _backward(problem, loss, inputs)
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
        # no second-order autograd through sharded parameters: a method that adapts uses
        # gradients alone there (the engine refuses the others)
        context = lower.hop_context(method, key, lower.sharded or upper.sharded)
        # a bf16 forward would round away the perturbations of finite differences
        inner = pure_mean_loss(
            lower, upper, hop_batches(lower), full_precision=method.finite_differences
        )
        if lower.sharded or upper.sharded:  # values written into shards: connect gradients
            held = lambda: _program_parameters(problem)  # noqa: E731
            inner = differentiable_in_shards(inner, lower, upper, held)
        # data-parallel ranks: global-batch products
        method = problem.runtime.distributed.wrap_method(method)
        w, lam = lower.named_trainable_parameters(), upper.named_trainable_parameters()
        if key not in problem._hops.verified:
            _connection.check_hop(path, j, inner, w, lam)
            problem._hops.verified.add(key)
        hops.append(Hop(method, inner, w, lam, context))
        keys.append(key)
    return hops, keys


def total_gradient(problem: Problem, loss: Tensor) -> Params:
    """``dL/dtheta`` for ``problem``: the direct term plus every path's folded hypergradient.

    Entries that nothing reaches are absent (an empty dict: no gradient at all), so the update
    leaves those parameters alone, as ``torch.optim`` does a parameter whose ``.grad`` is
    ``None``; zeros would still move them (momentum, weight decay).
    """
    direct, cotangents = _direct(problem, loss, _first_lowers(problem))
    if "own" not in problem._hops.verified:
        _connection.check_own(problem, bool(direct))
        problem._hops.verified.add("own")
    total = direct  # taken without create_graph: no graph to cut
    problem.last_hop_info = []
    hyper: Params | None = None
    taken = _taken(problem)
    for index, path in enumerate(problem.paths):
        if path[1].hop_method().follows_trajectory or path not in taken:
            continue  # through the direct gradient (a trajectory), or zero by construction
        v = cotangents.get(path[1].name)
        if v is None:  # the hop ignores it: zeros, with no backward pass into the lower level
            v = _tree.zeros_like(_tree.detach(path[1].named_trainable_parameters()))
        hops, keys = _hops(problem, index, path)
        try:
            contribution, infos = fold(hops, v)
        except DoubleBackwardError as err:
            j = 1 if err.hop is None else err.hop + 1
            lower, upper = path[j], path[j + 1]
            raise hop_error(lower.name, upper.name, hops[j - 1].method.name, err) from err
        total = _accumulate(total, contribution)
        hyper = contribution if hyper is None else _tree.add(hyper, contribution)
        for j, (lower, key, hop, info) in enumerate(
            zip(path[1:-1], keys, hops, infos, strict=True), start=1
        ):
            lower.remember_hop(key, hop.method, info)
            if info.decision is not None:
                problem.record_decision(f"{lower.name}->{path[j + 1].name}", info.decision)
        problem.last_hop_info.extend(infos)
    if hyper is None:
        problem.set_hypergradient_norm(math.nan)
        return total
    norm = _tree.norm(hyper)
    problem.set_hypergradient_norm(norm)
    _health.check(norm, lambda: _not_finite(problem, infos_of(problem)))
    return total


def _accumulate(total: Params, contribution: Params) -> Params:
    """``total + contribution``, where ``total`` may lack entries (they count as zero)."""
    out = dict(total)
    for k, c in contribution.items():
        out[k] = out[k] + c if k in out else c
    return out


def infos_of(problem: Problem) -> list[str]:
    return [f"{i.method} (residual {i.residual:.3g})" for i in problem.last_hop_info]


def _not_finite(problem: Problem, hops: list[str]) -> str:
    return (
        f"problem {problem.name!r}: its hypergradient is not finite (hops: {', '.join(hops)}); "
        "a lower level diverged or a solve overflowed. Check the lower levels' losses, lower "
        "their learning rates, or use a method with a convergence guarantee (cg)"
    )
