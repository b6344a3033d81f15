"""The Betty-style bilevel programs of the whole-program benchmark, written once for both
libraries.

``build(root, ...)`` imports ``root.problems``, ``root.configs`` and ``root.engine`` by name, so
the same code builds a ziggurat program or a Betty 0.2.1 one. Nothing here imports ziggurat:
the Betty process runs it too. The workloads are described in ``workloads.py``.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("first_order", "darts", "sama", "neumann", "cg")
K = 5  # neumann_iterations and cg_iterations
NEUMANN_ALPHA = 0.1
SIZES: dict[str, tuple[int, int]] = {  # lower MLP d_in -> hidden -> 10
    "10k": (64, 128),
    "100k": (256, 384),
    "1M": (1024, 960),
    "5M": (2048, 2400),
}


def lower_config(configs: Any, method: str) -> Any:
    options: dict[str, dict[str, Any]] = {
        "first_order": {"type": "darts"},  # Betty: switched off on the upper, see upper_config
        "darts": {"type": "darts", "darts_alpha": 0.01},
        "sama": {"type": "sama"},
        "neumann": {"type": "neumann", "neumann_iterations": K, "neumann_alpha": NEUMANN_ALPHA},
        "cg": {"type": "cg", "cg_iterations": K, "cg_alpha": 1.0},
    }
    if method == "first_order" and configs.__name__.startswith("ziggurat"):
        return configs.Config(type="first_order")
    return configs.Config(**options[method])


def upper_config(configs: Any, method: str) -> Any:
    # Betty computes no term through the lower level when the upper's first_order is False
    if method == "first_order" and not configs.__name__.startswith("ziggurat"):
        return configs.Config(first_order=False)
    return configs.Config()


def lower_optimizer(method: str, params: Any, lr: float) -> torch.optim.Optimizer:
    # SAMA's preconditioner is Adam's; with SGD it is plain DARTS in both libraries
    if method == "sama":
        return torch.optim.Adam(params, lr=lr * 0.01)
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


class WeightNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, losses: Tensor) -> Tensor:
        return torch.sigmoid(self.net(losses.unsqueeze(1))).squeeze(1)


class FeatureDecay(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_wd = nn.Parameter(torch.full((features,), -3.0))

    def forward(self) -> Tensor:
        return self.log_wd.exp()


class Loader:
    """An endless iterator over random batches (the same in both libraries)."""

    def __init__(self, x: Tensor, y: Tensor, batch: int, seed: int) -> None:
        self.x, self.y, self.batch = x, y, batch
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.batch >= len(self.x):
            return self.x, self.y
        idx = torch.randint(0, len(self.x), (self.batch,), generator=self.gen)
        return self.x[idx], self.y[idx]


def data(workload: str, size: str) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """(x_train, y_train, x_meta, y_meta, batch)."""
    from sklearn.datasets import load_breast_cancer, load_digits

    rng = np.random.default_rng(0)
    if workload == "a":
        d = load_breast_cancer()
        x = (d.data - d.data.mean(0)) / d.data.std(0)
        idx = rng.permutation(len(x))
        tr, va = idx[:142], idx[142:341]
        xt = torch.tensor(x, dtype=torch.float32)
        yt = torch.tensor(d.target, dtype=torch.long)
        return xt[tr], yt[tr], xt[va], yt[va], 142
    if workload == "b":
        d = load_digits()
        x = torch.tensor(d.data / 16.0, dtype=torch.float32)
        y = d.target.copy()
        idx = rng.permutation(len(x))
        tr, meta = idx[:1078], idx[1078:1167]
        noisy = y[tr].copy()
        flip = rng.random(len(tr)) < 0.4
        noisy[flip] = (noisy[flip] + rng.integers(1, 10, flip.sum())) % 10
        yt = torch.tensor(y, dtype=torch.long)
        return x[tr], torch.tensor(noisy, dtype=torch.long), x[meta], yt[meta], 64
    d_in, _ = SIZES[size]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, d_in, generator=gen)
    y = (x @ torch.randn(d_in, 10, generator=gen)).argmax(1)
    noisy = torch.where(torch.rand(2048, generator=gen) < 0.4, (y + 3) % 10, y)
    return x[:1792], noisy[:1792], x[1792:], y[1792:], 128


def lower_model(workload: str, size: str) -> nn.Module:
    if workload == "a":
        return nn.Linear(30, 2)
    if workload == "b":
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    d_in, hidden = SIZES[size]
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def lower_loss(workload: str, out: Tensor, y: Tensor, lam_out: Tensor, w: Tensor) -> Tensor:
    """The lower objective given the upper module's output ``lam_out`` and first weight ``w``."""
    if workload == "a":
        return F.cross_entropy(out, y) + (lam_out * (w**2).sum(0)).sum()
    losses = F.cross_entropy(out, y, reduction="none")
    return (lam_out * losses).sum() / lam_out.sum()


def _upper_class(problems: Any, root: str, method: str, stamps: dict[str, list[float]]) -> Any:
    """The upper level of workloads a/b/d in ``root``'s classes, stamping each step's end."""

    class Upper(problems.ImplicitProblem):  # type: ignore[misc,name-defined]
        def training_step(self, batch: Any) -> Tensor:
            x, y = batch
            return F.cross_entropy(self.lower(x), y)

        def _stamped(self, step: Any, *args: Any, **kwargs: Any) -> Any:
            # stamped when the step returns, not at param_callback: a level that gets no
            # gradient (first_order, in ziggurat) takes no optimizer step, but still a step
            before = self.count
            out = step(*args, **kwargs)
            if self.count != before:
                stamps["upper"].append(time.perf_counter())
                if root == "ziggurat" and method in ("neumann", "cg"):  # products spent
                    stamps["products"].extend(float(i.iterations) for i in self.last_hop_info)
            return out

        # the entry point each library calls for an upper step (Betty: step_normal)
        if root == "betty":

            def step_normal(self, *args: Any, **kwargs: Any) -> Any:
                return self._stamped(super().step_normal, *args, **kwargs)

        else:

            def step(self, *args: Any, **kwargs: Any) -> Any:
                return self._stamped(super().step, *args, **kwargs)

    return Upper


def build(root: str, workload: str, method: str, size: str, stamps: dict[str, list[float]]) -> Any:
    problems = importlib.import_module(f"{root}.problems")
    configs = importlib.import_module(f"{root}.configs")
    engine_mod = importlib.import_module(f"{root}.engine")
    torch.manual_seed(0)
    xtr, ytr, xm, ym, batch = data(workload, size)
    model = lower_model(workload, size)
    upper_module: nn.Module = FeatureDecay(30) if workload == "a" else WeightNet()
    lr = 0.5 if workload == "a" else 0.1

    Upper = _upper_class(problems, root, method, stamps)

    class Lower(problems.ImplicitProblem):  # type: ignore[misc,name-defined]
        def training_step(self, batch: Any) -> Tensor:
            x, y = batch
            out = self.module(x)
            if workload == "a":
                lam_out = self.upper()
            else:
                lam_out = self.upper(F.cross_entropy(out, y, reduction="none").detach())
            first = next(iter(self.module.parameters()))
            return lower_loss(workload, out, y, lam_out, first)

        def param_callback(self) -> None:
            stamps["lower"].append(time.perf_counter())

    upper = Upper(
        name="upper",
        module=upper_module,
        optimizer=torch.optim.Adam(upper_module.parameters(), lr=1e-3),
        train_data_loader=Loader(xm, ym, batch, 1),
        config=upper_config(configs, method),
    )
    lower = Lower(
        name="lower",
        module=model,
        optimizer=lower_optimizer(method, model.parameters(), lr),
        train_data_loader=Loader(xtr, ytr, batch, 2),
        config=lower_config(configs, method),
    )
    return engine_mod, upper, lower, (xtr[:batch], ytr[:batch], xm[:batch], ym[:batch])
