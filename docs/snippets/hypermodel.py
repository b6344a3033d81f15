import torch
import torch.nn.functional as F

from ziggurat.datasets import breast_cancer
from ziggurat.hpo import HyperModel
from ziggurat.hypergradient import cg

d = breast_cancer(n_train=100)
model = HyperModel(
    torch.nn.Linear(30, 1).double(),
    hyper={"log_l2": torch.full((30,), -2.0, dtype=torch.float64)},  # one weight decay per feature
    loss=lambda out, y: F.binary_cross_entropy_with_logits(out.squeeze(-1), y),
    regularizer=lambda p, h: 0.5 * (h["log_l2"].exp() * p["weight"][0] ** 2).sum(),
)
history = model.fit(
    (d.X, d.y),
    (d.Xv, d.yv),
    outer_steps=30,
    inner_steps=5,
    hyper_lr=0.2,
    method=cg(50, 1e-10),
    inner_optimizer=lambda ps: torch.optim.LBFGS(ps, line_search_fn="strong_wolfe"),
)
print(history.val_loss[-1])  # 0.070, against 0.091 for the best single weight decay
