"""The fixed-point solver (Grazzi et al. 2020) and its preset."""

from __future__ import annotations

import pytest
import torch

from registry import heavy_ball_model
from ziggurat import linalg
from ziggurat.analytic import QuadraticBilevel, random_spd
from ziggurat.hypergradient import PRESETS, exact, fixed_point, fixed_point_of, from_name, unrolled
from ziggurat.linalg import heavy_ball_rate, polyak_parameters
from ziggurat.optim import adam, adamw, sgd


def system(n: int, low: float, high: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = random_spd(n, low, high, g, torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return h, {"x": b}


def op(h, counter: list[int] | None = None):
    def apply(u):
        if counter is not None:
            counter.append(1)
        return {"x": h @ u["x"]}

    return apply


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def true_residual(h, b, x) -> float:
    return float((b["x"] - h @ x["x"]).norm() / b["x"].norm())


def test_converges_to_the_solution_and_reports_its_exact_residual() -> None:
    h, b = system(10, 0.5, 4.0)
    res = linalg.fixed_point(400, 0.45)(op(h), b)  # 0.45 < 2 / 4
    assert rel(res.x["x"], torch.linalg.solve(h, b["x"])) < 1e-10
    assert res.residual == pytest.approx(true_residual(h, b, res.x), rel=1e-6, abs=1e-15)


@pytest.mark.parametrize("K", [1, 4, 25])
def test_iterates_are_neumann_partial_sums_one_behind(K: int) -> None:
    h, b = system(7, 1.0, 3.0, seed=K)
    fp = linalg.fixed_point(K, 0.3)(op(h), b)
    neu = linalg.neumann(K - 1, 0.3)(op(h), b)
    assert rel(fp.x["x"], neu.x["x"]) < 1e-13
    # fixed point: residual of what it returns; Neumann(K): residual one iterate behind its answer
    assert fp.residual == pytest.approx(true_residual(h, b, fp.x), rel=1e-10)
    assert linalg.neumann(K, 0.3)(op(h), b).residual == pytest.approx(fp.residual, rel=1e-10)


def test_stops_early_on_tolerance_and_counts_products() -> None:
    h, b = system(30, 1.0, 2.0)  # contraction factor 0.5 with step 0.5
    calls: list[int] = []
    res = linalg.fixed_point(200, 0.5, tol=1e-8)(op(h, calls), b)
    assert res.residual <= 1e-8
    assert res.iterations == len(calls) < 40
    # one iteration fewer would not have met the tolerance
    short = linalg.fixed_point(res.iterations - 1, 0.5)(op(h), b)
    assert short.residual > 1e-8


def test_warm_start_from_the_solution_costs_one_product() -> None:
    h, b = system(8, 1.0, 5.0)
    x = {"x": torch.linalg.solve(h, b["x"])}
    res = linalg.fixed_point(50, 0.2, tol=1e-10)(op(h), b, x)
    assert res.iterations == 1 and res.residual < 1e-10
    assert rel(res.x["x"], x["x"]) < 1e-14


def test_damping_solves_the_shifted_system() -> None:
    h, b = system(6, 1.0, 3.0)
    res = linalg.fixed_point(500, 0.25, damping=0.5)(op(h), b)
    target = torch.linalg.solve(h + 0.5 * torch.eye(6, dtype=torch.float64), b["x"])
    assert rel(res.x["x"], target) < 1e-10


def test_diverges_above_two_over_lambda_max() -> None:
    h, b = system(8, 0.5, 4.0)
    with pytest.raises(
        FloatingPointError,
        match=r"fixed_point: the solve diverged.*step is 0\.55"
        r".*lambda_max ~ 4 .*below 0\.5\b",
    ):
        linalg.fixed_point(300, 0.55)(op(h), b)


def test_zero_rhs() -> None:
    h, _ = system(4, 1.0, 3.0)
    res = linalg.fixed_point(5, 0.1)(op(h), {"x": torch.zeros(4, dtype=torch.float64)})
    assert torch.equal(res.x["x"], torch.zeros(4, dtype=torch.float64)) and res.iterations == 0


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: linalg.fixed_point(0, 0.1), r"fixed_point iterations must be .*>= 1, got 0"),
        (lambda: linalg.fixed_point(2.5, 0.1), "fixed_point iterations.*2.5"),
        (lambda: linalg.fixed_point(5, 0.0), "fixed_point step.*> 0, got 0.0"),
        (lambda: linalg.fixed_point(5, float("inf")), "fixed_point step.*inf"),
        (lambda: linalg.fixed_point(5, 0.1, tol=-1.0), "fixed_point tol.*-1.0"),
        (lambda: linalg.fixed_point(5, 0.1, damping=-0.5), "fixed_point damping.*-0.5"),
        (lambda: fixed_point(5, -1.0), "fixed_point step.*-1.0"),
    ],
)
def test_bad_options_fail_at_construction(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_preset_is_registered_by_name() -> None:
    assert PRESETS["fixed_point"] is fixed_point
    method = from_name("fixed_point", iterations=3, step=0.1)
    assert method.name == "fixed_point"


# ---------------------------------------------------------------- heavy-ball momentum
@pytest.mark.parametrize("K", [1, 2, 7, 30])
def test_momentum_iterates_are_the_transposed_linearised_heavy_ball_map(K: int) -> None:
    """The solver's two-term recurrence against the joint (w, momentum) map built as a
    2n x 2n matrix and iterated directly."""
    h, b = system(9, 0.5, 6.0, seed=K)
    res = linalg.fixed_point(K, 0.2, momentum=0.7)(op(h), b)
    assert rel(res.x["x"], heavy_ball_model(h, b["x"], K, 0.2, 0.7)) < 1e-12
    assert res.iterations == K
    assert res.residual == pytest.approx(true_residual(h, b, res.x), rel=1e-10)


@pytest.mark.parametrize(("steps", "weight_decay"), [(1, 0.0), (6, 0.0), (25, 0.0), (12, 0.3)])
def test_momentum_equals_differentiating_momentum_sgd_from_the_optimum(
    steps: int, weight_decay: float
) -> None:
    """K steps of the fixed-point map of torch-style momentum SGD are K steps of momentum SGD
    differentiated from the optimum (empty buffer). With weight decay the optimizer converges
    to the minimiser of f + c/2 ||w||^2, which is where the comparison is made."""
    q = QuadraticBilevel.make(n=7, m=4, seed=5)
    opt = sgd(0.08, momentum=0.8, weight_decay=weight_decay)
    lam = {"lam": q.lam0.clone()}
    shifted = q.A + weight_decay * torch.eye(7, dtype=torch.float64)
    w = {"w": torch.linalg.solve(shifted, q.B @ lam["lam"])}
    v = {"w": torch.randn(7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)}
    got = fixed_point_of(opt, steps)(q.inner, w, lam, v).vjp["lam"]
    want = unrolled(opt, steps)(q.inner, w, lam, v).vjp["lam"]
    assert rel(got, want) < 1e-10


def test_dampening_scales_the_step() -> None:
    """m' = mu m + (1 - d) g: the linearised map is heavy ball with step lr (1 - d); its limit
    is still H^{-1} v."""
    h, b = system(6, 1.0, 4.0, seed=3)
    method = fixed_point_of(sgd(0.3, momentum=0.5, dampening=0.4), 9)
    assert method.solver == linalg.fixed_point(9, 0.3 * 0.6, momentum=0.5)
    long = fixed_point_of(sgd(0.3, momentum=0.5, dampening=0.4), 2000, tol=1e-12).solver
    assert rel(long(op(h), b).x["x"], torch.linalg.solve(h, b["x"])) < 1e-10
    assert fixed_point_of(sgd(0.3)).solver == linalg.fixed_point(100, 0.3)


def test_momentum_converges_exactly_below_two_one_plus_mu_over_lambda_max() -> None:
    h, b = system(8, 0.5, 4.0, seed=2)
    mu = 0.5
    edge = 2 * (1 + mu) / 4.0  # 0.75; plain gradient descent diverges above 0.5
    good = linalg.fixed_point(3000, 0.97 * edge, momentum=mu)(op(h), b)
    assert good.residual < 1e-10
    with pytest.raises(FloatingPointError, match=r"diverged.*must be below 0\.75\b"):
        linalg.fixed_point(3000, 1.03 * edge, momentum=mu)(op(h), b)
    assert (
        heavy_ball_rate(0.97 * edge, mu, 0.5, 4.0) < 1 < heavy_ball_rate(1.03 * edge, mu, 0.5, 4.0)
    )


def test_polyak_momentum_needs_far_fewer_products_than_the_best_plain_step() -> None:
    """Condition number 400 in 40 dimensions: heavy ball with Polyak's parameters reaches a
    residual of 1e-10 in under a tenth of the products of gradient descent at its best step
    2 / (L + mu) (rates 0.905 against 0.995; measured: 245 against 4240), and contracts at its
    predicted rate."""
    low, high = 0.01, 4.0
    h, b = system(40, low, high, seed=4)
    step, mu = polyak_parameters(low, high)
    rate = heavy_ball_rate(step, mu, low, high)
    assert rate == pytest.approx((20 - 1) / (20 + 1), rel=1e-7)  # a double root at both ends
    heavy = linalg.fixed_point(20_000, step, momentum=mu, tol=1e-10)(op(h), b)
    plain = linalg.fixed_point(20_000, 2 / (low + high), tol=1e-10)(op(h), b)
    assert heavy.residual <= 1e-10 and plain.residual <= 1e-10
    assert heavy.iterations < 0.1 * plain.iterations
    r100 = linalg.fixed_point(100, step, momentum=mu)(op(h), b).residual
    r200 = linalg.fixed_point(200, step, momentum=mu)(op(h), b).residual
    assert (r200 / r100) ** (1 / 100) == pytest.approx(rate, rel=0.02)


def test_momentum_hypergradient_matches_exact_on_the_quadratic() -> None:
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()
    eig = torch.linalg.eigvalsh(q.A)
    step, mu = polyak_parameters(float(eig.min()), float(eig.max()))
    got = fixed_point(500, step, momentum=mu, tol=1e-13)(q.inner, w, lam, v)
    assert rel(got.vjp["lam"], exact()(q.inner, w, lam, v).vjp["lam"]) < 1e-11
    assert got.info.iterations < 100


@pytest.mark.parametrize(
    ("optimizer", "match"),
    [
        (adam(1e-3), "adam has no fixed-point iteration at a stationary point"),
        (adamw(1e-3), "adamw has no fixed-point iteration"),
        (sgd(0.1, momentum=0.9, nesterov=True), "nesterov=True is not supported"),
        (sgd(0.1, maximize=True), "maximize=True is not supported"),
        (sgd(0.0), r"fixed_point_of sgd lr must be a finite number > 0, got 0.0"),
        (
            sgd(0.1, momentum=0.5, dampening=1.0),
            r"dampening must be < 1 with momentum \(.*\), got 1.0",
        ),
        (object(), "no linearised map for object"),
    ],
)
def test_optimizers_without_a_linearised_map_are_refused(optimizer, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fixed_point_of(optimizer)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: linalg.fixed_point(5, 0.1, momentum=1.0), "momentum must be < 1.*got 1.0"),
        (lambda: linalg.fixed_point(5, 0.1, momentum=-0.1), "momentum.*>= 0, got -0.1"),
        (lambda: fixed_point(5, 0.1, momentum=1.5), "fixed_point momentum must be < 1"),
        (lambda: polyak_parameters(0.0, 1.0), "needs 0 < low <= high"),
        (lambda: heavy_ball_rate(0.1, 0.5, 2.0, 1.0), "needs 0 < low <= high"),
    ],
)
def test_bad_momentum_options(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


# Exactness on the analytic problems (quadratic bilevel, ridge on diabetes, three levels) is
# tested through the cases ``fixed_point_*`` of ``tests/registry.py``, momentum included.
