"""The fixed-point solver (Grazzi et al. 2020) and its preset."""

from __future__ import annotations

import pytest
import torch

from ziggurat import linalg
from ziggurat.analytic import random_spd
from ziggurat.hypergradient import PRESETS, fixed_point, from_name


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
    bad = linalg.fixed_point(300, 0.55)(op(h), b)
    assert bad.residual > 1e3


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


# Exactness on the analytic problems (quadratic bilevel, ridge on diabetes, three levels) is
# tested through the cases ``fixed_point_*`` of ``tests/registry.py``.
