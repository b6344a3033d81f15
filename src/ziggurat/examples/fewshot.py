"""Few-shot classification with MAML and iMAML (Finn et al. 2017; Rajeswaran et al. 2019).

Classes are the ten base classes of Fashion-MNIST (or scikit-learn digits) and their rotations
by 90, 180 and 270 degrees (Vinyals et al. 2016). Meta-testing uses base classes 7, 8 and 9
with their rotations (12 classes, images of the test split); meta-training uses the other 28
classes (images of the training split), so no rotation of a test class is trained on. Each
class keeps at most ``PER_CLASS`` images; Fashion-MNIST is pooled to 14x14.

A task is ``WAYS``-way ``shots``-shot: ``WAYS`` classes of the pool in random label order,
``shots`` support and ``QUERY`` query images per class. The upper level learns the
initialisation ``phi`` of a 2-layer MLP, head included, such that ``INNER_STEPS`` SGD steps on
the support set classify the query set (:func:`~ziggurat.examples.meta.meta_train`). iMAML's
CG solve uses the Gauss-Newton matrix (:func:`~ziggurat.examples.meta.proximal_gauss_newton`):
with the exact Hessian it meets negative curvature and ``phi`` drifts to worse than random.

Every initialisation is scored by the same plain SGD steps on the same test tasks (paired):
``phi``; the random initialisation ``phi`` started from; and a network pretrained on the 28
meta-train classes jointly (``steps`` Adam steps on batches as large as a task), whose head
is replaced by a zero ``WAYS``-way head before the whole network is fine-tuned.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ziggurat import Params
from ziggurat.datasets import Images, load_images
from ziggurat.examples.common import progress_range
from ziggurat.examples.data import downsample, rotated_classes
from ziggurat.examples.meta import METHODS as METHODS
from ziggurat.examples.meta import Adaptation, adapt, meta_train, predict, proximal_gauss_newton
from ziggurat.examples.result import Result

DEFAULT_STEPS = 2000
SHOTS = (1, 5)
WAYS, QUERY, INNER_STEPS, INNER_LR, PROX, HIDDEN = 5, 15, 5, 0.1, 1.0, 64
TRAIN_BASES, TEST_BASES, PER_CLASS, TEST_TASKS = (0, 1, 2, 3, 4, 5, 6), (7, 8, 9), 500, 500
ADAPTATION = Adaptation(F.cross_entropy, steps=INNER_STEPS, lr=INNER_LR, prox=PROX)


class Classifier(nn.Module):
    """An MLP body and a linear head over ``classes`` outputs."""

    def __init__(self, features: int, classes: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class Tasks:
    """``ways``-way ``shots``-shot tasks over a pool ``(classes, per_class, features)``.

    ``new_task()`` draws one; ``support`` and ``query`` hold it, ``loader(...)`` serves it.
    """

    def __init__(self, pool: Tensor, shots: int, seed: int, ways: int = WAYS) -> None:
        self.pool, self.shots, self.ways = pool, shots, ways
        self.gen = torch.Generator().manual_seed(seed)
        empty = (torch.empty(0, pool.shape[2]), torch.empty(0, dtype=torch.long))
        self.support: tuple[Tensor, Tensor] = empty
        self.query: tuple[Tensor, Tensor] = empty

    def new_task(self) -> None:
        classes = torch.randperm(len(self.pool), generator=self.gen)[: self.ways]
        order = torch.rand(self.ways, self.pool.shape[1], generator=self.gen).argsort(1)
        x = self.pool[classes[:, None], order[:, : self.shots + QUERY]]
        labels = torch.arange(self.ways)[:, None]
        self.support = self._flat(x[:, : self.shots], labels)
        self.query = self._flat(x[:, self.shots :], labels)

    @staticmethod
    def _flat(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(-1, x.shape[-1]), labels.expand(x.shape[:2]).reshape(-1)

    def loader(self, part: str) -> _Current:
        """An endless loader of the current task's ``"support"`` or ``"query"`` set."""
        if part == "support":
            return _Current(lambda: self.support)
        if part == "query":
            return _Current(lambda: self.query)
        raise ValueError(f"a task has a 'support' and a 'query' set, not {part!r}")


class _Current:
    def __init__(self, current: Callable[[], tuple[Tensor, Tensor]]) -> None:
        self.current = current

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self.current()


def class_pools(images: Images, seed: int) -> tuple[Tensor, Tensor]:
    """Meta-train and meta-test pools of rotated classes, disjoint in their base classes."""
    factor = 2 if images.x.shape[1] == 784 else 1
    train = _pool(downsample(images.x, factor), images.y, TRAIN_BASES, seed)
    test = _pool(downsample(images.x_test, factor), images.y_test, TEST_BASES, seed)
    return train, test


def _pool(x: np.ndarray, y: np.ndarray, bases: tuple[int, ...], seed: int) -> Tensor:
    per_class = min(PER_CLASS, *(int((y == b).sum()) for b in bases))
    return torch.as_tensor(rotated_classes(x, y, bases, per_class, seed))


def accuracies(model: nn.Module, start: Params, tasks: Tasks) -> np.ndarray:
    """Query accuracy on each of ``TEST_TASKS`` tasks after adapting from ``start``."""
    out = np.empty(TEST_TASKS)
    for i in range(TEST_TASKS):
        tasks.new_task()
        params = adapt(model, start, *tasks.support, ADAPTATION)
        xq, yq = tasks.query
        out[i] = float((predict(model, params, xq).argmax(1) == yq).float().mean())
    return out


def pretrain(pool: Tensor, steps: int, batch: int, seed: int, progress: bool) -> Classifier:
    """The joint baseline: one classifier over every meta-train class, ``steps`` Adam steps."""
    torch.manual_seed(seed)
    model = Classifier(pool.shape[2], len(pool))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in progress_range(steps, progress, "fewshot joint baseline"):
        y = torch.randint(len(pool), (batch,), generator=gen)
        x = pool[y, torch.randint(pool.shape[1], (batch,), generator=gen)]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def fresh_head(model: Classifier, ways: int = WAYS) -> Params:
    """``model``'s parameters with its head replaced by a zero ``ways``-way head."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    hidden = model.head.in_features
    params.update({"head.weight": torch.zeros(ways, hidden), "head.bias": torch.zeros(ways)})
    return params


def _interval(acc: np.ndarray) -> float:
    """Half-width of the normal 95% confidence interval of the mean."""
    return 1.96 * float(acc.std(ddof=1)) / math.sqrt(len(acc))


def run(
    steps: int = DEFAULT_STEPS,
    method: str = "maml",
    seed: int = 0,
    progress: bool = True,
    shots: int = 5,
    images: Images | None = None,
) -> Result:
    """Meta-train on ``steps`` tasks; compare meta-test accuracy with the two baselines.

    Args:
        shots: support images per class, 1 or 5.
        images: the data (default: Fashion-MNIST if installed, else digits).
    """
    if method not in METHODS:
        raise ValueError(f"fewshot method must be one of {METHODS}, got {method!r}")
    if shots not in SHOTS:
        raise ValueError(f"fewshot shots must be one of {SHOTS}, got {shots}")
    start = time.perf_counter()
    images = images if images is not None else load_images()
    train_pool, test_pool = class_pools(images, seed)
    tasks = Tasks(train_pool, shots, seed)
    torch.manual_seed(seed)
    phi = Classifier(train_pool.shape[2], WAYS)
    random_init = {k: v.detach().clone() for k, v in phi.named_parameters()}
    meta_train(
        phi,
        tasks,
        method=method,
        adaptation=ADAPTATION,
        support=tasks.loader("support"),
        query=tasks.loader("query"),
        tasks_seen=steps,
        solver=proximal_gauss_newton(phi, lambda: tasks.support, ADAPTATION),
        progress=progress,
    )
    joint = pretrain(train_pool, steps, WAYS * (shots + QUERY), seed, progress)

    def scores(start: Params) -> np.ndarray:
        return accuracies(phi, start, Tasks(test_pool, shots, seed + 10_000))

    ours = scores(dict(phi.named_parameters()))
    base_random, base_joint = scores(random_init), scores(fresh_head(joint))
    result = Result(
        f"fewshot: {method}, {images.name}, {WAYS}-way {shots}-shot, {INNER_STEPS} SGD steps"
    )
    result.add("meta-test accuracy vs random init", base_random.mean(), ours.mean())
    result.add("meta-test accuracy vs joint pretraining", base_joint.mean(), ours.mean())
    result.notes.append(
        f"95% intervals over {TEST_TASKS} test tasks: random init +-{_interval(base_random):.3f},"
        f" joint +-{_interval(base_joint):.3f}, ours +-{_interval(ours):.3f}; paired gains "
        f"+-{_interval(ours - base_random):.3f} / +-{_interval(ours - base_joint):.3f}"
    )
    result.notes.append(
        f"{len(train_pool)} meta-train classes x {train_pool.shape[1]} images, "
        f"{len(test_pool)} meta-test classes x {test_pool.shape[1]} (disjoint base classes); "
        "the joint baseline fine-tunes the whole net from a zero head"
    )
    result.arrays.update(accuracies={"random init": base_random, "joint": base_joint, "ours": ours})
    result.extra.update(
        gain_interval_random=_interval(ours - base_random),
        gain_interval_joint=_interval(ours - base_joint),
    )
    result.seconds = time.perf_counter() - start
    return result
