"""MAML and iMAML on sinusoid regression (Finn et al. 2017; Rajeswaran et al. 2019).

Each task is ``y = a sin(x - p)`` with ``a ~ U[0.1, 5]``, ``p ~ U[0, pi]``, ``x ~ U[-5, 5]``,
with ``K`` support points. The upper level learns an initialisation ``phi`` of a 1-40-40-1 MLP
so that a few SGD steps on a task's support set fit its query set.

* ``maml``: the lower level is an :class:`~ziggurat.problems.IterativeProblem` whose inner loop
  starts *at* ``phi`` (live), so the hypergradient runs through the unrolled SGD steps.
* ``imaml``: the lower level is an :class:`~ziggurat.problems.ImplicitProblem` with the
  proximal loss ``L(w) + lam/2 ||w - phi||^2``; the hypergradient is implicit (CG).

Baselines adapt with the same steps from a random initialisation and from a model pretrained
on all tasks jointly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _tree
from ..configs import Config, EngineConfig
from ..hypergradient import cg
from ..problems import ImplicitProblem, IterativeProblem
from ._progress import ProgressEngine, progress_range
from ._result import Result

DEFAULT_STEPS = 1500
METHODS = ("maml", "imaml")
SHOTS, QUERY, INNER_STEPS, INNER_LR, PROX, TEST_TASKS = 10, 20, 5, 0.01, 1.0, 200


def net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)
    )


class Tasks:
    """Sinusoid tasks; ``new_task()`` draws one, the two loaders serve its support and query."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.amp, self.phase = 1.0, 0.0

    def new_task(self) -> None:
        self.amp = float(0.1 + 4.9 * torch.rand((), generator=self.gen))
        self.phase = float(math.pi * torch.rand((), generator=self.gen))

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        x = 10 * torch.rand(n, 1, generator=self.gen) - 5
        return x, self.amp * torch.sin(x - self.phase)

    def loader(self, n: int) -> _Endless:
        return _Endless(self, n)


class _Endless:
    def __init__(self, tasks: Tasks, n: int) -> None:
        self.tasks, self.n = tasks, n

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self.tasks.sample(self.n)


class Meta(ImplicitProblem):
    """Upper level: query loss of the adapted learner; its module is the initialisation."""

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.mse_loss(self.learner(x), y)


class UnrolledLearner(IterativeProblem):
    """MAML's lower level: SGD from ``phi`` itself, differentiated through the steps."""

    def on_inner_loop_start(self) -> None:
        self.env.new_task()
        assert self.meta.module is not None
        self.params = dict(self.meta.module.named_parameters())

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)


class ProximalLearner(ImplicitProblem):
    """iMAML's lower level: support loss plus ``PROX/2 ||w - phi||^2``, started at ``phi``."""

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
        return F.mse_loss(self.module(x), y) + 0.5 * PROX * prox


def adapt_and_score(init: nn.Module, seed: int) -> float:
    """Mean query MSE over fresh tasks after ``INNER_STEPS`` SGD steps from ``init``."""
    tasks, total = Tasks(seed + 10_000), 0.0
    start = _tree.detach(dict(init.named_parameters()))
    for _ in range(TEST_TASKS):
        tasks.new_task()
        xs, ys = tasks.sample(SHOTS)
        xq, yq = tasks.sample(QUERY)
        params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
        for _ in range(INNER_STEPS):
            loss = F.mse_loss(torch.func.functional_call(init, params, (xs,)), ys)
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {
                k: (p - INNER_LR * g).detach().requires_grad_(True)
                for (k, p), g in zip(params.items(), grads, strict=True)
            }
        with torch.no_grad():
            total += float(F.mse_loss(torch.func.functional_call(init, params, (xq,)), yq))
    return total / TEST_TASKS


def pretrain(steps: int, seed: int, progress: bool) -> nn.Module:
    """The joint baseline: one model regressing on all tasks pooled (a new task per batch)."""
    torch.manual_seed(seed)
    model, tasks = net(), Tasks(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in progress_range(steps, progress, "maml joint baseline"):
        tasks.new_task()
        x, y = tasks.sample(SHOTS + QUERY)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    return model


def run(
    steps: int = DEFAULT_STEPS, method: str = "maml", seed: int = 0, progress: bool = True
) -> Result:
    """Meta-train for ``steps`` tasks; compare meta-test query loss with the baselines."""
    if method not in METHODS:
        raise ValueError(f"maml method must be one of {METHODS}, got {method!r}")
    start = time.perf_counter()
    tasks = Tasks(seed)
    torch.manual_seed(seed)
    random_init = net()
    phi = net()
    phi.load_state_dict(random_init.state_dict())
    inner = net()
    meta = Meta(
        name="meta",
        module=phi,
        optimizer=torch.optim.Adam(phi.parameters(), lr=1e-3),
        train_data_loader=tasks.loader(QUERY),
    )
    config = Config(unroll_steps=INNER_STEPS)
    if method == "maml":
        learner: ImplicitProblem | IterativeProblem = UnrolledLearner(
            name="learner",
            module=inner,
            optimizer=torch.optim.SGD(inner.parameters(), lr=INNER_LR),
            train_data_loader=tasks.loader(SHOTS),
            config=config,
        )
    else:
        learner = ProximalLearner(
            name="learner",
            module=inner,
            optimizer=torch.optim.SGD(inner.parameters(), lr=INNER_LR),
            train_data_loader=tasks.loader(SHOTS),
            config=Config(unroll_steps=INNER_STEPS, hypergradient=cg(5)),
        )
    ProgressEngine(
        problems=[meta, learner],
        dependencies={"u2l": {meta: [learner]}, "l2u": {learner: [meta]}},
        config=EngineConfig(train_iters=steps * INNER_STEPS, valid_step=0),
        env=tasks,
        progress=progress,
        desc=f"maml ({method})",
    ).run()

    ours = adapt_and_score(phi, seed)
    result = Result(f"maml: {method} on sinusoid regression, {SHOTS}-shot, {INNER_STEPS} steps")
    result.add("meta-test MSE vs random init", adapt_and_score(random_init, seed), ours, False)
    joint = pretrain(steps, seed, progress)
    result.add("meta-test MSE vs joint pretraining", adapt_and_score(joint, seed), ours, False)
    result.seconds = time.perf_counter() - start
    return result
