"""The DARTS mixed product's default finite-difference step, in float32 and float64.

The step ``eps^(1/3) max(1, |w|) / |u|`` balances truncation (``O(h^2)``) against rounding
(``O(eps / h)``), so it must follow the dtype: the error is then about ``eps^(2/3)`` in each,
and the other dtype's step is much worse.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ziggurat._products import mixed_vjp, mixed_vjp_fd
from ziggurat.hypergradient import darts, exact

D = torch.float64


def inner(w, lam):
    """Not quadratic in ``w``: the central difference has a truncation error."""
    x, h = w["w"], lam["lam"]
    return F.softplus(x * h).sum() + 0.1 * (x**3 * h).sum() + torch.sin(x).sum() * h.sum()


def point():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, generator=g, dtype=D)
    lam = 0.5 * torch.randn(20, generator=g, dtype=D)
    u = torch.randn(20, generator=g, dtype=D)
    return w, lam, u


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def step_radius(dtype: torch.dtype, w: torch.Tensor) -> float:
    """The radius that gives ``dtype``'s default step (``h = radius / |u|``)."""
    return torch.finfo(dtype).eps ** (1 / 3) * max(1.0, float(w.norm()))


@pytest.mark.parametrize(
    ("dtype", "other", "bound"),
    [(torch.float32, torch.float64, 1e-4), (torch.float64, torch.float32, 1e-9)],
    ids=["float32", "float64"],
)
def test_default_step_follows_the_dtype(dtype, other, bound) -> None:
    w0, lam0, u0 = point()
    reference = mixed_vjp(inner, {"w": w0}, {"lam": lam0}, {"w": u0})["lam"]  # float64 autograd
    w, lam, u = {"w": w0.to(dtype)}, {"lam": lam0.to(dtype)}, {"w": u0.to(dtype)}
    got = mixed_vjp_fd(inner, w, lam, u)["lam"]
    assert got.dtype == dtype
    error = rel(got, reference)
    assert error < bound
    # the other dtype's step: rounding-dominated in float32, truncation-dominated in float64
    wrong = mixed_vjp_fd(inner, w, lam, u, radius=step_radius(other, w0))["lam"]
    assert rel(wrong, reference) > 30 * error


def test_darts_in_float32_is_exact_on_a_quadratic_to_rounding() -> None:
    """On a quadratic the central difference has no truncation error, so in float32 DARTS
    equals its model ``-(d^2 f/dlam dw) v`` to about float32 rounding."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(6, 6, generator=g, dtype=D)
    A = A @ A.T + torch.eye(6, dtype=D)
    B = torch.randn(6, 4, generator=g, dtype=D)

    def quad(w, lam):
        x = w["w"]
        return 0.5 * x @ A.to(x.dtype) @ x - x @ B.to(x.dtype) @ lam["lam"]

    w, lam, v = (torch.randn(n, generator=g, dtype=D) for n in (6, 4, 6))
    model = B.T @ v  # -(mixed)^T v with mixed matrix -B^T
    f32 = {"w": w.float()}, {"lam": lam.float()}, {"w": v.float()}
    got = darts()(quad, *f32).vjp["lam"]
    assert got.dtype == torch.float32 and rel(got, model) < 1e-4
    assert rel(exact()(quad, {"w": w}, {"lam": lam}, {"w": v}).vjp["lam"], model) > 0.1
