"""A bilevel problem whose lower level is a transformer: data reweighting through attention.

The lower level is a one-layer transformer classifier (``nn.TransformerEncoderLayer``, which
calls ``scaled_dot_product_attention``; its fused CPU kernel has no double backward) trained
on per-example weighted cross-entropy with an L2 term that makes it strongly convex near its
minimum; the upper level sets the weights. There is no closed form, but the problem is small
enough for the exact answer by a dense solve: :meth:`TransformerReweighting.exact_vjp` builds
the Hessian of ``f`` in ``(w, lam)`` row by row with plain ``torch.autograd`` under the math
kernel of attention, independently of ``ziggurat``'s own products.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._types import Params


class TinyTransformer(nn.Module):
    """One encoder layer over a sequence of tokens, mean-pooled into a linear head."""

    def __init__(self, d_model: int, heads: int, feedforward: int, classes: int) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            d_model, heads, feedforward, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x).mean(1))


@dataclass
class TransformerReweighting:
    """Data reweighting with a one-layer transformer classifier as the lower level.

    ``f(w, lam) = mean_i sigmoid(lam_i) CE(g(x_i; w), y_i) + decay/2 ||w||^2`` on ``n``
    training sequences, ``F(w) = mean CE(g(x_j; w), y_j)`` on a validation set, with ``g`` a
    :class:`TinyTransformer` (dropout 0). Labels come from a random teacher of the same kind,
    a quarter of the training labels flipped. :meth:`point` minimises ``f`` at ``lam0`` to a
    gradient norm below ``1e-12`` (L-BFGS from the seeded initialisation), where ``decay``
    makes the Hessian positive definite (:meth:`spectrum`).
    """

    net: TinyTransformer
    x: Tensor
    y: Tensor
    xv: Tensor
    yv: Tensor
    lam0: Tensor
    decay: float
    _w_star: Params | None = field(default=None, repr=False)

    @classmethod
    def make(
        cls,
        *,
        n: int = 24,
        n_valid: int = 16,
        tokens: int = 5,
        d_model: int = 6,
        heads: int = 2,
        feedforward: int = 8,
        classes: int = 3,
        decay: float = 0.3,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> TransformerReweighting:
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = TinyTransformer(d_model, heads, feedforward, classes).to(dtype)
            teacher = TinyTransformer(d_model, heads, feedforward, classes).to(dtype)
        x = torch.randn(n + n_valid, tokens, d_model, generator=gen, dtype=dtype)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            labels = teacher(x).argmax(1)
        flip = torch.rand(n, generator=gen) < 0.25
        shift = torch.randint(1, classes, (n,), generator=gen)
        y = torch.where(flip, (labels[:n] + shift) % classes, labels[:n])
        lam0 = torch.linspace(-1.0, 1.0, n, dtype=dtype)
        return cls(net, x[:n], y, x[n:], labels[n:], lam0, decay)

    @property
    def names(self) -> list[str]:
        return [k for k, _ in self.net.named_parameters()]

    def logits(self, w: Params, x: Tensor) -> Tensor:
        return torch.func.functional_call(self.net, w, (x,))

    def lower_loss(self, logits: Tensor, weight_logits: Tensor, params: Iterable[Tensor]) -> Tensor:
        """``f`` from the model's training logits, the weights' logits ``lam`` and the model's
        parameters: ``mean_i sigmoid(lam_i) CE_i + decay/2 ||w||^2``."""
        losses = F.cross_entropy(logits, self.y, reduction="none")
        decay = 0.5 * self.decay * sum((p * p).sum() for p in params)
        return (torch.sigmoid(weight_logits) * losses).mean() + decay

    def inner(self, w: Params, lam: Params) -> Tensor:
        return self.lower_loss(self.logits(w, self.x), lam["lam"], w.values())

    def outer(self, w: Params, lam: Params) -> Tensor:
        return F.cross_entropy(self.logits(w, self.xv), self.yv)

    def w_star(self) -> Params:
        """The minimiser of ``f(., lam0)``, by L-BFGS to a gradient norm below ``1e-12``."""
        if self._w_star is None:
            w = {k: p.detach().clone().requires_grad_(True) for k, p in self.net.named_parameters()}
            opt = torch.optim.LBFGS(
                list(w.values()),
                lr=1.0,
                max_iter=5000,
                tolerance_grad=1e-13,
                tolerance_change=0.0,
                history_size=50,
                line_search_fn="strong_wolfe",
            )
            lam = {"lam": self.lam0}

            def closure() -> Tensor:
                opt.zero_grad()
                loss = self.inner(w, lam)
                loss.backward()
                return loss

            opt.step(closure)
            self._w_star = {k: t.detach() for k, t in w.items()}
        return {k: t.clone() for k, t in self._w_star.items()}

    def point(self) -> tuple[Params, Params, Params]:
        """``(w*(lam0), lam0, v = dF/dw)``."""
        w, lam = self.w_star(), {"lam": self.lam0.clone()}
        w_ = {k: t.clone().requires_grad_(True) for k, t in w.items()}
        grads = torch.autograd.grad(self.outer(w_, lam), list(w_.values()))
        return w, lam, dict(zip(w, grads, strict=True))

    def hessian(self, w: Params, lam: Params) -> Tensor:
        """The dense Hessian of ``f`` in ``(w, lam)``, ``w`` first in :attr:`names` order, by
        one backward pass per row under the math kernel of attention."""
        sizes = [t.numel() for t in w.values()]
        n_w = sum(sizes)

        def f(flat: Tensor) -> Tensor:
            parts = flat[:n_w].split(sizes)
            ws = {k: p.view_as(t) for (k, t), p in zip(w.items(), parts, strict=True)}
            return self.inner(ws, {"lam": flat[n_w:]})

        flat = torch.cat([*(t.reshape(-1) for t in w.values()), lam["lam"].reshape(-1)])
        with sdpa_kernel(SDPBackend.MATH):
            return torch.autograd.functional.hessian(f, flat.detach())

    def exact_vjp(self, v: Params, w: Params | None = None, lam: Params | None = None) -> Params:
        """``v^T dw*/dlam = -(d^2 f/dlam dw) H^{-1} v`` at ``(w, lam)`` (default: the
        :meth:`point`), by a dense solve: the implicit-function formula, evaluated at
        ``w`` whether or not it is stationary (as every implicit method is)."""
        w = self.w_star() if w is None else w
        lam = {"lam": self.lam0} if lam is None else lam
        full = self.hessian(w, lam)
        n_w = sum(t.numel() for t in w.values())
        rhs = torch.cat([v[k].reshape(-1) for k in w])
        x = torch.linalg.solve(full[:n_w, :n_w], rhs)
        return {"lam": -(full[n_w:, :n_w] @ x)}

    def spectrum(self) -> tuple[float, float]:
        """The smallest and largest eigenvalue of ``d^2 f/dw^2`` at the :meth:`point`."""
        w = self.w_star()
        n_w = sum(t.numel() for t in w.values())
        eig = torch.linalg.eigvalsh(self.hessian(w, {"lam": self.lam0})[:n_w, :n_w])
        return float(eig.min()), float(eig.max())
