from __future__ import annotations

import itertools
import math

import pytest
import torch

from ziggurat import linalg
from ziggurat.analytic import random_spd


def system(n: int, low: float, high: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = random_spd(n, low, high, g, torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return h, {"x": b}


def op(h):
    return lambda u: {"x": h @ u["x"]}


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("n", [1, 5, 20, 40])
def test_cg_exact_in_n_iterations(n: int) -> None:
    h, b = system(n, 0.5, 20.0, seed=n)
    res = linalg.conjugate_gradient(maxiter=n, tol=1e-300)(op(h), b)
    assert rel(res.x["x"], torch.linalg.solve(h, b["x"])) < 1e-10
    assert res.iterations <= n
    true_res = float((b["x"] - h @ res.x["x"]).norm() / b["x"].norm())
    assert res.residual == pytest.approx(true_res, abs=1e-10)


def test_cg_stops_early_on_tolerance_and_reports_residual() -> None:
    h, b = system(50, 1.0, 2.0)  # well conditioned: converges long before n
    res = linalg.conjugate_gradient(maxiter=50, tol=1e-6)(op(h), b)
    assert res.iterations < 20
    assert res.residual <= 1e-6
    assert rel(res.x["x"], torch.linalg.solve(h, b["x"])) < 1e-5


def test_cg_warm_start_from_solution_needs_one_product() -> None:
    h, b = system(10, 1.0, 10.0)
    x = {"x": torch.linalg.solve(h, b["x"])}
    res = linalg.conjugate_gradient(maxiter=10, tol=1e-8, warm_start=True)(op(h), b, x)
    assert res.iterations == 1
    assert rel(res.x["x"], x["x"]) < 1e-12


def test_cg_zero_rhs_and_converged_give_no_nan() -> None:
    h, b = system(4, 1.0, 3.0)
    res = linalg.conjugate_gradient(maxiter=100, tol=1e-300)(op(h), b)
    assert torch.isfinite(res.x["x"]).all()
    zero = linalg.conjugate_gradient(maxiter=5)(op(h), {"x": torch.zeros(4, dtype=torch.float64)})
    assert torch.equal(zero.x["x"], torch.zeros(4, dtype=torch.float64))


def test_cg_stops_on_negative_curvature() -> None:
    h = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    res = linalg.conjugate_gradient(maxiter=10)(
        op(h), {"x": torch.tensor([0.0, 1.0], dtype=torch.float64)}
    )
    assert res.iterations == 1 and res.residual == pytest.approx(1.0)


@pytest.mark.parametrize("K", [5, 20, 60])
def test_neumann_error_follows_contraction_rate(K: int) -> None:
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    eig = torch.linspace(0.2, 4.0, 12, dtype=torch.float64)
    h = (q * eig) @ q.T
    # right-hand side dominated by the slowest mode
    b = {"x": q[:, 0] + 1e-3 * torch.randn(12, generator=g, dtype=torch.float64)}
    alpha = 0.4  # < 2 / 4.0
    res = linalg.neumann(K, alpha)(op(h), b)
    err = rel(res.x["x"], torch.linalg.solve(h, b["x"]))
    rate = (1 - alpha * 0.2) ** K
    assert rate / 2 <= err <= 2 * rate


def test_neumann_converges_below_two_over_lambda_max_and_diverges_above() -> None:
    h, b = system(8, 0.5, 4.0)
    exact = torch.linalg.solve(h, b["x"])
    good = linalg.neumann(400, 0.45)(op(h), b)  # 0.45 < 2/4
    assert rel(good.x["x"], exact) < 1e-10
    # 0.55 > 2/4: the series diverges, which is an error naming the bound, not an answer
    with pytest.raises(
        FloatingPointError,
        match=r"neumann: the solve diverged.*alpha is 0\.55.*"
        r"lambda_max ~ 4 .*below 0\.5\b",
    ):
        linalg.neumann(400, 0.55)(op(h), b)


def test_neumann_residual_is_that_of_the_previous_partial_sum() -> None:
    h, b = system(6, 1.0, 3.0)
    res = linalg.neumann(4, 0.3)(op(h), b)
    prev = linalg.neumann(3, 0.3)(op(h), b)
    true = float((b["x"] - h @ prev.x["x"]).norm() / b["x"].norm())
    assert res.residual == pytest.approx(true, rel=1e-10)


def test_dense_and_damping() -> None:
    h, b = system(7, 1.0, 5.0)
    res = linalg.dense()(op(h), b)
    assert rel(res.x["x"], torch.linalg.solve(h, b["x"])) < 1e-12
    damped = linalg.dense(damping=0.5)(op(h), b)
    target = torch.linalg.solve(h + 0.5 * torch.eye(7, dtype=torch.float64), b["x"])
    assert rel(damped.x["x"], target) < 1e-12
    cg = linalg.conjugate_gradient(maxiter=7, tol=1e-300, damping=0.5)(op(h), b)
    assert rel(cg.x["x"], target) < 1e-10
    neu = linalg.neumann(300, 0.15, damping=0.5)(op(h), b)
    assert rel(neu.x["x"], target) < 1e-10


def test_dense_singular_matrix_names_the_fix() -> None:
    h = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="damping"):
        linalg.dense()(op(h), {"x": torch.ones(3, dtype=torch.float64)})


def test_identity_solver() -> None:
    res = linalg.identity(2.0)(op(torch.eye(3)), {"x": torch.ones(3)})
    assert torch.equal(res.x["x"], torch.full((3,), 2.0)) and res.iterations == 0
    assert math.isnan(res.residual)


def test_tree_solvers_handle_several_leaves() -> None:
    h, b = system(9, 1.0, 5.0)
    tree_b = {"a": b["x"][:4].reshape(2, 2), "b": b["x"][4:]}

    def tree_op(u):
        flat = torch.cat([u["a"].reshape(-1), u["b"]])
        y = h @ flat
        return {"a": y[:4].reshape(2, 2), "b": y[4:]}

    res = linalg.conjugate_gradient(maxiter=9, tol=1e-300)(tree_op, tree_b)
    flat = torch.cat([res.x["a"].reshape(-1), res.x["b"]])
    assert rel(flat, torch.linalg.solve(h, b["x"])) < 1e-10


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: linalg.neumann(-1, 1.0), "neumann iterations.*-1"),
        (lambda: linalg.neumann(3, 0.0), "neumann alpha.*0.0"),
        (lambda: linalg.neumann(3, -2.0), "neumann alpha.*-2.0"),
        (lambda: linalg.conjugate_gradient(0), "cg maxiter.*0"),
        (lambda: linalg.conjugate_gradient(5, tol=0.0), "cg tol.*0.0"),
        (lambda: linalg.conjugate_gradient(5, tol=-1e-3), "cg tol"),
        (lambda: linalg.conjugate_gradient(5, damping=-1.0), "cg damping.*-1.0"),
        (lambda: linalg.identity(0.0), "identity scale"),
        (lambda: linalg.dense(damping=float("nan")), "dense damping"),
        (lambda: linalg.minres(0), "minres maxiter.*0"),
        (lambda: linalg.minres(5, tol=0.0), "minres tol"),
        (lambda: linalg.minres(5, damping=-1.0), "minres damping"),
    ],
)
def test_bad_solver_options_fail_at_construction(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


SOLVERS = {
    "cg": (linalg.conjugate_gradient(5), "cg"),
    "cg_warm": (linalg.conjugate_gradient(5, warm_start=True), "cg"),
    "neumann": (linalg.neumann(5, 0.1), "neumann"),
    "neumann_0": (linalg.neumann(0, 0.1), "neumann"),
    "fixed_point": (linalg.fixed_point(5, 0.1), "fixed_point"),
    "dense": (linalg.dense(), "dense solve"),
    "minres": (linalg.minres(5), "minres"),
}
"""The identity solver (DARTS) does not inspect ``b``: the finite-difference mixed product that
follows it refuses a non-finite cotangent (``test_core_robustness.py``)."""


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_a_non_finite_right_hand_side_is_refused_by_every_solver(name: str, bad: float) -> None:
    """Never zeros or a residual of 0 for a NaN cotangent: a ``ValueError`` naming it."""
    solver, label = SOLVERS[name]
    h, b = system(3, 1.0, 2.0)
    calls: list[int] = []

    def counted(u):
        calls.append(1)
        return op(h)(u)

    bad_b = {"x": b["x"], "y": torch.tensor([1.0, bad], dtype=torch.float64)}
    pattern = (
        rf"{label}: the right-hand side b \(the cotangent v = dF/dw.*non-finite entries in \['y'\]"
    )
    with pytest.raises(ValueError, match=pattern):
        solver(counted, bad_b, x0={k: torch.zeros_like(t) for k, t in bad_b.items()})
    assert calls == []  # refused before spending a product


def test_an_overflowing_norm_is_named_as_such() -> None:
    big = {"x": torch.full((4,), 1e200, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"\|\|b\|\| = inf, its norm overflows the dtype"):
        linalg.conjugate_gradient(5)(op(torch.eye(4, dtype=torch.float64)), big)


def test_dense_reports_only_a_singular_matrix_as_singular() -> None:
    """Any other failure of the solve (here a dtype mismatch) propagates with its own message
    instead of "the Hessian is singular ... add damping"."""
    h = torch.eye(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="dtype") as e:
        linalg.dense()(lambda u: {"x": h @ u["x"].double()}, {"x": torch.ones(3)})
    assert "singular" not in str(e.value)
    with pytest.raises(ValueError, match=r"Hessian is singular.*damping > 0") as singular:
        linalg.dense()(op(torch.zeros(3, 3, dtype=torch.float64)), {"x": torch.ones(3).double()})
    assert isinstance(singular.value.__cause__, torch.linalg.LinAlgError)


def indefinite(n: int, seed: int = 0):
    """A symmetric matrix with eigenvalues in [-3, -0.5] and [0.5, 10], and a right-hand side."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    ev = torch.cat(
        [
            -torch.linspace(0.5, 3.0, n // 3, dtype=torch.float64),
            torch.linspace(0.5, 10.0, n - n // 3, dtype=torch.float64),
        ]
    )
    return q @ torch.diag(ev) @ q.T, {"x": torch.randn(n, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("n", [9, 30])
def test_minres_solves_indefinite_systems_where_cg_stops(n: int) -> None:
    h, b = indefinite(n, seed=n)
    exact = torch.linalg.solve(h, b["x"])
    res = linalg.minres(maxiter=3 * n, tol=1e-12)(op(h), b)
    assert rel(res.x["x"], exact) < 1e-9 and res.residual <= 1e-12
    cg = linalg.conjugate_gradient(maxiter=3 * n, tol=1e-12)(op(h), b)
    assert cg.residual > 1e-3  # stopped at the first negative curvature


def test_minres_residual_is_exact_and_never_grows() -> None:
    h, b = indefinite(20, seed=3)
    solver = linalg.minres(maxiter=20, tol=None)
    recorded = [(float(r), x["x"]) for _, x, r in solver.iterates(op(h), b)]
    for r, x in recorded:
        true = float((b["x"] - h @ x).norm() / b["x"].norm())
        assert r == pytest.approx(true, abs=1e-12)
    residuals = [r for r, _ in recorded]
    assert all(b <= a + 1e-14 for a, b in itertools.pairwise(residuals))
    assert len(recorded) == 20 and residuals[-1] < 1e-10


def test_minres_damping_and_zero_rhs() -> None:
    h, b = system(6, 1.0, 5.0)
    res = linalg.minres(maxiter=6, tol=None, damping=0.5)(op(h), b)
    exact = torch.linalg.solve(h + 0.5 * torch.eye(6, dtype=torch.float64), b["x"])
    assert rel(res.x["x"], exact) < 1e-10
    zero = linalg.minres(4)(op(h), {"x": torch.zeros(6, dtype=torch.float64)})
    assert float(zero.x["x"].abs().max()) == 0.0 and zero.residual == 0.0
