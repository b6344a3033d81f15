"""Scaffolding the examples share: running a bilevel program, a held-out upper loss, and the
plain training loops of their baselines."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import torch.nn.functional as F
from torch import Tensor

from ziggurat import Engine
from ziggurat.configs import EngineConfig
from ziggurat.problems import ImplicitProblem, Problem

T = TypeVar("T")


def run_bilevel(
    upper: Problem, lower: Problem, *, steps: int, progress: bool, env: Any = None
) -> None:
    """Train ``upper`` over ``lower`` for ``steps`` engine iterations (lower-level steps).

    The program is the two-level one of Betty: ``lower``'s loss reads ``upper`` and ``upper``'s
    loss reads ``lower`` after training, so ``u2l = {upper: [lower]}`` and
    ``l2u = {lower: [upper]}``. ``progress`` draws the engine's bar (``EngineConfig.progress``);
    ``env`` is handed to the engine (``problem.env``).
    """
    config = EngineConfig(train_iters=steps, valid_step=0, progress=progress)
    Engine(
        problems=[upper, lower],
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
        config=config,
        env=env,
    ).run()


class HeldOutLoss(ImplicitProblem):
    """An upper level that scores the lower level named ``classifier`` on held-out data.

    Its loss is the cross-entropy of ``classifier``'s predictions on this level's own batches,
    a validation or meta set the classifier does not train on.
    """

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.classifier(x), y)


def endless(batches: Iterable[T]) -> Iterator[T]:
    """One epoch of ``batches`` after another, each a new iteration (a fresh shuffle).

    Raises:
        ValueError: when an epoch yields nothing, which would otherwise loop forever.
    """
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("endless: an epoch of the batches was empty")


def progress_range(n: int, progress: bool, desc: str) -> Iterable[int]:
    """``range(n)``, wrapped in a tqdm bar labelled ``desc`` when ``progress``; for the plain
    baselines, which run no engine."""
    if not progress:
        return range(n)
    from tqdm import trange

    return trange(n, desc=desc, leave=False)
