"""Scaffolding the examples share: running a bilevel program, a held-out upper loss, and the
plain training loops of their baselines."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import torch.nn.functional as F
from torch import Tensor

from ziggurat import Engine, require_extra
from ziggurat.configs import EngineConfig
from ziggurat.problems import ImplicitProblem, Problem

T = TypeVar("T")


def run_bilevel(
    upper: Problem,
    lower: Problem,
    *,
    steps: int,
    progress: bool,
    env: Any = None,
    metric: Callable[[], float] | None = None,
) -> list[tuple[int, float]]:
    """Train ``upper`` over ``lower`` for ``steps`` engine iterations (lower-level steps).

    The program is the two-level one of Betty: ``lower``'s loss reads ``upper`` and ``upper``'s
    loss reads ``lower`` after training, so ``u2l = {upper: [lower]}`` and
    ``l2u = {lower: [upper]}``. ``progress`` draws the engine's bar (``EngineConfig.progress``);
    ``env`` is handed to the engine (``problem.env``).

    Returns:
        The curve of ``metric()`` (``(step, value)`` at :data:`CURVE_POINTS` evenly spaced
        steps, through the engine's ``validation()``), or ``[]`` without a metric.
    """
    problems, deps = [upper, lower], {"u2l": {upper: [lower]}, "l2u": {lower: [upper]}}
    if metric is None:
        config = EngineConfig(train_iters=steps, valid_step=0, progress=progress)
        Engine(problems=problems, dependencies=deps, config=config, env=env).run()
        return []
    config = curve_config(steps, progress)
    engine = MetricEngine(
        problems=problems, dependencies=deps, config=config, env=env, metric=metric
    )
    engine.run()
    return engine.curve


CURVE_POINTS = 20
"""How many points a metric curve has (for the figures of ``ziggurat demo --plot``)."""


def curve_every(steps: int) -> int:
    """The step between two points of a metric curve over ``steps`` steps."""
    return max(1, steps // CURVE_POINTS)


def curve_config(steps: int, progress: bool) -> EngineConfig:
    """An ``EngineConfig`` for ``steps`` iterations that validates :data:`CURVE_POINTS` times."""
    return EngineConfig(train_iters=steps, valid_step=curve_every(steps), progress=progress)


class MetricEngine(Engine):
    """An :class:`~ziggurat.Engine` whose ``validation()`` evaluates ``metric()`` and records
    ``(global_step, value)`` in ``curve``: Betty's validation hook, used for a learning curve.

    ``metric`` must not consume random numbers, so the run trains exactly as it would
    without it.
    """

    def __init__(self, *args: Any, metric: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metric = metric
        self.curve: list[tuple[int, float]] = []

    def validation(self) -> dict[str, float]:
        value = float(self.metric())
        self.curve.append((self.global_step, value))
        return {"metric": value}

    def log_metrics(self, source: str, values: Mapping[str, float], step: int) -> None:
        if source != "validation":  # the curve is for the figure, not the console
            super().log_metrics(source, values, step)


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
    tqdm = require_extra("tqdm", "the examples' progress bar", extra="examples")
    trange: Callable[..., Iterable[int]] = tqdm.trange
    return trange(n, desc=desc, leave=False)
