"""Quadratic bilevel and trilevel problems: every derivative in closed form.

Both are built from random matrices drawn from a seeded generator, in float64 by default, so
each seed gives one fixed problem. :class:`QuadraticTrilevel` speaks tensors rather than
``Params``: its three levels are compared by their closed forms, not run through a method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._types import Params


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
