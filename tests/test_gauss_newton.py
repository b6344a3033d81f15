"""Gauss-Newton curvature against explicit matrices, and as ``curvature=`` of every solver."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from registry import ridge_gauss_newton
from ziggurat import linalg
from ziggurat._products import Linearization
from ziggurat.analytic import QuadraticBilevel, RidgeHPO
from ziggurat.hypergradient import cg, exact, fixed_point, gauss_newton, neumann

D = torch.float64


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def flat_params(w: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in w.values()])


def tanh_net(seed: int = 0):
    """A 2-layer tanh network (4 -> 5 -> 3) with softmax cross-entropy, float64."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(20, 4, generator=g, dtype=D)
    y = torch.randint(0, 3, (20,), generator=g)
    w = {
        "W1": torch.randn(5, 4, generator=g, dtype=D),
        "b1": torch.randn(5, generator=g, dtype=D),
        "W2": torch.randn(3, 5, generator=g, dtype=D),
    }
    lam = {"decay": torch.tensor(0.1, dtype=D)}

    def outputs(w, lam):
        return torch.tanh(X @ w["W1"].T + w["b1"]) @ w["W2"].T

    def loss(out):
        return F.cross_entropy(out, y, reduction="sum")

    def reg(w, lam):
        return 0.5 * lam["decay"] * sum((t * t).sum() for t in w.values())

    return w, lam, outputs, loss, reg


def hessian(f):
    """Reverse-over-reverse Hessian (avoids loading forward-mode decompositions)."""
    return torch.func.jacrev(torch.func.jacrev(f))


def explicit_gn(w, lam, outputs, loss, reg) -> torch.Tensor:
    """``J^T (d^2 l/dg^2) J + d^2 r/dw^2`` built from full Jacobians and Hessians."""
    keys = list(w)
    shapes = [w[k].shape for k in keys]
    sizes = [w[k].numel() for k in keys]

    def unflat(x):
        return {k: t.reshape(s) for k, t, s in zip(keys, x.split(sizes), shapes, strict=True)}

    x0 = flat_params(w)
    J = torch.func.jacrev(lambda x: outputs(unflat(x), lam).reshape(-1))(x0)
    out = outputs(w, lam)
    Hl = hessian(lambda o: loss(o.reshape(out.shape)))(out.reshape(-1))
    Hr = hessian(lambda x: reg(unflat(x), lam))(x0)
    return J.T @ Hl @ J + Hr, hessian(
        lambda x: loss(outputs(unflat(x), lam)) + reg(unflat(x), lam)
    )(x0)


def operator_matrix(curv, inner, w, lam) -> torch.Tensor:
    return linalg.materialize(curv.matvec(Linearization(inner, w, lam)), w)


def test_matches_explicit_gauss_newton_on_a_tanh_network() -> None:
    w, lam, outputs, loss, reg = tanh_net()
    curv = gauss_newton(outputs, loss, regularizer=reg)

    def inner(w, lam):
        return loss(outputs(w, lam)) + reg(w, lam)

    G = operator_matrix(curv, inner, w, lam)
    G_ref, H = explicit_gn(w, lam, outputs, loss, reg)
    assert rel(G, G_ref) < 1e-10
    assert float((G - G.T).abs().max()) < 1e-10
    assert float(torch.linalg.eigvalsh(G).min()) > 0  # PSD data term plus decay 0.1 I
    # a non-linear model: the dropped term sum_i (dl/dg_i) d^2 g_i/dw^2 is far from zero
    assert rel(G, H) > 0.05


def test_equals_the_hessian_for_logistic_regression() -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 6, generator=g, dtype=D)
    y = (torch.rand(40, generator=g, dtype=D) < 0.5).to(D)
    w = {"w": torch.randn(6, generator=g, dtype=D), "b": torch.zeros((), dtype=D)}
    lam = {"l2": torch.rand(6, generator=g, dtype=D)}

    def outputs(w, lam):
        return X @ w["w"] + w["b"]

    def loss(out):
        return F.binary_cross_entropy_with_logits(out, y, reduction="sum")

    def reg(w, lam):
        return 0.5 * (lam["l2"] * w["w"] ** 2).sum()

    def inner(w, lam):
        return loss(outputs(w, lam)) + reg(w, lam)

    G = operator_matrix(gauss_newton(outputs, loss, regularizer=reg), inner, w, lam)
    H = linalg.materialize(Linearization(inner, w, lam).hvp, w)
    assert rel(G, H) < 1e-12


# ---------------------------------- every inverse-HVP method with GN on linear, convex problems
def quadratic_gn(quad: QuadraticBilevel):
    """``1/2 w^T A w - w^T B lam`` as ``l(L^T w) + r``: ``A = L L^T``, ``r`` linear in ``w``."""
    L = torch.linalg.cholesky(quad.A)
    return gauss_newton(
        lambda w, lam: L.T @ w["w"],
        lambda out: 0.5 * out.pow(2).sum(),
        regularizer=lambda w, lam: -(w["w"] @ quad.B @ lam["lam"]),
    )


def methods(curv, eig: torch.Tensor):
    step = 2.0 / float(eig.min() + eig.max())
    return {
        "exact": exact(curvature=curv),
        "cg": cg(eig.numel(), 1e-300, curvature=curv),
        "neumann": neumann(4000, step, curvature=curv),
        "fixed_point": fixed_point(4000, step, tol=1e-13, curvature=curv),
    }


@pytest.fixture(scope="module")
def ridge() -> RidgeHPO:
    return RidgeHPO.diabetes()


@pytest.mark.parametrize("name", ["exact", "cg", "neumann", "fixed_point"])
def test_gauss_newton_variants_exact_on_ridge(name: str, ridge: RidgeHPO) -> None:
    """The data term ``1/2 ||X w - y||^2`` is a convex loss of a linear model and the penalty's
    Hessian is added exactly, so Gauss-Newton is the Hessian and every solver is exact."""
    w, lam, v = ridge.point()
    method = methods(ridge_gauss_newton(ridge), torch.linalg.eigvalsh(ridge.hessian(lam)))[name]
    got = method(ridge.inner, w, lam, v).vjp["lam"]
    assert rel(got, ridge.exact_vjp(v)["lam"]) < 1e-8


@pytest.mark.parametrize("name", ["exact", "cg", "neumann", "fixed_point"])
def test_gauss_newton_variants_exact_on_quadratic(name: str) -> None:
    quad = QuadraticBilevel.make(n=8, m=5, seed=3)
    w, lam, v = quad.point()
    method = methods(quadratic_gn(quad), torch.linalg.eigvalsh(quad.A))[name]
    got = method(quad.inner, w, lam, v).vjp["lam"]
    assert rel(got, quad.exact_vjp(v)["lam"]) < 1e-8


def test_non_callables_are_rejected_early() -> None:
    with pytest.raises(ValueError, match="gauss_newton outputs must be callable, got 3"):
        gauss_newton(3, lambda o: o.sum())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gauss_newton loss must be callable"):
        gauss_newton(lambda w, lam: w["w"], None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gauss_newton regularizer must be callable"):
        gauss_newton(lambda w, lam: w["w"], lambda o: o.sum(), regularizer="l2")  # type: ignore[arg-type]
