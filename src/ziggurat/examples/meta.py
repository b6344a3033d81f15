"""Meta-learning an initialisation: the two-level program of MAML and iMAML, and its adapt loop.

The upper level owns an initialisation ``phi``; the lower level adapts to one task's support
set; the upper loss is the adapted model's loss on the task's query set.

* ``maml`` (Finn et al. 2017): the lower level is an
  :class:`~ziggurat.problems.IterativeProblem` whose inner loop starts *at* ``phi`` (live), so
  the hypergradient runs through the unrolled SGD steps.
* ``imaml`` (Rajeswaran et al. 2019): the lower level is an
  :class:`~ziggurat.problems.ImplicitProblem` minimising ``L(w) + prox/2 ||w - phi||^2`` from
  ``w = phi``; the hypergradient is implicit, ``(I + H/prox)^-1`` applied by a linear solver.
  :func:`proximal_gauss_newton` replaces ``H`` by its Gauss-Newton matrix, which keeps the
  system positive definite on a non-convex network.

The task source (the engine's ``env``) draws a new task at the start of every inner loop; the
support and query loaders serve the current task.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ziggurat import Params
from ziggurat.configs import Config
from ziggurat.examples.common import run_bilevel
from ziggurat.hypergradient import Method, cg, gauss_newton
from ziggurat.problems import ImplicitProblem, IterativeProblem

METHODS = ("maml", "imaml")


class TaskSource(Protocol):
    """Draws tasks; the loaders given to :func:`meta_train` serve the current one."""

    def new_task(self) -> None: ...


@dataclass(frozen=True)
class Adaptation:
    """How an initialisation adapts to one task: ``steps`` SGD steps of size ``lr`` on
    ``loss(model(x), y)`` over the support set. ``prox`` is iMAML's proximal strength."""

    loss: Callable[[Tensor, Tensor], Tensor]
    steps: int
    lr: float
    prox: float = 1.0


# --8<-- [start:levels]
class Meta(ImplicitProblem):
    """Upper level: query loss of the adapted learner; its module is the initialisation."""

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return self.cfg.loss(self.learner(x), y)


class UnrolledLearner(IterativeProblem):
    """MAML's lower level: SGD from ``phi`` itself, differentiated through the steps."""

    def on_inner_loop_start(self) -> None:
        self.env.new_task()
        assert self.meta.module is not None
        self.params = dict(self.meta.module.named_parameters())

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return self.cfg.loss(self(x), y)


class ProximalLearner(ImplicitProblem):
    """iMAML's lower level: support loss plus ``prox/2 ||w - phi||^2``, started at ``phi``."""

    def on_inner_loop_start(self) -> None:
        self.env.new_task()
        assert self.module is not None and self.meta.module is not None
        self.module.load_state_dict(self.meta.module.state_dict())

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        assert self.module is not None and self.meta.module is not None
        prox = sum(
            (w - p).pow(2).sum()
            for w, p in zip(self.module.parameters(), self.meta.module.parameters(), strict=True)
        )
        return self.cfg.loss(self.module(x), y) + 0.5 * self.cfg.prox * prox


# --8<-- [end:levels]


def proximal_gauss_newton(
    model: nn.Module,
    support: Callable[[], tuple[Tensor, Tensor]],
    adaptation: Adaptation,
    maxiter: int = 5,
) -> Method:
    """iMAML's CG solve with the Gauss-Newton matrix ``J^T (d^2 loss) J + prox I`` for ``H``.

    The exact Hessian of a network's loss can have eigenvalues below ``-prox``; CG then meets
    negative curvature and returns a poor direction. The Gauss-Newton matrix (Schraudolph 2002)
    is positive semi-definite for a loss convex in the outputs (cross-entropy, squared error).

    Args:
        model: the architecture of the lower level (its own parameters are not read).
        support: returns the current task's support set, the batch the hop's loss is taken on.
    """

    def outputs(w: Params, lam: Params) -> Tensor:
        return torch.func.functional_call(model, w, (support()[0],))

    def loss(out: Tensor) -> Tensor:
        return adaptation.loss(out, support()[1])

    def proximal(w: Params, lam: Params) -> Tensor:
        squares = torch.stack([(w[k] - lam[k]).pow(2).sum() for k in w])
        return 0.5 * adaptation.prox * squares.sum()

    return cg(maxiter, curvature=gauss_newton(outputs, loss, regularizer=proximal))


def meta_train(
    phi: nn.Module,
    tasks: TaskSource,
    *,
    method: str,
    adaptation: Adaptation,
    support: Iterable[Any],
    query: Iterable[Any],
    tasks_seen: int,
    meta_lr: float = 1e-3,
    solver: Method | None = None,
    progress: bool = True,
) -> None:
    """Meta-train ``phi`` in place on ``tasks_seen`` tasks with Adam(``meta_lr``).

    Args:
        method: ``"maml"`` (unrolled) or ``"imaml"`` (proximal, implicit).
        solver: iMAML's hypergradient method (default ``cg(5)``); unused by MAML.
    """
    if method not in METHODS:
        raise ValueError(f"meta-learning method must be one of {METHODS}, got {method!r}")
    # --8<-- [start:program]
    meta = Meta(
        name="meta",
        module=phi,
        optimizer=torch.optim.Adam(phi.parameters(), lr=meta_lr),
        train_data_loader=query,
        extra_config=adaptation,
    )
    inner = copy.deepcopy(phi)
    options: dict[str, Any] = {
        "name": "learner",
        "module": inner,
        "optimizer": torch.optim.SGD(inner.parameters(), lr=adaptation.lr),
        "train_data_loader": support,
        "extra_config": adaptation,
    }
    learner: ImplicitProblem | IterativeProblem
    if method == "maml":
        learner = UnrolledLearner(**options, config=Config(unroll_steps=adaptation.steps))
    else:
        hypergradient = solver if solver is not None else cg(5)
        config = Config(unroll_steps=adaptation.steps, hypergradient=hypergradient)
        learner = ProximalLearner(**options, config=config)
    run_bilevel(meta, learner, steps=tasks_seen * adaptation.steps, progress=progress, env=tasks)
    # --8<-- [end:program]


def adapt(model: nn.Module, start: Params, x: Tensor, y: Tensor, adaptation: Adaptation) -> Params:
    """Plain SGD from ``start`` (not modified) on one task's support set; no graph is kept.

    ``model`` gives the architecture only: its own parameters are not read.
    """
    params = {k: v.detach().clone().requires_grad_(True) for k, v in start.items()}
    for _ in range(adaptation.steps):
        loss = adaptation.loss(torch.func.functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {
            k: (p - adaptation.lr * g).detach().requires_grad_(True)
            for (k, p), g in zip(params.items(), grads, strict=True)
        }
    return {k: p.detach() for k, p in params.items()}


def predict(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """``model``'s output on ``x`` with ``params``, without a graph."""
    with torch.no_grad():
        return torch.func.functional_call(model, params, (x,))
