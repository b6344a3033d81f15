"""Preparing problems for a strategy: the one place that rewires a problem's optimizer and
parameters (ZeRO, FSDP2), and the checks that refuse what a strategy cannot run.

Which levels ``strategy="fsdp"`` shards: every *leaf* (a level with no lower levels). A leaf is
never the upper level of a hop, so no hypergradient needs derivatives with respect to its
parameters through another level's pure loss, and its own hop method (when it has upper
levels) must need only first-order autograd (``Method.first_order_only``): second-order
autograd does not pass through sharded parameters. Every such method runs there: darts,
sama, first_order, the penalty method and the implicit solvers with finite-difference
products, which take gradients of the level's pure loss in its own (sharded) parameters
(``problems._sharded_loss``). Levels above the leaves are replicated, as under
``strategy="ddp"``, and may use any method. What changes for a sharded level: its module is
``fully_shard``-ed as one unit and its optimizer rebuilt over the shards with the same class
and options (schedulers re-pointed); gradients reach it through ``loss.backward()`` and are
averaged by FSDP2's reduce-scatter; pure evaluations overwrite its parameter values in place
(``Problem.swap_params``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch

from ..configs import first_order_choices
from ..problems import Problem
from ..systems import DISTRIBUTED_STRATEGIES, Group
from ..systems import fsdp as _fsdp
from ._graph import Graph


def check_strategy(strategy: str, problems: Sequence[Problem], graph: Graph) -> None:
    """Reject, before any process group exists, programs a distributed strategy cannot run.

    ``strategy="fsdp"`` shards the lowest levels (``graph.leaves``): the method of every hop
    with a sharded level on either side -- the leaf's own hops, and hops of a level whose loss
    reads a leaf (three and more levels) -- must need only first-order autograd.
    """
    if strategy not in DISTRIBUTED_STRATEGIES:
        return
    for p in problems:
        if not p.params_live_in_module:
            _check_unrolled(strategy, p)
    if strategy == "fsdp":
        by_name = {p.name: p for p in problems}
        for name in sorted(_touching_shards(graph)):
            _check_shardable_method(by_name[name])


def _touching_shards(graph: Graph) -> set[str]:
    """Levels that are the lower level of a hop whose lower or upper level is a leaf."""
    leaves = set(graph.leaves)
    out: set[str] = set()
    for paths in graph.paths.values():
        for path in paths:
            for lower, upper in itertools.pairwise(path[1:]):  # the hops of the path
                if lower in leaves or upper in leaves:
                    out.add(lower)
    return out


def _check_unrolled(strategy: str, p: Problem) -> None:
    if strategy == "fsdp":
        raise ValueError(
            f"problem {p.name!r} is an IterativeProblem (unrolled differentiation), which "
            "strategy='fsdp' cannot shard: the upper level's gradient is a second-order "
            "product through its inner loop. Use strategy='ddp' (or 'zero'), which runs it "
            "data-parallel, or make it an ImplicitProblem with a first-order method"
        )
    if p.config.checkpoint_segments is not None:
        raise ValueError(
            f"problem {p.name!r}: Config(checkpoint_segments=...) is not supported under "
            f"strategy={strategy!r} (the replayed segments would repeat the gradient "
            "all-reduces inside the backward pass); leave checkpoint_segments=None"
        )


def _check_shardable_method(p: Problem) -> None:
    method = p.hop_method()
    if method.first_order_only and not method.evaluates_inner:
        raise ValueError(
            f"problem {p.name!r} uses the hypergradient method {method.name!r}, which evaluates "
            "a loss of its own instead of the level's pure loss, but strategy='fsdp' shards "
            "this level's parameters with FSDP2 and only the pure loss knows how to evaluate "
            "them. Use a method that evaluates the pure loss (for more data per hop, "
            "Config(hypergradient_batches=B)), or strategy='ddp'"
        )
    if method.first_order_only or method.restricts_to_first_order:
        return  # the second: auto, which takes gradients alone on hops that touch shards
    raise ValueError(
        f"problem {p.name!r} uses the hypergradient method {method.name!r}, which needs "
        "second-order autograd (Hessian-vector or double-backward mixed products), but "
        "strategy='fsdp' shards its parameters with FSDP2 (fully_shard) and second-order "
        "autograd does not pass through sharded parameters. Use a method that needs only "
        f"first-order autograd on this level: {first_order_choices()}; or use strategy='ddp'"
    )


def check_sharding(problems: Sequence[Problem], graph: Graph) -> None:
    """Under ``strategy="fsdp"`` the leaves were sharded at construction; they must stay the
    leaves (a sharded level cannot become the upper level of a hop)."""
    sharded = sorted(p.name for p in problems if p.sharded)
    if sharded and sharded != sorted(graph.leaves):
        raise ValueError(
            f"set_dependency: strategy='fsdp' sharded the lowest levels {sharded} at "
            f"construction, but the new dependencies make {sorted(graph.leaves)} the lowest; "
            "keep the same lowest levels or build a new Engine"
        )


def prepare_problems(group: Group, problems: Sequence[Problem]) -> None:
    """Make every rank start from rank 0's parameters; wrap optimizers for ZeRO; shard the
    lowest levels for FSDP2."""
    for p in problems:
        group.broadcast_module(p.module)
        if group.strategy == "zero" and p.params_live_in_module:
            wrap_zero(p)  # an IterativeProblem steps a functional copy of its optimizer
        if group.strategy == "fsdp" and p.leaf:
            shard(p)


def shard(problem: Problem) -> None:
    """Shard ``problem``'s module with FSDP2 and rebuild its optimizer over the shards."""
    module, opt = problem.module, problem.optimizer
    _fsdp.check_shardable(module, opt, problem.name)
    names = {id(p): k for k, p in module.named_parameters()}
    live = _fsdp.fully_shard_module(module)
    problem.use_shards(live)
    problem.optimizer = _fsdp.rebuild_optimizer(opt, names, live)
    _fsdp.repoint_scheduler(problem.scheduler, problem.optimizer)


def wrap_zero(problem: Problem) -> None:
    """Replace the problem's optimizer by a ZeRO-1 optimizer of the same class and options.

    Each rank keeps the optimizer state of its share of the parameters only
    (``ZeroRedundancyOptimizer``). Parameter groups and their options are kept; existing
    optimizer state is not (wrap before training). A scheduler is re-pointed at the new
    optimizer, whose ``param_groups`` it then edits as usual.
    """
    opt = problem.optimizer
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(opt, ZeroRedundancyOptimizer):
        return
    groups = [dict(g) for g in opt.param_groups]
    zero = _zero_class()(
        groups[0]["params"], optimizer_class=type(opt), **_group_options(groups[0])
    )
    for g in groups[1:]:
        zero.add_param_group(g)
    _fsdp.repoint_scheduler(problem.scheduler, zero)
    problem.optimizer = zero


def _group_options(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in ("params", "initial_lr")}


def _zero_class() -> Any:
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    class ConsolidatingZero(ZeroRedundancyOptimizer):
        """ZeRO whose ``state_dict`` is the consolidated (full) state on rank 0.

        Every rank must call ``state_dict()`` (a collective); rank 0 receives the full state,
        the others an empty dict. ``load_state_dict`` takes the full state on every rank.
        """

        @property
        def local_optimizer(self) -> torch.optim.Optimizer:
            """The optimizer of this rank's shard (its ``state`` holds only that shard)."""
            return self.optim

        def state_dict(self) -> dict[str, Any]:
            self.consolidate_state_dict(to=0)
            if dist.get_rank() != 0:
                return {}
            return super().state_dict()

    return ConsolidatingZero
