"""Hessian-vector products from gradients alone (``FiniteDifference``, ``hvp_fd``).

The registry (``tests/registry.py``, cases ``*_fd*``) runs every solver with these products on
the analytic suite, two and three levels; here: the step rule per dtype, low precision, the
declared capabilities, the ``Config`` switch, and a fused attention kernel that has no double
backward.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ziggurat import Config, hvp, hvp_fd
from ziggurat._products import Linearization, step_length
from ziggurat.analytic import QuadraticBilevel
from ziggurat.hypergradient import (
    DoubleBackward,
    FiniteDifference,
    Hop,
    Implicit,
    MixedAutograd,
    MixedFiniteDifference,
    cg,
    darts,
    exact,
    fixed_point,
    fixed_point_of,
    fold,
    neumann,
)
from ziggurat.linalg import conjugate_gradient, identity
from ziggurat.optim import sgd

D = torch.float64
FD = {"curvature": FiniteDifference(), "mixed": MixedFiniteDifference()}


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


def reference() -> torch.Tensor:
    w, lam, u = point()
    return hvp(inner, {"w": w}, {"lam": lam}, {"w": u})["w"]


def fd_in(dtype: torch.dtype, radius: float | None = None) -> torch.Tensor:
    w, lam, u = point()
    got = hvp_fd(inner, {"w": w.to(dtype)}, {"lam": lam.to(dtype)}, {"w": u.to(dtype)}, radius)
    assert got["w"].dtype == dtype
    return got["w"]


def radius_of(dtype: torch.dtype) -> float:
    """The perturbation length the rule picks for ``dtype`` at this point."""
    w, _, _ = point()
    return torch.finfo(dtype).eps ** (1 / 3) * max(1.0, float(w.norm()))


@pytest.mark.parametrize(
    ("dtype", "other", "bound"),
    [(torch.float32, torch.float64, 1e-4), (torch.float64, torch.float32, 1e-9)],
    ids=["float32", "float64"],
)
def test_default_step_follows_the_dtype(dtype, other, bound) -> None:
    """The error is about ``eps^(2/3)`` (2.4e-5 in float32, 4e-11 in float64; measured 1.3e-5
    and 2.5e-11); the other dtype's step is rounding-dominated in float32 and
    truncation-dominated in float64, both far worse."""
    error = rel(fd_in(dtype), reference())
    assert error < bound
    assert rel(fd_in(dtype, radius_of(other)), reference()) > 30 * error


@pytest.mark.parametrize(
    ("dtype", "bound"), [(torch.bfloat16, 0.08), (torch.float16, 0.02)], ids=["bf16", "fp16"]
)
def test_low_precision_parameters_reach_their_floor(dtype, bound) -> None:
    """bf16 and fp16 parameters: the perturbed points are formed and the difference and the
    quotient taken in float32; the result keeps the parameters' dtype. The floor is about
    ``eps^(2/3)`` of the dtype: 0.039 for bf16 and 0.0099 for fp16 (measured 0.031, 0.0081)."""
    got = fd_in(dtype)
    assert torch.isfinite(got).all()
    assert rel(got, reference()) < bound


def test_the_step_follows_an_active_autocast() -> None:
    """Under bf16 autocast the gradients carry bf16 rounding whatever the parameters' dtype, so
    the rule takes bf16's roundoff: a step ``(eps_bf16 / eps_f32)^(1/3) = 2^(16/3) = 40.3``
    times longer."""
    w = {"w": torch.randn(5)}
    plain = float(step_length(w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert float(step_length(w)) == pytest.approx(2 ** (16 / 3) * plain, rel=1e-6)
    assert float(step_length(w)) == plain


def mlp(w, lam):
    """Matrix products, so autocast runs them in bf16."""
    hidden = torch.tanh(lam["X"] @ w["W1"])
    return (hidden @ w["W2"]).pow(2).mean() + 0.005 * w["W1"].pow(2).sum()


def test_under_autocast_the_rule_beats_the_parameters_step() -> None:
    """On a small network under bf16 autocast (float32 parameters) the product's error with the
    rule is 0.061, and 0.24 with float32's step; double backward under autocast gets 0.005."""
    g = torch.Generator().manual_seed(0)
    W1 = torch.randn(16, 32, generator=g, dtype=D) / 4
    W2 = torch.randn(32, 1, generator=g, dtype=D) / 6
    X = torch.randn(64, 16, generator=g, dtype=D)
    U = {
        "W1": torch.randn(16, 32, generator=g, dtype=D),
        "W2": torch.randn(32, 1, generator=g, dtype=D),
    }
    w, lam = {"W1": W1, "W2": W2}, {"X": X}
    ref = torch.cat([t.reshape(-1) for t in hvp(mlp, w, lam, U).values()])
    f32 = [{k: t.float() for k, t in tree.items()} for tree in (w, lam, U)]
    radius = torch.finfo(torch.float32).eps ** (1 / 3) * float(
        torch.cat([W1.flatten(), W2.flatten()]).norm()
    )

    def error(radius: float | None) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = hvp_fd(mlp, *f32, radius=radius)
        return rel(torch.cat([t.reshape(-1) for t in got.values()]), ref)

    by_rule, by_float32 = error(None), error(radius)
    assert by_rule < 0.12
    assert by_float32 > 2 * by_rule


def test_exact_on_a_quadratic_in_float64() -> None:
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()
    got = FiniteDifference().matvec(Linearization(q.inner, w, lam))(v)["w"]
    assert rel(got, q.A @ v["w"]) < 1e-10
    radius = FiniteDifference(radius=0.5).matvec(Linearization(q.inner, w, lam))(v)["w"]
    assert rel(radius, q.A @ v["w"]) < 1e-12  # a quadratic has no truncation error


def test_zero_direction_gives_zero() -> None:
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()
    zero = {"w": torch.zeros_like(v["w"])}
    assert torch.equal(hvp_fd(q.inner, w, lam, zero)["w"], zero["w"])
    assert torch.equal(hvp_fd(q.inner, w, lam, zero, radius=1e3)["w"], zero["w"])


def test_a_loss_that_does_not_reach_w_is_refused() -> None:
    """A loss that evaluates the model at parameters of its own, with no autograd path to
    ``w``: the gradient there would read as zero and every product with it. (An FSDP2-sharded
    level's pure loss was one; the Engine now connects it, see tests/test_distributed.py.)"""
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()

    def detached(w_, lam_):
        return q.inner({k: t.detach() for k, t in w_.items()}, lam_)

    def through_other(w_, lam_):  # a graph, but not to w (as with live sharded parameters)
        other = torch.zeros(1, dtype=D, requires_grad=True)
        return detached(w_, lam_) + other.sum()

    for loss in (detached, through_other):
        with pytest.raises(ValueError, match="does not depend on the lower parameters w"):
            hvp_fd(loss, w, lam, v)
        with pytest.raises(ValueError, match=r"hop 0 \(cg\).*at the w it is given"):
            fold([Hop(cg(5, **FD), loss, w, lam)], v)


def test_radius_is_validated() -> None:
    with pytest.raises(ValueError, match="finite-difference curvature radius must be a finite"):
        FiniteDifference(radius=0.0)
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()
    with pytest.raises(ValueError, match="finite-difference radius must be a finite number > 0"):
        hvp_fd(q.inner, w, lam, v, radius=-1.0)


# ---------------------------------------------------------------- capabilities
@pytest.mark.parametrize(
    "method",
    [exact(**FD), cg(5, **FD), neumann(5, 0.1, **FD), fixed_point(5, 0.1, **FD)],
    ids=["exact", "cg", "neumann", "fixed_point"],
)
def test_both_products_by_differences_need_only_first_order_autograd(method: Implicit) -> None:
    assert method.first_order_only and method.finite_differences
    assert not replace(method, mixed=MixedAutograd()).first_order_only
    assert not replace(method, curvature=DoubleBackward()).first_order_only
    autograd = replace(method, curvature=DoubleBackward(), mixed=MixedAutograd())
    assert not autograd.finite_differences


def test_a_curvature_the_solver_never_applies_does_not_count() -> None:
    """The identity solver (DARTS) applies no curvature: a finite-difference mixed product
    alone makes it first-order, whatever the curvature."""
    method = Implicit(identity(), MixedFiniteDifference(), DoubleBackward())
    assert method.first_order_only
    fd_only_curvature = Implicit(identity(), MixedAutograd(), FiniteDifference())
    assert not fd_only_curvature.finite_differences and not fd_only_curvature.first_order_only
    assert Implicit(conjugate_gradient(), MixedAutograd(), FiniteDifference()).finite_differences


def test_fixed_point_of_passes_the_products_on() -> None:
    method = fixed_point_of(sgd(0.1), 5, **FD)
    assert method.curvature == FiniteDifference() and method.mixed == MixedFiniteDifference()


# ---------------------------------------------------------------- Config
@pytest.mark.parametrize("kind", ["neumann", "cg", "exact"])
def test_config_switch_selects_both_products(kind: str) -> None:
    config = Config(type=kind, curvature="finite_difference")
    method = config.method()
    assert isinstance(method, Implicit) and method.first_order_only
    assert method.curvature == FiniteDifference() and method.mixed == MixedFiniteDifference()
    default = Config(type=kind).method()
    assert isinstance(default, Implicit) and not default.first_order_only
    assert default.curvature == DoubleBackward() and default.mixed == MixedAutograd()


def test_config_switch_keeps_the_other_options() -> None:
    method = Config(type="cg", curvature="finite_difference", cg_iterations=7, cg_tol=1e-6).method()
    assert method == cg(7, 1e-6, **FD)


@pytest.mark.parametrize("kind", ["darts", "sama", "first_order"])
def test_config_switch_leaves_first_order_types_alone(kind: str) -> None:
    assert Config(type=kind, curvature="finite_difference").method() == Config(type=kind).method()


def test_config_switch_is_validated() -> None:
    with pytest.raises(
        ValueError, match=r"Config curvature must be one of \['autograd', 'finite_difference'\]"
    ):
        Config(curvature="fd")
    with pytest.raises(
        ValueError, match="with an explicit hypergradient method, pass the products"
    ):
        Config(hypergradient=cg(5), curvature="finite_difference")


def test_the_mixed_product_keeps_refusing_a_non_finite_cotangent() -> None:
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()
    bad = {"w": v["w"].clone()}
    bad["w"][0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        darts()(q.inner, w, lam, bad)


# ---------------------------------------------------------------- fused attention
def attention_loss(fused: bool):
    """A one-head attention layer's squared error, plus an L2 penalty weighted by ``exp(lam)``.

    ``fused`` runs ``scaled_dot_product_attention`` (its CPU kernel has no double backward);
    otherwise the same maths with an explicit softmax, for the reference.
    """
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1, 2, 6, 4, generator=g, dtype=D)  # (batch, heads, tokens, features)
    target = torch.randn(1, 2, 6, 4, generator=g, dtype=D)

    def attend(q, k, v):
        if fused:
            return F.scaled_dot_product_attention(q, k, v)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        return torch.softmax(scores, -1) @ v

    def loss(w, lam):
        q, k, v = X @ w["Wq"], X @ w["Wk"], X @ w["Wv"]
        fit = (attend(q, k, v) - target).pow(2).mean()
        penalty = sum((lam[n].exp() * w[n].pow(2)).sum() for n in w)
        return fit + 0.5 * penalty

    return loss


def attention_point():
    g = torch.Generator().manual_seed(1)
    w = {n: 0.3 * torch.randn(4, 4, generator=g, dtype=D) for n in ("Wq", "Wk", "Wv")}
    lam = {n: torch.zeros(4, 4, dtype=D) for n in w}  # L2 weight 1: H positive definite here
    v = {n: torch.randn(4, 4, generator=g, dtype=D) for n in w}
    return w, lam, v


def flat(tree) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tree.values()])


def test_fused_attention_runs_with_products_from_gradients() -> None:
    """The fused kernel has no double backward: double-backward products take the math
    kernel (``ziggurat.twice_differentiable``), finite-difference products need none. Both
    agree with the double-backward answer of the unfused maths (to 1e-12 and 1e-8 in float64;
    the point is not stationary, the products are linearised where they are taken)."""
    w, lam, v = attention_point()
    truth = flat(exact()(attention_loss(fused=False), w, lam, v).vjp)
    assert rel(flat(cg(48, 1e-14)(attention_loss(fused=True), w, lam, v).vjp), truth) < 1e-12
    for method in (exact(**FD), cg(100, 1e-12, **FD)):
        got = flat(method(attention_loss(fused=True), w, lam, v).vjp)
        assert rel(got, truth) < 1e-8
