"""Learning by ignoring: a three-level program that learns which source samples to pretrain on.

A classifier is pretrained on a large *source* set, then finetuned on a small *target* set
(the proximal loss ``CE + PROX/2 ||w - w_pre||^2`` keeps it near the pretrained weights).
Part of the source set (``CORRUPT``) has its labels systematically shifted, ``y -> y + 1 mod
10``, so it teaches a wrong mapping. Learning by ignoring (Ban and Xie 2021) adds a third
level that learns one weight per source sample, ``sigmoid(a_i)``, from the finetuned model's
loss on a target validation set:

* ``pretrain``: ``sum_i s(a_i) l_i / sum_i s(a_i)`` on the source;
* ``finetune``: the proximal target loss, which reads the pretrained weights;
* ``reweight`` (top): the finetuned model's target validation loss.

The hypergradient of ``reweight`` is the chain ``dL_val/dw_fine . dw_fine*/dw_pre .
dw_pre*/da``. In Betty's notation: ``u2l = {reweight: [pretrain]}`` (the pretraining loss
reads the weights ``a``) and ``l2u = {pretrain: [finetune], finetune: [reweight]}``, which gives
the path ``[reweight, finetune, pretrain, reweight]``. Each hop is linearised by its lower
level's own method: conjugate gradient on ``finetune``, ``method`` on ``pretrain``
(``neumann`` by default). The baseline runs the same two lower levels with uniform weights.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ziggurat.configs import Config
from ziggurat.datasets import Batches, Images, digits
from ziggurat.examples.common import MetricEngine, curve_config
from ziggurat.examples.data import as_tensors
from ziggurat.examples.result import Result
from ziggurat.hypergradient import cg, from_name
from ziggurat.problems import ImplicitProblem

DEFAULT_STEPS = 600
METHODS = ("neumann", "darts", "cg", "auto")
CORRUPT, SOURCE_SIZE, TARGET_PER_CLASS, BATCH, PROX = 0.6, 1000, 3, 100, 1.0
LR_WEIGHTS = 0.1


def mlp(features: int, classes: int, hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class SampleLogits(nn.Module):
    """One logit per source sample; ``forward(idx)`` gives their weights in (0, 1)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n))

    def forward(self, idx: Tensor) -> Tensor:
        return torch.sigmoid(self.logits[idx])


# --8<-- [start:levels]
class Reweight(ImplicitProblem):
    """Upper level: the finetuned model's loss on the target validation set."""

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.finetune(x), y)


class Finetune(ImplicitProblem):
    """Finetuning: target loss plus a proximal pull towards the pretrained weights."""

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        assert self.module is not None and self.pretrain.module is not None
        prox = sum(
            (w - p).pow(2).sum()
            for w, p in zip(
                self.module.parameters(), self.pretrain.module.parameters(), strict=True
            )
        )
        return F.cross_entropy(self.module(x), y) + 0.5 * PROX * prox


class Pretrain(ImplicitProblem):
    """Pretraining: the source loss, each sample weighted by the upper level."""

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        x, y, idx = batch
        assert self.module is not None
        losses = F.cross_entropy(self.module(x), y, reduction="none")
        weights = self.reweight(idx)
        return (weights * losses).sum() / weights.sum()


class UniformPretrain(Pretrain):
    """The baseline's lowest level: every source sample counts the same."""

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        x, y, _ = batch
        assert self.module is not None
        return F.cross_entropy(self.module(x), y)


# --8<-- [end:levels]


def _data(images: Images, seed: int) -> dict[str, tuple[Tensor, ...]]:
    """Source (x, y, index) with shifted labels on a ``CORRUPT`` fraction, plus the marks;
    a class-balanced target train and validation set; the test set."""
    rng = np.random.default_rng(seed)
    pool = rng.permutation(len(images.y))
    target = [pool[images.y[pool] == c][: 2 * TARGET_PER_CLASS] for c in range(10)]
    train = np.concatenate([t[:TARGET_PER_CLASS] for t in target])
    valid = np.concatenate([t[TARGET_PER_CLASS:] for t in target])
    source = np.setdiff1d(pool, np.concatenate(target))
    source = rng.permutation(source)[:SOURCE_SIZE]
    shifted = rng.random(len(source)) < CORRUPT
    y = np.where(shifted, (images.y[source] + 1) % 10, images.y[source])
    xs, ys = as_tensors(images.x[source], y)
    return {
        "source": (xs, ys, torch.arange(len(source))),
        "shifted": (torch.as_tensor(shifted),),
        "train": as_tensors(images.x[train], images.y[train]),
        "valid": as_tensors(images.x[valid], images.y[valid]),
        "test": as_tensors(images.x_test, images.y_test),
    }


def _accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def _lower_levels(
    data: dict[str, tuple[Tensor, ...]], method: str, seed: int, uniform: bool
) -> tuple[Pretrain, Finetune]:
    torch.manual_seed(seed)
    features = data["source"][0].shape[1]
    pre_net, fine_net = mlp(features, 10), mlp(features, 10)
    kind = UniformPretrain if uniform else Pretrain
    pretrain = kind(
        name="pretrain",
        module=pre_net,
        optimizer=torch.optim.SGD(pre_net.parameters(), lr=0.1, momentum=0.9),
        train_data_loader=Batches(*data["source"], batch_size=BATCH, seed=seed),
        config=Config(hypergradient=from_name(method)),
    )
    finetune = Finetune(
        name="finetune",
        module=fine_net,
        optimizer=torch.optim.SGD(fine_net.parameters(), lr=0.1, momentum=0.9),
        train_data_loader=Batches(*data["train"]),
        config=Config(hypergradient=cg(3)),
    )
    return pretrain, finetune


def run(
    steps: int = DEFAULT_STEPS,
    method: str = "neumann",
    seed: int = 0,
    progress: bool = True,
    images: Images | None = None,
) -> Result:
    """Run both programs for ``steps`` pretraining steps; compare target test accuracy.

    Args:
        method: the pretrain level's hypergradient (the finetune level always uses CG).
        images: the data (default: scikit-learn digits).
    """
    if method not in METHODS:
        raise ValueError(f"three_level method must be one of {METHODS}, got {method!r}")
    start = time.perf_counter()
    data = _data(images if images is not None else digits(seed), seed)
    config = curve_config(steps, progress)
    xte, yte = data["test"]

    pretrain, finetune = _lower_levels(data, method, seed, uniform=True)
    base = finetune.module
    baseline = MetricEngine(
        problems=[finetune, pretrain],
        dependencies={"l2u": {pretrain: [finetune]}},
        config=config,
        metric=lambda: _accuracy(base, xte, yte),
    )
    baseline.run()

    pretrain, finetune = _lower_levels(data, method, seed, uniform=False)
    # --8<-- [start:program]
    logits = SampleLogits(len(data["source"][1]))
    reweight = Reweight(
        name="reweight",
        module=logits,
        optimizer=torch.optim.Adam(logits.parameters(), lr=LR_WEIGHTS),
        train_data_loader=Batches(*data["valid"]),
    )
    fine_net = finetune.module
    ours = MetricEngine(
        problems=[reweight, finetune, pretrain],
        dependencies={
            "u2l": {reweight: [pretrain]},
            "l2u": {pretrain: [finetune], finetune: [reweight]},
        },
        config=config,
        metric=lambda: _accuracy(fine_net, xte, yte),
    )
    ours.run()
    # --8<-- [end:program]
    result = Result(
        f"three_level: learning by ignoring ({method} on pretrain, cg on finetune), "
        f"{int(CORRUPT * 100)}% shifted source labels"
    )
    result.add("target test accuracy", _accuracy(base, xte, yte), _accuracy(fine_net, xte, yte))
    with torch.no_grad():
        w = logits(data["source"][2])
    shifted = data["shifted"][0]
    marked, other = float(w[shifted].mean()), float(w[~shifted].mean())
    result.notes.append(
        f"mean learned source weight: shifted {marked:.3f}, correct {other:.3f} "
        f"({len(shifted)} source, {len(data['train'][1])} target training samples)"
    )
    result.extra.update(weight_marked=marked, weight_other=other)
    result.arrays.update(
        weights=w.numpy(),
        marked=shifted.numpy(),
        labels=("shifted", "correct"),
        metric="target test accuracy",
        curve=np.array(ours.curve),
        baseline_curve=np.array(baseline.curve),
    )
    result.seconds = time.perf_counter() - start
    return result
