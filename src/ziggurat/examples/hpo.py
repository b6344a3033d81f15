"""Per-feature weight decay for logistic regression, learned by implicit differentiation.

The lower level fits a logistic regression on breast-cancer training data with penalty
``sum_j exp(h_j) ||W[:, j]||^2``; the upper level tunes the 30 log weight decays ``h`` to
minimise the validation loss, with the hypergradient from the implicit function theorem
solved by conjugate gradient (Pedregosa 2016; Lorraine et al. 2020). The baseline is the best
single weight decay from a grid search on the same validation split.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ziggurat.configs import Config
from ziggurat.datasets import Batches, sklearn_arrays
from ziggurat.examples.common import HeldOutLoss, run_bilevel
from ziggurat.examples.data import as_tensors, split
from ziggurat.examples.result import Result
from ziggurat.hypergradient import Method, from_name
from ziggurat.problems import ImplicitProblem

DEFAULT_STEPS = 40
METHODS = ("cg", "neumann", "darts", "exact")
GRID = tuple(float(v) for v in np.logspace(-4, 1, 11))


def _data(seed: int) -> tuple[tuple[Tensor, Tensor], ...]:
    data, target = sklearn_arrays("breast_cancer")
    x = (data - data.mean(0)) / data.std(0)
    n = len(x)
    tr, va, te = split(n, [int(0.25 * n), int(0.35 * n), n - int(0.25 * n) - int(0.35 * n)], seed)
    return tuple(as_tensors(x[i], target[i]) for i in (tr, va, te))


def _method(name: str) -> Method:
    options: dict[str, dict[str, Any]] = {
        "cg": {"maxiter": 20},
        "neumann": {"iterations": 20, "alpha": 0.5},
    }
    return from_name(name, **options.get(name, {}))


def _penalty(weight: Tensor, decay: Tensor) -> Tensor:
    return (decay * weight.pow(2).sum(0)).sum()


def fit(x: Tensor, y: Tensor, decay: Tensor, iters: int = 100) -> nn.Linear:
    """A logistic regression fitted by L-BFGS with the per-feature penalty ``decay``."""
    model = nn.Linear(x.shape[1], 2)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + _penalty(model.weight, decay)
        loss.backward()
        return loss

    opt.step(closure)
    return model


def _scores(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


# --8<-- [start:levels]
class LogDecay(nn.Module):
    """One log weight decay per input feature."""

    def __init__(self, features: int, init: float) -> None:
        super().__init__()
        self.log_decay = nn.Parameter(torch.full((features,), float(np.log(init))))

    def forward(self) -> Tensor:
        return self.log_decay.exp()


class Classifier(ImplicitProblem):
    """Lower level: training cross-entropy plus the per-feature penalty from the upper level."""

    def training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        assert isinstance(self.module, nn.Linear)
        loss = F.cross_entropy(self.module(x), y)
        return loss + _penalty(self.module.weight, self.decay())


# --8<-- [end:levels]


def run(
    steps: int = DEFAULT_STEPS, method: str = "cg", seed: int = 0, progress: bool = True
) -> Result:
    """Learn per-feature weight decay for ``steps`` upper steps; compare with a grid search.

    ``method`` names the hypergradient of the lower level (one of :data:`METHODS`).
    """
    if method not in METHODS:
        raise ValueError(f"hpo method must be one of {METHODS}, got {method!r}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    (xtr, ytr), (xva, yva), (xte, yte) = _data(seed)
    features = xtr.shape[1]

    # baseline: best single weight decay on the validation split
    fits = {wd: fit(xtr, ytr, torch.full((features,), wd)) for wd in GRID}
    best_wd = min(GRID, key=lambda wd: _scores(fits[wd], xva, yva)[0])
    baseline = fits[best_wd]

    # --8<-- [start:program]
    unroll = 50
    decay = LogDecay(features, init=best_wd)  # refine the grid's answer per feature
    net = nn.Linear(features, 2)
    upper = HeldOutLoss(  # the validation cross-entropy of the classifier
        name="decay",
        module=decay,
        optimizer=torch.optim.Adam(decay.parameters(), lr=0.05),
        train_data_loader=Batches(xva, yva),
    )
    lower = Classifier(
        name="classifier",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.5),
        train_data_loader=Batches(xtr, ytr),
        config=Config(hypergradient=_method(method), unroll_steps=unroll),
    )
    run_bilevel(upper, lower, steps=steps * unroll, progress=progress)
    # --8<-- [end:program]
    learned = decay().detach()
    ours = fit(xtr, ytr, learned)  # refit to convergence with the learned decays

    result = Result(f"hpo: per-feature weight decay ({method}) vs grid search, breast_cancer")
    for split_name, (x, y) in (("validation", (xva, yva)), ("test", (xte, yte))):
        b_loss, b_acc = _scores(baseline, x, y)
        o_loss, o_acc = _scores(ours, x, y)
        result.add(f"{split_name} loss", b_loss, o_loss, higher_is_better=False)
        result.add(f"{split_name} accuracy", b_acc, o_acc)
    result.arrays.update(
        grid=np.array(GRID),
        grid_validation_loss=np.array([_scores(fits[wd], xva, yva)[0] for wd in GRID]),
        best_decay=best_wd,
        learned_decays=learned.numpy(),
        learned_validation_loss=_scores(ours, xva, yva)[0],
    )
    result.notes.append(
        f"grid best weight decay {best_wd:.3g}; learned decays range "
        f"{float(learned.min()):.3g} .. {float(learned.max()):.3g}"
    )
    result.seconds = time.perf_counter() - start
    return result
