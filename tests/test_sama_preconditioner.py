"""SAMA's Adam preconditioner is the diagonal of d(Adam update)/d(gradient), by autograd."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ziggurat.hypergradient import adam_preconditioner

DT = torch.float64


@pytest.mark.parametrize("step", [1, 2, 7])
def test_adam_preconditioner_matches_autograd(step: int) -> None:
    g0 = torch.Generator().manual_seed(step)
    lr, b1, b2, eps = 0.01, 0.9, 0.99, 1e-8
    m_old = 0.1 * torch.randn(50, generator=g0, dtype=DT)
    v_old = 0.01 * torch.rand(50, generator=g0, dtype=DT)
    if step == 1:
        m_old, v_old = torch.zeros_like(m_old), torch.zeros_like(v_old)
    grad = torch.randn(50, generator=g0, dtype=DT)
    grad[:3] = 0.0  # v may be 0 at the first step: the derivative stays finite
    bc1, bc2 = 1 - b1**step, 1 - b2**step

    def update(g: Tensor) -> Tensor:
        m = b1 * m_old + (1 - b1) * g
        v = b2 * v_old + (1 - b2) * g**2
        return lr * (m / bc1) / (torch.sqrt(v / bc2) + eps)

    m = b1 * m_old + (1 - b1) * grad
    v = b2 * v_old + (1 - b2) * grad**2
    got = adam_preconditioner(
        {"p": m}, {"p": v}, {"p": grad}, step=step, lr=lr, betas=(b1, b2), eps=eps
    )["p"]
    live = v > 0
    expected = torch.func.grad(lambda g: update(g)[live].sum())(grad)  # diagonal Jacobian
    torch.testing.assert_close(got[live], expected[live], rtol=1e-10, atol=1e-12)
    assert torch.isfinite(got).all()
    # at v = 0 (g = 0 from zero moments) only the first term remains
    torch.testing.assert_close(got[~live], torch.full_like(got[~live], lr * (1 - b1) / bc1 / eps))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_preconditioner_is_finite_where_a_parameter_never_had_a_gradient(
    dtype: torch.dtype,
) -> None:
    # e.g. the weights of an input feature that is always zero: m = v = g = 0; the clamped
    # denominator must not underflow to 0 (tiny * eps does in float32) and give 0 / 0
    lr, b1, b2, eps, step = 1e-3, 0.9, 0.999, 1e-8, 3
    zero = torch.zeros(4, dtype=dtype)
    got = adam_preconditioner(
        {"p": zero}, {"p": zero}, {"p": zero}, step=step, lr=lr, betas=(b1, b2), eps=eps
    )["p"]
    expected = lr * (1 - b1) / (1 - b1**step) / eps
    torch.testing.assert_close(got, torch.full_like(got, expected))
