"""Regularised regression on real data: ridge (closed form) and logistic (Newton to machine
precision), one penalty weight per feature. The data come from :mod:`ziggurat.datasets`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._types import Params
from ..datasets import breast_cancer, diabetes


@dataclass
class RidgeHPO:
    """Ridge regression with one L2 weight per feature.

    ``f(w, lam) = 1/2 ||X w - y||^2 + 1/2 sum_i lam_i w_i^2``, so
    ``w*(lam) = (X^T X + diag lam)^{-1} X^T y``; ``F(w) = 1/2 ||X_v w - y_v||^2``.
    With ``H = X^T X + diag lam`` the best-response product is ``v^T dw*/dlam = -w* * H^{-1} v``.
    """

    X: Tensor
    y: Tensor
    Xv: Tensor
    yv: Tensor
    lam0: Tensor

    @classmethod
    def diabetes(cls, *, dtype: torch.dtype = torch.float64, n_train: int = 300) -> RidgeHPO:
        """The diabetes split of :func:`ziggurat.datasets.diabetes` (442 x 10, standardised)."""
        d = diabetes(n_train=n_train, dtype=dtype)
        lam0 = torch.linspace(10.0, 50.0, d.X.shape[1], dtype=dtype)
        return cls(d.X, d.y, d.Xv, d.yv, lam0)

    def inner(self, w: Params, lam: Params) -> Tensor:
        x = w["w"]
        return 0.5 * (self.X @ x - self.y).pow(2).sum() + 0.5 * (lam["lam"] * x * x).sum()

    def outer(self, w: Params, lam: Params) -> Tensor:
        return 0.5 * (self.Xv @ w["w"] - self.yv).pow(2).sum()

    def hessian(self, lam: Params) -> Tensor:
        return self.X.T @ self.X + torch.diag(lam["lam"])

    def w_star(self, lam: Params) -> Params:
        return {"w": torch.linalg.solve(self.hessian(lam), self.X.T @ self.y)}

    def point(self) -> tuple[Params, Params, Params]:
        lam = {"lam": self.lam0.clone()}
        w = self.w_star(lam)
        v = {"w": self.Xv.T @ (self.Xv @ w["w"] - self.yv)}
        return w, lam, v

    def exact_vjp(self, v: Params, lam: Params | None = None) -> Params:
        lam = {"lam": self.lam0} if lam is None else lam
        w = self.w_star(lam)["w"]
        return {"lam": -w * torch.linalg.solve(self.hessian(lam), v["w"])}

    def hypergradient(self, lam: Params) -> Params:
        w = self.w_star(lam)
        v = {"w": self.Xv.T @ (self.Xv @ w["w"] - self.yv)}
        return self.exact_vjp(v, lam)


@dataclass
class LogisticHPO:
    """Logistic regression with one log-scale L2 weight per feature, on real data.

    ``f(w, lam) = mean_i softplus-BCE(x_i^T w["w"] + w["b"], y_i) + 1/2 sum_j exp(lam_j) w_j^2``
    (the bias is not penalised) and ``F(w) =`` the mean validation cross-entropy. There is no
    closed form for ``w*(lam)``, but the problem is strictly convex and :meth:`w_star` solves it
    by Newton's method to machine precision, so :meth:`exact_vjp` is exact in float64.
    :meth:`batch_loss` is the same loss on a mini-batch ``(X_b, y_b)``, for stochastic methods.
    """

    X: Tensor
    y: Tensor
    Xv: Tensor
    yv: Tensor
    lam0: Tensor

    @classmethod
    def breast_cancer(
        cls, *, n_train: int = 200, seed: int = 0, log_l2: float = -4.0
    ) -> LogisticHPO:
        """The Wisconsin breast cancer split of :func:`ziggurat.datasets.breast_cancer`."""
        d = breast_cancer(n_train=n_train, seed=seed)
        return cls(d.X, d.y, d.Xv, d.yv, torch.full((d.X.shape[1],), log_l2, dtype=d.X.dtype))

    @staticmethod
    def _bce(X: Tensor, y: Tensor, w: Params) -> Tensor:
        logits = X @ w["w"] + w["b"]
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y)

    def batch_loss(self, w: Params, lam: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
        return self._bce(batch[0], batch[1], w) + 0.5 * (lam["lam"].exp() * w["w"] ** 2).sum()

    def inner(self, w: Params, lam: Params) -> Tensor:
        return self.batch_loss(w, lam, (self.X, self.y))

    def outer(self, w: Params, lam: Params) -> Tensor:
        return self._bce(self.Xv, self.yv, w)

    def _design(self) -> Tensor:
        """``Z = [X, 1]``: the parameters ``theta = (w, b)`` in one vector."""
        return torch.cat([self.X, torch.ones(self.X.shape[0], 1, dtype=self.X.dtype)], 1)

    def _penalty(self, lam: Params) -> Tensor:
        return torch.cat([lam["lam"].exp(), torch.zeros(1, dtype=self.X.dtype)])

    def _hessian(self, Z: Tensor, penalty: Tensor, theta: Tensor) -> Tensor:
        p = torch.sigmoid(Z @ theta)
        return (Z.T * (p * (1 - p))) @ Z / Z.shape[0] + torch.diag(penalty)

    def w_star(self, lam: Params, *, iterations: int = 50) -> Params:
        """Newton's method from zero; stops when the gradient norm is below 1e-13."""
        n, d = self.X.shape
        Z, penalty = self._design(), self._penalty(lam)
        theta = torch.zeros(d + 1, dtype=self.X.dtype)
        for _ in range(iterations):
            grad = Z.T @ (torch.sigmoid(Z @ theta) - self.y) / n + penalty * theta
            if float(grad.norm()) < 1e-13:
                break
            theta = theta - torch.linalg.solve(self._hessian(Z, penalty, theta), grad)
        return {"w": theta[:d], "b": theta[d]}

    def hessian(self, lam: Params) -> Tensor:
        """The Hessian of :meth:`inner` at ``w*(lam)``, in ``theta = (w, b)`` order."""
        w = self.w_star(lam)
        theta = torch.cat([w["w"], w["b"].reshape(1)])
        return self._hessian(self._design(), self._penalty(lam), theta)

    def exact_vjp(self, v: Params, lam: Params | None = None) -> Params:
        """``v^T dw*/dlam = -(exp(lam) * w*) * (H^{-1} v)_w`` at ``lam`` (default ``lam0``).

        Only the penalty reads ``lam``, and ``d^2 f / dlam_j dw_j = exp(lam_j) w_j`` is its one
        non-zero mixed derivative; the bias's row of ``H^{-1} v`` therefore does not enter.
        """
        lam = {"lam": self.lam0} if lam is None else lam
        d = self.X.shape[1]
        u = torch.linalg.solve(self.hessian(lam), torch.cat([v["w"], v["b"].reshape(1)]))
        return {"lam": -lam["lam"].exp() * self.w_star(lam)["w"] * u[:d]}

    def point(self) -> tuple[Params, Params, Params]:
        """``(w*(lam0), lam0, v = dF/dw)``."""
        lam = {"lam": self.lam0.clone()}
        w = self.w_star(lam)
        w_ = {k: t.clone().requires_grad_(True) for k, t in w.items()}
        grads = torch.autograd.grad(self.outer(w_, lam), list(w_.values()))
        return w, lam, dict(zip(w, grads, strict=True))
