"""MAML and iMAML on sinusoid regression (Finn et al. 2017; Rajeswaran et al. 2019).

Each task is ``y = a sin(x - p)`` with ``a ~ U[0.1, 5]``, ``p ~ U[0, pi]``, ``x ~ U[-5, 5]``,
with ``K`` support points. The upper level learns an initialisation ``phi`` of a 1-40-40-1 MLP
so that a few SGD steps on a task's support set fit its query set.

The two-level program (``maml`` unrolled, ``imaml`` proximal with CG) is
:func:`~ziggurat.examples.meta.meta_train`.

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

from ziggurat import Params
from ziggurat.examples.common import progress_range
from ziggurat.examples.meta import METHODS as METHODS
from ziggurat.examples.meta import Adaptation, adapt, meta_train, predict
from ziggurat.examples.result import Result

DEFAULT_STEPS = 1500
SHOTS, QUERY, INNER_STEPS, INNER_LR, PROX, TEST_TASKS = 10, 20, 5, 0.01, 1.0, 200
ADAPTATION = Adaptation(F.mse_loss, steps=INNER_STEPS, lr=INNER_LR, prox=PROX)


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


def adapt_and_score(init: nn.Module, seed: int) -> float:
    """Mean query MSE over fresh tasks after ``INNER_STEPS`` SGD steps from ``init``."""
    tasks, total = Tasks(seed + 10_000), 0.0
    start: Params = dict(init.named_parameters())
    for _ in range(TEST_TASKS):
        tasks.new_task()
        xs, ys = tasks.sample(SHOTS)
        xq, yq = tasks.sample(QUERY)
        params = adapt(init, start, xs, ys, ADAPTATION)
        total += float(F.mse_loss(predict(init, params, xq), yq))
    return total / TEST_TASKS


def fits(seed: int, inits: dict[str, nn.Module]) -> dict[str, object]:
    """One test task: its support set, the true curve, and each initialisation's fit after
    ``INNER_STEPS`` SGD steps on the support set (on a grid of ``x``), for the figure."""
    tasks = Tasks(seed + 20_000)
    tasks.new_task()
    xs, ys = tasks.sample(SHOTS)
    grid = torch.linspace(-5, 5, 200).unsqueeze(1)
    out: dict[str, object] = {
        "x": grid.squeeze(1).numpy(),
        "truth": (tasks.amp * torch.sin(grid - tasks.phase)).squeeze(1).numpy(),
        "support_x": xs.squeeze(1).numpy(),
        "support_y": ys.squeeze(1).numpy(),
    }
    fitted = {}
    for name, init in inits.items():
        params = adapt(init, dict(init.named_parameters()), xs, ys, ADAPTATION)
        fitted[name] = predict(init, params, grid).detach().squeeze(1).numpy()
    out["fits"] = fitted
    return out


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
    meta_train(
        phi,
        tasks,
        method=method,
        adaptation=ADAPTATION,
        support=tasks.loader(SHOTS),
        query=tasks.loader(QUERY),
        tasks_seen=steps,
        progress=progress,
    )

    ours = adapt_and_score(phi, seed)
    result = Result(f"maml: {method} on sinusoid regression, {SHOTS}-shot, {INNER_STEPS} steps")
    result.add("meta-test MSE vs random init", adapt_and_score(random_init, seed), ours, False)
    joint = pretrain(steps, seed, progress)
    result.add("meta-test MSE vs joint pretraining", adapt_and_score(joint, seed), ours, False)
    result.arrays.update(fits(seed, {"ours": phi, "random init": random_init, "joint": joint}))
    result.seconds = time.perf_counter() - start
    return result
