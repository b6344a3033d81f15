"""The two seed programs, written as Betty's users write them (only the import root changed)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem


def split(x, y, seed, fractions):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    out, start = [], 0
    for f in fractions:
        n = int(f * len(x))
        out.append((x[idx[start : start + n]], y[idx[start : start + n]]))
        start += n
    out.append((x[idx[start:]], y[idx[start:]]))
    return out


def tensors(x, y):
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


# ------------------------------------------------------------------ HPO + classifier
class WeightDecay(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_wd = nn.Parameter(torch.tensor(-2.0))

    def forward(self):
        return self.log_wd.exp()


def test_hpo_seed_program_learns_weight_decay_on_breast_cancer() -> None:
    torch.manual_seed(0)
    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    (xtr, ytr), (xva, yva), (xte, yte) = split(x, data.target, 0, [0.25, 0.35])
    xtr, ytr = tensors(xtr, ytr)
    xva, yva = tensors(xva, yva)
    xte, yte = tensors(xte, yte)
    train_loader = DataLoader(TensorDataset(xtr, ytr), batch_size=len(xtr))
    val_loader = DataLoader(TensorDataset(xva, yva), batch_size=len(xva))

    class HPO(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.classifier(x), y)

    class Classifier(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            loss = F.cross_entropy(self.module(x), y)
            wd = self.hpo()
            return loss + wd * sum(p.pow(2).sum() for p in self.module.parameters())

    wd_module = WeightDecay()
    net = nn.Linear(30, 2)
    hpo = HPO(
        name="hpo",
        module=wd_module,
        optimizer=torch.optim.Adam(wd_module.parameters(), lr=0.05),
        train_data_loader=val_loader,
        config=Config(type="darts", log_step=100),
    )
    cls = Classifier(
        name="classifier",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.5),
        train_data_loader=train_loader,
        config=Config(type="darts", unroll_steps=1),
    )

    seen: list[dict] = []

    class HPOEngine(Engine):
        @torch.no_grad()
        def validation(self):
            logits = self.classifier(xte)
            loss = F.cross_entropy(logits, yte)
            acc = (logits.argmax(1) == yte).float().mean()
            seen.append({"loss": float(loss), "acc": float(acc)})
            return {"loss": loss, "acc": acc}

    engine = HPOEngine(
        problems=[hpo, cls],
        dependencies={"u2l": {hpo: [cls]}, "l2u": {cls: [hpo]}},
        config=EngineConfig(train_iters=300, valid_step=100),
    )
    engine.run()
    assert len(seen) == 3 and engine.validation_history[-1] == seen[-1]
    # the upper level moved: starting at wd = e^-2 = 0.135, which over-regularises this
    # 142-sample problem, the validation loss pushes the weight decay down
    assert float(wd_module().detach()) < 0.135 * 0.7
    assert seen[-1]["acc"] > 0.93
    assert engine.hpo is hpo and hpo.classifier is cls


# ------------------------------------------------------------------ Meta-Weight-Net
class WeightNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, losses):
        return torch.sigmoid(self.net(losses.unsqueeze(1))).squeeze(1)


def noisy_digits(seed: int = 0, noise: float = 0.4):
    data = load_digits()
    x = data.data / 16.0
    (xtr, ytr), (xmeta, ymeta), (xte, yte) = split(x, data.target, seed, [0.6, 0.05])
    rng = np.random.default_rng(seed)
    flip = rng.random(len(ytr)) < noise
    noisy = ytr.copy()
    noisy[flip] = (ytr[flip] + rng.integers(1, 10, flip.sum())) % 10  # symmetric, always wrong
    return (xtr, noisy, flip), (xmeta, ymeta), (xte, yte)


def mlp():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def accuracy(net, x, y) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def test_meta_weight_net_beats_baseline_and_downweights_noise() -> None:
    (xtr, ytr, flip), (xm, ym), (xte, yte) = noisy_digits()
    xtr_t, ytr_t = tensors(xtr, ytr)
    idx = torch.arange(len(xtr))
    xm_t, ym_t = tensors(xm, ym)
    xte_t, yte_t = tensors(xte, yte)
    steps = 600

    # baseline: plain training on the noisy labels
    torch.manual_seed(0)
    base = mlp()
    opt = torch.optim.SGD(base.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        b = torch.randint(0, len(xtr), (64,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(base(xtr_t[b]), ytr_t[b]).backward()
        opt.step()
    base_acc = accuracy(base, xte_t, yte_t)

    torch.manual_seed(0)
    train_loader = DataLoader(
        TensorDataset(xtr_t, ytr_t, idx),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    meta_loader = DataLoader(TensorDataset(xm_t, ym_t), batch_size=len(xm), shuffle=True)

    class Reweight(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.classifier(x), y)

    class Classifier(ImplicitProblem):
        def training_step(self, batch):
            x, y, _ = batch
            losses = F.cross_entropy(self.module(x), y, reduction="none")
            weights = self.reweight(losses.detach())
            # normalised per batch, as in Shu et al.'s Meta-Weight-Net
            return (weights * losses).sum() / weights.sum()

    net, wnet = mlp(), WeightNet()
    reweight = Reweight(
        name="reweight",
        module=wnet,
        optimizer=torch.optim.Adam(wnet.parameters(), lr=1e-3),
        train_data_loader=meta_loader,
        config=Config(type="darts"),
    )
    classifier = Classifier(
        name="classifier",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
        train_data_loader=train_loader,
        config=Config(type="cg", cg_iterations=3),
    )
    engine = Engine(
        problems=[reweight, classifier],
        dependencies={"u2l": {reweight: [classifier]}, "l2u": {classifier: [reweight]}},
        config=EngineConfig(train_iters=steps, valid_step=0),
    )
    engine.run()
    mwn_acc = accuracy(net, xte_t, yte_t)
    with torch.no_grad():
        losses = F.cross_entropy(net(xtr_t), ytr_t, reduction="none")
        w = wnet(losses)
    flip_t = torch.tensor(flip)
    noisy_w, clean_w = float(w[flip_t].mean()), float(w[~flip_t].mean())
    print(f"baseline {base_acc:.3f} mwn {mwn_acc:.3f} weights {noisy_w:.3f} / {clean_w:.3f}")
    assert mwn_acc > base_acc + 0.03
    assert noisy_w < clean_w - 0.1
