"""Bilevel and trilevel problems with closed-form answers.

They back the test suite, ``ziggurat check`` and the benchmarks. Every problem is built in
float64 by default and exposes its pure losses, a point, and the exact best-response products;
:class:`BernoulliReward` instead has a closed-form expected gradient, for score-function
estimators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._types import Params


def random_spd(n: int, low: float, high: float, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    """A random symmetric matrix with eigenvalues spread evenly over ``[low, high]``."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=dtype))
    eig = torch.linspace(low, high, n, dtype=dtype)
    return (q * eig) @ q.T


@dataclass
class QuadraticBilevel:
    """``f(w, lam) = 1/2 w^T A w - w^T B lam``;  ``F(w, lam) = 1/2 ||w - t||^2 + c/2 ||lam||^2``.

    ``w*(lam) = A^{-1} B lam``, so ``v^T dw*/dlam = B^T A^{-1} v`` and
    ``dF/dlam = B^T A^{-1} (w* - t) + c lam``.
    """

    A: Tensor
    B: Tensor
    t: Tensor
    c: float
    lam0: Tensor

    @classmethod
    def make(
        cls,
        n: int = 8,
        m: int = 5,
        *,
        seed: int = 0,
        cond: float = 10.0,
        dtype: torch.dtype = torch.float64,
    ) -> QuadraticBilevel:
        g = torch.Generator().manual_seed(seed)
        A = random_spd(n, 1.0, cond, g, dtype)
        B = torch.randn(n, m, generator=g, dtype=dtype)
        t = torch.randn(n, generator=g, dtype=dtype)
        lam0 = torch.randn(m, generator=g, dtype=dtype)
        return cls(A, B, t, 0.1, lam0)

    def inner(self, w: Params, lam: Params) -> Tensor:
        x = w["w"]
        return 0.5 * x @ self.A @ x - x @ self.B @ lam["lam"]

    def outer(self, w: Params, lam: Params) -> Tensor:
        return 0.5 * (w["w"] - self.t).pow(2).sum() + 0.5 * self.c * lam["lam"].pow(2).sum()

    def w_star(self, lam: Params) -> Params:
        return {"w": torch.linalg.solve(self.A, self.B @ lam["lam"])}

    def point(self) -> tuple[Params, Params, Params]:
        """``(w*(lam0), lam0, v = dF/dw)`` at the optimum."""
        lam = {"lam": self.lam0.clone()}
        w = self.w_star(lam)
        return w, lam, {"w": w["w"] - self.t}

    def hessian(self) -> Tensor:
        return self.A

    def exact_vjp(self, v: Params) -> Params:
        return {"lam": self.B.T @ torch.linalg.solve(self.A, v["w"])}

    def hypergradient(self, lam: Params) -> Params:
        w = self.w_star(lam)["w"]
        g = self.B.T @ torch.linalg.solve(self.A, w - self.t) + self.c * lam["lam"]
        return {"lam": g}


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
        from .datasets import diabetes

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
class QuadraticTrilevel:
    """A three-level chain with closed forms: lower ``z``, middle ``y``, upper ``x``.

    * lower:  ``f1(z, y) = 1/2 z^T A1 z - z^T B1 y``  so ``z*(y) = A1^{-1} B1 y = J1 y``;
    * middle: ``f2(y, x; z) = 1/2 y^T A2 y - y^T B2 x + g/2 ||z - C y||^2``;
    * upper:  ``F(x, y, z) = 1/2 ||y - t||^2 + 1/2 ||z - s||^2 + c/2 ||x||^2``.

    Two derivatives of the upper loss are exposed:

    * :meth:`hop_hypergradient`, the path fold's answer: each hop's best-response Jacobian from the
      implicit function theorem on that level's own loss with the others held fixed, so the middle
      Hessian is ``H2 = A2 + g C^T C`` (Betty's definition);
    * :meth:`total_hypergradient`, the total derivative of the nested optimum
      ``y*(x) = argmin_y f2(y, z*(y), x)``, whose Hessian ``A2 + g (J1 - C)^T (J1 - C)`` includes
      the lower level's response.

    They differ whenever ``g != 0``; :meth:`gap` measures by how much.
    """

    A1: Tensor
    B1: Tensor
    A2: Tensor
    B2: Tensor
    C: Tensor
    g: float
    t: Tensor
    s: Tensor
    c: float
    x0: Tensor

    @classmethod
    def make(
        cls,
        n1: int = 6,
        n2: int = 5,
        n3: int = 4,
        *,
        seed: int = 0,
        g: float = 0.5,
        dtype: torch.dtype = torch.float64,
    ) -> QuadraticTrilevel:
        gen = torch.Generator().manual_seed(seed)
        A1 = random_spd(n1, 1.0, 5.0, gen, dtype)
        A2 = random_spd(n2, 1.0, 5.0, gen, dtype)
        B1 = torch.randn(n1, n2, generator=gen, dtype=dtype)
        B2 = torch.randn(n2, n3, generator=gen, dtype=dtype)
        C = torch.randn(n1, n2, generator=gen, dtype=dtype) / n1**0.5
        t = torch.randn(n2, generator=gen, dtype=dtype)
        s = torch.randn(n1, generator=gen, dtype=dtype)
        x0 = torch.randn(n3, generator=gen, dtype=dtype)
        return cls(A1, B1, A2, B2, C, g, t, s, 0.1, x0)

    # pure losses: lower f1(z; y), middle f2(y; x) with z held at the given value
    def lower(self, z: Params, y: Params) -> Tensor:
        zz = z["z"]
        return 0.5 * zz @ self.A1 @ zz - zz @ self.B1 @ y["y"]

    def middle(self, y: Params, x: Params, z: Tensor) -> Tensor:
        yy = y["y"]
        couple = 0.5 * self.g * (z - self.C @ yy).pow(2).sum()
        return 0.5 * yy @ self.A2 @ yy - yy @ self.B2 @ x["x"] + couple

    def upper(self, x: Params, y: Tensor, z: Tensor) -> Tensor:
        return (
            0.5 * (y - self.t).pow(2).sum()
            + 0.5 * (z - self.s).pow(2).sum()
            + 0.5 * self.c * x["x"].pow(2).sum()
        )

    def J1(self) -> Tensor:
        return torch.linalg.solve(self.A1, self.B1)

    def H2_partial(self) -> Tensor:
        return self.A2 + self.g * self.C.T @ self.C

    def H2_total(self) -> Tensor:
        d = self.J1() - self.C
        return self.A2 + self.g * d.T @ d

    def point(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(z, y, x)``: ``x = x0``, ``y`` the nested optimum, ``z = z*(y)``."""
        y = torch.linalg.solve(self.H2_total(), self.B2 @ self.x0)
        z = self.J1() @ y
        return z, y, self.x0.clone()

    def _hyper(self, h2: Tensor, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        rhs = (y - self.t) + self.J1().T @ (z - self.s)
        return self.c * x + self.B2.T @ torch.linalg.solve(h2, rhs)

    def hop_hypergradient(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return self._hyper(self.H2_partial(), x, y, z)

    def total_hypergradient(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return self._hyper(self.H2_total(), x, y, z)

    def gap(self) -> float:
        """``||hop - total|| / ||total||`` at :meth:`point`."""
        z, y, x = self.point()
        hop, tot = self.hop_hypergradient(x, y, z), self.total_hypergradient(x, y, z)
        return float((hop - tot).norm() / tot.norm())


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
        from .datasets import breast_cancer

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

    def w_star(self, lam: Params, *, iterations: int = 50) -> Params:
        """Newton's method from zero; stops when the gradient norm is below 1e-13."""
        n, d = self.X.shape
        Z = torch.cat([self.X, torch.ones(n, 1, dtype=self.X.dtype)], 1)
        penalty = torch.cat([lam["lam"].exp(), torch.zeros(1, dtype=self.X.dtype)])
        theta = torch.zeros(d + 1, dtype=self.X.dtype)
        for _ in range(iterations):
            p = torch.sigmoid(Z @ theta)
            grad = Z.T @ (p - self.y) / n + penalty * theta
            if float(grad.norm()) < 1e-13:
                break
            hess = (Z.T * (p * (1 - p))) @ Z / n + torch.diag(penalty)
            theta = theta - torch.linalg.solve(hess, grad)
        return {"w": theta[:d], "b": theta[d]}

    def point(self) -> tuple[Params, Params, Params]:
        """``(w*(lam0), lam0, v = dF/dw)``."""
        lam = {"lam": self.lam0.clone()}
        w = self.w_star(lam)
        w_ = {k: t.clone().requires_grad_(True) for k, t in w.items()}
        grads = torch.autograd.grad(self.outer(w_, lam), list(w_.values()))
        return w, lam, dict(zip(w, grads, strict=True))


@dataclass
class BernoulliReward:
    """Independent draws ``z_i ~ Bernoulli(sigmoid(theta_i))`` scored by
    ``R(z) = offset + c^T z + z_0 z_1``.

    With ``p = sigmoid(theta)``, ``E[R] = offset + c^T p + p_0 p_1``, so
    ``dE[R]/dtheta_i = (c_i + [i = 0] p_1 + [i = 1] p_0) p_i (1 - p_i)``. The constant ``offset``
    leaves the gradient alone and inflates the variance of a score-function estimator without a
    baseline. ``sample``, ``log_prob`` and ``reward`` have the signatures of
    :func:`ziggurat.hypergradient.reinforce`; the parameters are ``{"logits": theta}``.
    """

    theta: Tensor
    c: Tensor
    offset: float

    @classmethod
    def make(cls, *, offset: float = 5.0, dtype: torch.dtype = torch.float64) -> BernoulliReward:
        theta = torch.tensor([0.3, -0.7, 1.2, 0.0], dtype=dtype)
        return cls(theta, torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype), offset)

    def lam(self) -> Params:
        return {"logits": self.theta.clone()}

    def sample(self, lam: Params, n: int, gen: torch.Generator) -> Tensor:
        p = torch.sigmoid(lam["logits"])
        return (torch.rand(n, p.numel(), generator=gen, dtype=p.dtype) < p).to(p.dtype)

    def log_prob(self, z: Tensor, lam: Params) -> Tensor:
        logits = lam["logits"]
        log_p = torch.nn.functional.logsigmoid(logits)
        log_q = torch.nn.functional.logsigmoid(-logits)
        return (z * log_p).sum(1) + ((1 - z) * log_q).sum(1)

    def reward(self, z: Tensor) -> Tensor:
        return self.offset + z @ self.c + z[:, 0] * z[:, 1]

    def expected_gradient(self, lam: Params) -> Params:
        p = torch.sigmoid(lam["logits"])
        slope = self.c.clone()
        slope[0] += p[1]
        slope[1] += p[0]
        return {"logits": slope * p * (1 - p)}
