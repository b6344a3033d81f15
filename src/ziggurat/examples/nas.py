"""Differentiable architecture search (DARTS, Liu et al. 2019) over a small convolutional cell.

A cell is a small DAG: node 0 is the cell input, node ``j`` sums one operation per earlier node,
``n_j = sum_{i<j} o_ij(n_i)``, and the cell outputs the (batch-normalised) sum of nodes 1 and 2.
In the search every edge is a mixed operation, ``o_ij(x) = sum_k softmax(alpha_ij)_k op_k(x)``
over the candidates :data:`OPS`; the network (a stem convolution, two cells sharing ``alpha``
with a 2x2 max pool between them, global average pooling, a linear layer) is a bilevel program:

* ``arch`` (upper): the logits ``alpha``, trained on the validation split; its loss reads the
  lower level by name, ``self.network(x)``;
* ``network`` (lower): the supernet's weights, trained on the train split; its forward reads the
  mixing weights by name, ``self.arch()``, and its ``Config`` picks the hypergradient of
  ``alpha`` (see :func:`supernet_config`).

The discrete cell keeps the strongest operation of each edge, ``zero`` excluded (the paper also
keeps the two strongest incoming edges of a node; no node here has more than two). It is
retrained from scratch on the train split and compared on the test split with the mean of
:data:`RANDOM_CELLS` random cells of the same space (one non-zero operation per edge, uniformly),
each retrained with the same budget and seed.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ziggurat.configs import Config
from ziggurat.datasets import Batches, Images, load_images
from ziggurat.examples.cells import CELLS, OPS, Network, derive, edges, random_cell
from ziggurat.examples.common import endless, progress_range, run_bilevel
from ziggurat.examples.data import as_tensors
from ziggurat.examples.result import Result
from ziggurat.hypergradient import darts
from ziggurat.problems import ImplicitProblem

DEFAULT_STEPS = 200
METHODS = ("darts", "first_order", "darts_xi")
BATCH = 64
TRAIN_SIZE, VALID_SIZE, TEST_SIZE = 2000, 2000, 2000
RANDOM_CELLS = 4
LR_WEIGHTS, LR_ARCH, WEIGHT_DECAY, FD_RADIUS = 0.1, 0.1, 3e-4, 0.01


# --8<-- [start:levels]
class ArchLogits(nn.Module):
    """``alpha``: one logit per (edge, operation); ``forward()`` gives the mixing weights."""

    def __init__(self, n_edges: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(1e-3 * torch.randn(n_edges, len(OPS)))

    def forward(self) -> Tensor:
        return torch.softmax(self.alpha, dim=-1)


class Arch(ImplicitProblem):
    """Upper level: the supernet's loss on the validation split."""

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.network(x), y)


class Supernet(ImplicitProblem):
    """Lower level: the supernet's weights on the train split, mixed by the upper's weights."""

    def forward(self, x: Tensor) -> Tensor:
        assert self.module is not None
        return self.module(x, self.arch())

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)


# --8<-- [end:levels]


def _accuracy(net: nn.Module, weights: Tensor, x: Tensor, y: Tensor) -> float:
    net.eval()
    with torch.no_grad():
        return float((net(x, weights).argmax(1) == y).float().mean())


def _sgd(
    net: nn.Module, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.SGD(net.parameters(), lr=LR_WEIGHTS, momentum=0.9, weight_decay=WEIGHT_DECAY)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)


def retrain(
    ops: list[str],
    data: dict[str, tuple[Tensor, Tensor]],
    side: int,
    steps: int,
    seed: int,
    progress: bool,
) -> float:
    """Train the discrete architecture ``ops`` from scratch on the train split; test accuracy."""
    torch.manual_seed(seed)
    net = Network(side, [(o,) for o in ops])
    ones = torch.ones(len(ops), 1)
    opt, sched = _sgd(net, steps)
    batches = endless(Batches(*data["train"], batch_size=BATCH, seed=seed))
    for _ in progress_range(steps, progress, f"nas retrain {'/'.join(ops)}"):
        x, y = next(batches)
        opt.zero_grad()
        F.cross_entropy(net(x, ones), y).backward()
        opt.step()
        sched.step()
    return _accuracy(net, ones, *data["test"])


def _data(images: Images, seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    rng = np.random.default_rng(seed)
    pool = rng.permutation(len(images.y))
    n_train = min(TRAIN_SIZE, len(pool) // 2)
    train, valid = pool[:n_train], pool[n_train : n_train + VALID_SIZE]
    test = rng.permutation(len(images.y_test))[:TEST_SIZE]
    return {
        "train": as_tensors(images.x[train], images.y[train]),
        "valid": as_tensors(images.x[valid], images.y[valid]),
        "test": as_tensors(images.x_test[test], images.y_test[test]),
    }


def search(
    data: dict[str, tuple[Tensor, Tensor]],
    side: int,
    steps: int,
    method: str,
    seed: int,
    progress: bool,
) -> Tensor:
    """Run the bilevel search for ``steps`` weight steps; the learned ``alpha``."""
    torch.manual_seed(seed)
    supernet = Network(side, [OPS] * len(edges()))
    logits = ArchLogits(len(edges()))
    opt, sched = _sgd(supernet, steps)
    arch = Arch(
        name="arch",
        module=logits,
        optimizer=torch.optim.Adam(logits.parameters(), lr=LR_ARCH, betas=(0.5, 0.999)),
        train_data_loader=Batches(*data["valid"], batch_size=BATCH, seed=seed + 1),
    )
    network = Supernet(
        name="network",
        module=supernet,
        optimizer=opt,
        scheduler=sched,
        train_data_loader=Batches(*data["train"], batch_size=BATCH, seed=seed),
        config=supernet_config(method),
    )
    run_bilevel(arch, network, steps=steps, progress=progress)
    return logits.alpha.detach().clone()


# --8<-- [start:config]
def supernet_config(method: str) -> Config:
    """The supernet's ``Config``, which picks the hypergradient of ``alpha`` (as in Betty).

    * ``darts``: ``Config(type="darts")``, the second-order rule read as implicit
      differentiation with ``H^{-1} ~ I``: ``-(d^2 L_train / d alpha dw) grad_w L_val``, the
      mixed product by central differences of radius ``0.01 / ||grad_w L_val||``;
    * ``first_order``: ``Config(type="first_order")``, no term through the weights (the paper's
      first-order DARTS);
    * ``darts_xi``: the rule of Liu et al. (2019, sec. 2.3), the same term scaled by ``xi``,
      the weights' learning rate (``H^{-1} ~ xi I``): ``darts(radius, scale=xi)``.
    """
    if method == "darts_xi":
        return Config(hypergradient=darts(FD_RADIUS, scale=LR_WEIGHTS))
    if method == "first_order":
        return Config(type=method)
    return Config(type=method, darts_alpha=FD_RADIUS)


# --8<-- [end:config]


def run(
    steps: int = DEFAULT_STEPS,
    method: str = "darts",
    seed: int = 0,
    progress: bool = True,
    images: Images | None = None,
) -> Result:
    """Search for ``steps`` steps, retrain the derived cell and random cells for ``steps`` steps.

    Args:
        images: the data (default: Fashion-MNIST if installed, else digits).
    """
    if method not in METHODS:
        raise ValueError(f"nas method must be one of {METHODS}, got {method!r}")
    start = time.perf_counter()
    images = images if images is not None else load_images()
    side = math.isqrt(images.x.shape[1])
    data = _data(images, seed)
    alpha = search(data, side, steps, method, seed, progress)
    ours_ops = derive(alpha)
    ours = retrain(ours_ops, data, side, steps, seed, progress)
    gen = torch.Generator().manual_seed(seed)
    randoms = [random_cell(gen) for _ in range(RANDOM_CELLS)]
    scores = [retrain(ops, data, side, steps, seed, progress) for ops in randoms]

    result = Result(
        f"nas: DARTS ({method}), {images.name}, {CELLS} cells of {len(edges())} mixed edges "
        f"over {len(OPS)} operations"
    )
    baseline = float(np.mean(scores))
    result.add("test accuracy vs random cells (mean)", baseline, ours)
    weights = torch.softmax(alpha, dim=-1)
    chosen = [
        f"{i}->{j} {op} ({float(w[OPS.index(op)]):.2f})"
        for (i, j), op, w in zip(edges(), ours_ops, weights, strict=True)
    ]
    result.notes.append("derived cell (softmax weight): " + ", ".join(chosen))
    for ops, score in zip(randoms, scores, strict=True):
        result.notes.append(f"random cell {', '.join(ops)}: {score:.4f}")
    result.arrays.update(
        weights=weights.numpy(),
        ops=OPS,
        edges=edges(),
        derived=ours_ops,
        random_cells=randoms,
        random_scores=scores,
        ours=ours,
    )
    result.extra.update(
        ours=ours,
        random_mean=baseline,
        conv_edges=float(sum(op.endswith("conv_3x3") for op in ours_ops)),
    )
    result.seconds = time.perf_counter() - start
    return result
