"""``ImplicitProblem``: a level whose best response is differentiated implicitly."""

from __future__ import annotations

import torch

from .._types import Params
from ..hypergradient import HopContext, Method, Sama, adam_preconditioner
from ._problem import HopKey, Problem


class ImplicitProblem(Problem):
    """A level with a native module and optimizer; the default kind of problem.

    When it is the lower level of a hop, its ``Config`` picks the hypergradient method
    (``type`` or ``hypergradient=``). Its parameters are updated in place by its optimizer.
    """

    def hop_context(self, method: Method, key: HopKey) -> HopContext:
        context = super().hop_context(method, key)
        if isinstance(method, Sama):
            return HopContext(context.warm_start, self._adam_preconditioner())
        return context

    def _adam_preconditioner(self) -> Params | None:
        """SAMA's diagonal ``du/dg`` from the Adam/AdamW state, or ``None`` (identity)."""
        opt = self.optimizer
        if not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)) or not self._last_grads:
            return None
        params = self.named_trainable_parameters()
        exp_avg, exp_avg_sq, grads = {}, {}, {}
        for k, p in params.items():
            state = opt.state.get(p)
            if not state or k not in self._last_grads:
                return None
            exp_avg[k], exp_avg_sq[k], grads[k] = (
                state["exp_avg"],
                state["exp_avg_sq"],
                self._last_grads[k],
            )
        group = opt.param_groups[0]
        step = int(opt.state[next(iter(params.values()))]["step"])
        return adam_preconditioner(
            exp_avg,
            exp_avg_sq,
            grads,
            step=step,
            lr=float(group["lr"]),
            betas=tuple(group["betas"]),
            eps=float(group["eps"]),
        )
