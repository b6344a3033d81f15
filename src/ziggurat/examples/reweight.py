"""Meta-Weight-Net: learn to weight training samples from a small clean meta set.

A classifier trains on noisy (40% symmetric label noise) or long-tailed (``imbalance``) data
with per-sample weights ``w = V(loss)`` from a small MLP ``V``; ``V`` is trained so that the
classifier's loss on a small clean meta set falls (Shu et al. 2019, "Meta-Weight-Net"). The
weights are normalised per batch, ``sum(w * l) / sum(w)``. The baseline trains the same
classifier, same steps, without weights.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ziggurat.configs import Config
from ziggurat.datasets import Batches, Images, load_images
from ziggurat.examples.common import (
    HeldOutLoss,
    curve_every,
    endless,
    progress_range,
    run_bilevel,
)
from ziggurat.examples.data import as_tensors, long_tail, symmetric_noise
from ziggurat.examples.result import Result
from ziggurat.problems import ImplicitProblem

DEFAULT_STEPS = 600
METHODS = ("cg", "neumann", "darts", "sama", "auto")
_METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "cg": {"cg_iterations": 3},
    "neumann": {"neumann_iterations": 3, "neumann_alpha": 0.1},
    "auto": {"target_error": 1e-1},
}
NOISE = 0.4
TRAIN_SIZE, META_PER_CLASS, TEST_SIZE, BATCH = 4000, 10, 2000, 100


class WeightNet(nn.Module):
    """``V``: per-sample loss -> weight in (0, 1)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: Tensor) -> Tensor:
        return torch.sigmoid(self.net(losses.unsqueeze(1))).squeeze(1)


def mlp(features: int, classes: int, hidden: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


# --8<-- [start:levels]
class Classifier(ImplicitProblem):
    """Lower level: the weighted training loss, weights from the upper level."""

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        assert self.module is not None
        losses = F.cross_entropy(self.module(x), y, reduction="none")
        weights = self.reweight(losses.detach())
        return (weights * losses).sum() / weights.sum()


# --8<-- [end:levels]


def _accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def _data(
    images: Images, imbalance: float | None, seed: int
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor], np.ndarray]:
    """Train (x, y, flag), a class-balanced clean meta set and a test set.

    ``flag`` marks the samples of interest: flipped labels, or the rarer half of classes.
    """
    rng = np.random.default_rng(seed)
    classes = images.classes
    pool = rng.permutation(len(images.y))
    meta = np.concatenate([pool[images.y[pool] == c][:META_PER_CLASS] for c in range(classes)])
    rest = np.setdiff1d(pool, meta)
    if imbalance is None:
        train = rng.choice(rest, min(TRAIN_SIZE, len(rest)), replace=False)
        y, flag = symmetric_noise(images.y[train], NOISE, classes, seed)
    else:
        sub = rng.choice(rest, min(3 * TRAIN_SIZE, len(rest)), replace=False)
        train = sub[long_tail(images.y[sub], imbalance, classes, seed)]
        y = images.y[train]
        flag = y >= classes // 2
    test = rng.permutation(len(images.y_test))[:TEST_SIZE]
    xtr, ytr = as_tensors(images.x[train], y)
    return (
        (xtr, ytr),
        as_tensors(images.x[meta], images.y[meta]),
        as_tensors(images.x_test[test], images.y_test[test]),
        flag,
    )


def _baseline(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    steps: int,
    seed: int,
    progress: bool,
) -> tuple[nn.Module, list[tuple[int, float]]]:
    """Plain training; the net and its test-accuracy curve (the points of ``run_bilevel``)."""
    torch.manual_seed(seed)
    net = mlp(train[0].shape[1], 10)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    batches = endless(Batches(*train, batch_size=BATCH, seed=seed))
    curve = []
    for step in progress_range(steps, progress, "reweight baseline"):
        x, y = next(batches)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if (step + 1) % curve_every(steps) == 0:
            curve.append((step + 1, _accuracy(net, *test)))
    return net, curve


def run(
    steps: int = DEFAULT_STEPS,
    method: str = "cg",
    seed: int = 0,
    progress: bool = True,
    imbalance: float | None = None,
    images: Images | None = None,
) -> Result:
    """Train with Meta-Weight-Net for ``steps`` classifier steps; compare with plain training.

    Args:
        imbalance: ``None`` for 40% symmetric label noise; a ratio such as ``100`` for a
            long-tailed training set (largest class ``ratio`` times the smallest) instead.
        images: the data (default: Fashion-MNIST if installed, else digits).
    """
    if method not in METHODS:
        raise ValueError(f"reweight method must be one of {METHODS}, got {method!r}")
    if imbalance is not None and imbalance < 1:
        raise ValueError(f"imbalance must be >= 1, got {imbalance}")
    start = time.perf_counter()
    images = images if images is not None else load_images()
    train, meta, (xte, yte), flag = _data(images, imbalance, seed)
    features = train[0].shape[1]
    base, base_curve = _baseline(train, (xte, yte), steps, seed, progress)

    # --8<-- [start:program]
    torch.manual_seed(seed)
    net, wnet = mlp(features, 10), WeightNet()
    reweight = HeldOutLoss(  # the classifier's loss on the clean meta set
        name="reweight",
        module=wnet,
        optimizer=torch.optim.Adam(wnet.parameters(), lr=1e-3),
        train_data_loader=Batches(*meta),
    )
    classifier = Classifier(
        name="classifier",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
        train_data_loader=Batches(*train, batch_size=BATCH, seed=seed),
        config=Config(type=method, **_METHOD_OPTIONS.get(method, {})),
    )
    curve = run_bilevel(
        reweight,
        classifier,
        steps=steps,
        progress=progress,
        metric=lambda: _accuracy(net, xte, yte),
    )
    # --8<-- [end:program]

    setting = "40% symmetric noise" if imbalance is None else f"imbalance {imbalance:g}:1"
    result = Result(f"reweight: Meta-Weight-Net ({method}), {images.name}, {setting}")
    result.add("clean test accuracy", _accuracy(base, xte, yte), _accuracy(net, xte, yte))
    with torch.no_grad():
        w = wnet(F.cross_entropy(net(train[0]), train[1], reduction="none"))
    mask = torch.as_tensor(flag)
    marked, other = float(w[mask].mean()), float(w[~mask].mean())
    labels = ("noisy", "clean") if imbalance is None else ("rare-class", "common-class")
    result.notes.append(
        f"mean learned weight: {labels[0]} {marked:.3f}, {labels[1]} {other:.3f} "
        f"({len(train[1])} training samples, {len(meta[1])} meta samples)"
    )
    result.extra.update(weight_marked=marked, weight_other=other)
    result.arrays.update(
        weights=w.numpy(),
        marked=np.asarray(flag, dtype=bool),
        labels=labels,
        metric="clean test accuracy",
        curve=np.array(curve),
        baseline_curve=np.array(base_curve),
    )
    result.seconds = time.perf_counter() - start
    return result
