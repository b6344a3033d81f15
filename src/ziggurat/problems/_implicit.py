"""``ImplicitProblem``: a level whose best response is differentiated implicitly."""

from __future__ import annotations

from typing import Any

import torch

from .._types import Params
from ..hypergradient import adam_preconditioner
from ._problem import Problem


class ImplicitProblem(Problem):
    """A level with a native module and optimizer; the default kind of problem.

    When it is the lower level of a hop, its ``Config`` picks the hypergradient method
    (``type`` or ``hypergradient=``). Its parameters are updated in place by its optimizer.
    """

    def reads_last_grads(self) -> bool:
        """A method that needs a preconditioner (SAMA), with an Adam/AdamW optimizer, builds it
        from the last gradients."""
        local = self._own_optimizer()
        adam = isinstance(local, (torch.optim.Adam, torch.optim.AdamW))
        return adam and self.hop_method().needs_preconditioner

    def optimizer_preconditioner(self) -> Params | None:
        """SAMA's diagonal ``du/dg`` from the Adam/AdamW state, or ``None`` (identity).

        An optimizer that shards its state over data-parallel ranks (ZeRO) exposes the shard's
        optimizer as ``local_optimizer``: each rank computes the diagonal of the parameters it
        owns, zeros elsewhere, and a sum over ranks gives every rank the whole diagonal --
        exactly the unsharded one. Learning rates come from the optimizer's own groups.
        """
        opt = self.optimizer
        local = getattr(opt, "local_optimizer", opt)
        sharded = local is not opt
        last_grads = self._hops.last_grads
        if not isinstance(local, (torch.optim.Adam, torch.optim.AdamW)) or not last_grads:
            return None
        groups = {id(p): g for g in opt.param_groups for p in g["params"]}
        params = self.named_trainable_parameters()
        # parameters that share a step count and a group get one call (one pass per operation
        # over all their tensors, instead of one per tensor)
        batches: dict[tuple[int, int], list[str]] = {}
        zeros: Params = {}
        for k, p in params.items():
            state = local.state.get(p)
            if not state and sharded:  # owned by another rank
                zeros[k] = torch.zeros_like(p)
                continue
            if not state or k not in last_grads:
                return None
            batches.setdefault((int(state["step"]), id(groups[id(p)])), []).append(k)
        found = dict(zeros)
        for keys in batches.values():
            found.update(_adam_diagonal(keys, params, local.state, last_grads, groups))
        out = {k: found[k] for k in params}  # the parameters' order, as the tree ops expect
        if sharded:
            out = self.runtime.distributed.sum(out)
        return out


def _adam_diagonal(
    keys: list[str],
    params: Params,
    states: dict[Any, dict[str, Any]],
    last_grads: Params,
    groups: dict[int, dict[str, Any]],
) -> Params:
    """The diagonal for parameters ``keys``, which share one step count and one group."""
    first = params[keys[0]]
    group, state = groups[id(first)], states[first]
    return adam_preconditioner(
        {k: states[params[k]]["exp_avg"] for k in keys},
        {k: states[params[k]]["exp_avg_sq"] for k in keys},
        {k: last_grads[k] for k in keys},
        step=int(state["step"]),
        lr=float(group["lr"]),
        betas=tuple(group["betas"]),
        eps=float(group["eps"]),
    )
