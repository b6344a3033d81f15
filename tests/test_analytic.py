"""``ziggurat.analytic``: every bilevel fixture's closed-form product against autograd."""

from __future__ import annotations

import pytest
import torch

from ziggurat.analytic import (
    BernoulliReward,
    BilevelFixture,
    LogisticHPO,
    QuadraticBilevel,
    QuadraticTrilevel,
    RidgeHPO,
)
from ziggurat.hypergradient import exact


def _fixture(name: str) -> BilevelFixture:
    if name == "quadratic":
        return QuadraticBilevel.make(seed=3)
    pytest.importorskip("sklearn")
    return RidgeHPO.diabetes() if name == "ridge" else LogisticHPO.breast_cancer()


@pytest.mark.parametrize("name", ["quadratic", "ridge", "logistic"])
def test_exact_vjp_is_the_implicit_function_theorem_by_autograd(name: str) -> None:
    """``exact()`` solves with the Hessian and mixed product that double backward gives on
    ``inner``; the fixture's closed form must agree to float64 rounding."""
    fixture = _fixture(name)
    assert isinstance(fixture, BilevelFixture)
    w, lam, v = fixture.point()
    want = exact()(fixture.inner, w, lam, v).vjp["lam"]
    got = fixture.exact_vjp(v)["lam"]
    assert float((got - want).norm() / want.norm()) < 1e-9
    assert float(want.norm()) > 1e-6  # not agreeing on zero


def test_logistic_exact_vjp_at_another_lam_is_the_derivative_of_the_optimum() -> None:
    """At ``lam != lam0``, ``u^T dw*/dlam`` against central differences of Newton's optimum."""
    pytest.importorskip("sklearn")
    problem = LogisticHPO.breast_cancer()
    lam = {"lam": problem.lam0 + torch.linspace(-1.0, 1.0, len(problem.lam0), dtype=torch.float64)}
    gen = torch.Generator().manual_seed(0)
    u = {"w": torch.randn(30, generator=gen, dtype=torch.float64), "b": torch.tensor(0.7).double()}
    got = problem.exact_vjp(u, lam)["lam"]
    h = 1e-5
    fd = torch.empty_like(got)
    for j in range(len(fd)):
        e = torch.zeros_like(lam["lam"])
        e[j] = h
        plus, minus = (
            problem.w_star({"lam": lam["lam"] + e}),
            problem.w_star({"lam": lam["lam"] - e}),
        )
        fd[j] = sum((u[k] * (plus[k] - minus[k])).sum() for k in u) / (2 * h)
    assert float((got - fd).norm() / fd.norm()) < 1e-6


@pytest.mark.parametrize("other", [QuadraticTrilevel.make(), BernoulliReward.make()])
def test_problems_without_a_best_response_product_are_not_bilevel_fixtures(other) -> None:
    assert not isinstance(other, BilevelFixture)
