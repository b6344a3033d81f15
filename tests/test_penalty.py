"""The penalty method (F2SA / BOME): a best-response product from ordinary gradients.

The registry (``tests/registry.py``, cases ``penalty*``) checks it against fixed_point's iterates
on the analytic suite, two and three levels. Here: its bias against the number of steps and
against ``eps`` on a loss that is not quadratic, the sign convention, warm starts, diagnostics,
options, the ``Config`` path and a fused attention kernel.
"""

from __future__ import annotations

import math

import pytest
import torch

from test_gradient_curvature import attention_loss, attention_point, flat
from ziggurat import Config, linalg
from ziggurat._products import Linearization
from ziggurat.analytic import LogisticHPO, QuadraticBilevel
from ziggurat.hypergradient import (
    CONFIG_TYPES,
    PRESETS,
    DoubleBackward,
    FiniteDifference,
    GradientSecant,
    HopContext,
    Penalty,
    exact,
    fixed_point,
    from_name,
    penalty,
    penalty_of,
)
from ziggurat.optim import adam, sgd

D = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def logistic():
    """Logistic-regression HPO at its optimum: the exact answer, and ``1 / lambda_max``."""
    problem = LogisticHPO.breast_cancer()
    w, lam, v = problem.point()
    truth = exact()(problem.inner, w, lam, v).vjp["lam"]
    H = linalg.materialize(Linearization(problem.inner, w, lam).hvp, w)
    return problem, (w, lam, v), truth, 1.0 / float(torch.linalg.eigvalsh(H).max())


def test_error_falls_with_the_steps_as_fixed_point_does(logistic) -> None:
    """With the default ``eps`` the error is the solve's (fixed_point's with the same steps) until
    it meets the difference's floor: 0.246, 0.0495, 2.64e-4, then 8.0e-8 (float64)."""
    problem, (w, lam, v), truth, step = logistic
    errors = {}
    for k in (10, 30, 100, 300):
        got = penalty(k, step)(problem.inner, w, lam, v).vjp["lam"]
        errors[k] = rel(got, truth)
        if k <= 100:
            solve = rel(fixed_point(k, step)(problem.inner, w, lam, v).vjp["lam"], truth)
            assert errors[k] == pytest.approx(solve, rel=1e-2)
    assert 0.2 < errors[10] < 0.3
    assert 0.03 < errors[30] < 0.07
    assert 1e-4 < errors[100] < 5e-4
    assert errors[300] < 2e-7


def test_error_falls_with_eps_down_to_the_rounding_floor(logistic) -> None:
    """Solved to convergence, the bias is first order in ``eps``: 0.50 eps on this problem (the
    loss is not quadratic), until rounding, ``O(eps_mach / eps)``, takes over below 1e-7. The
    default ``eps`` lands near the best of the sweep (8.1e-8 against 5.3e-8)."""
    problem, (w, lam, v), truth, step = logistic
    steps = 421  # error of the solve below 1e-12

    def error(eps: float | None) -> float:
        got = penalty(steps, step, epsilon=eps)(problem.inner, w, lam, v).vjp["lam"]
        return rel(got, truth)

    sweep = {eps: error(eps) for eps in (1e-2, 1e-3, 1e-4, 1e-5, 1e-7, 1e-10)}
    for eps in (1e-2, 1e-3, 1e-4, 1e-5):
        assert 0.45 * eps < sweep[eps] < 0.55 * eps
    assert sweep[1e-10] > 100 * sweep[1e-7]  # the rounding floor
    default = error(None)
    assert default < 2e-7 and default < 3 * min(sweep.values())


def test_sign_convention_matches_the_implicit_function_theorem() -> None:
    """On a quadratic ``w*(lam) = A^{-1} B lam``: the product is ``+B^T A^{-1} v``, and the
    solution estimates ``H^{-1} v``."""
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()
    result = penalty(400, 0.1)(q.inner, w, lam, v)
    assert rel(result.vjp["lam"], q.B.T @ torch.linalg.solve(q.A, v["w"])) < 1e-7
    assert result.info.solution is not None
    assert rel(result.info.solution["w"], torch.linalg.solve(q.A, v["w"])) < 1e-7


def test_linearised_at_the_given_point_even_when_it_is_not_stationary(logistic) -> None:
    """Away from the optimum the tilt ``- <grad_w f(w), .>`` keeps ``w`` the perturbed problem's
    solution at ``eps = 0``, so the answer is the implicit formula at that ``w`` (what every
    implicit method computes); without the tilt the descent would drift towards the optimum and
    the difference would divide that drift by ``eps``."""
    problem, (w, lam, v), _, step = logistic
    moved = {k: t + 0.05 for k, t in w.items()}
    leaves = {k: t.clone().requires_grad_() for k, t in moved.items()}
    grad = torch.autograd.grad(problem.inner(leaves, lam), list(leaves.values()))
    assert float(torch.cat([g.reshape(-1) for g in grad]).norm()) > 1e-3  # not stationary
    truth = exact()(problem.inner, moved, lam, v).vjp["lam"]
    got = penalty(1000, step)(problem.inner, moved, lam, v).vjp["lam"]
    assert rel(got, truth) < 1e-6


def test_warm_start_and_diagnostics() -> None:
    """A cold call spends ``steps + 3`` gradients, a warm one ``steps + 4``. From the exact
    ``H^{-1} v`` one step is enough; the residual is ``||v - H x|| / ||v||`` of the solution."""
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()
    x_star = torch.linalg.solve(q.A, v["w"])
    cold = penalty(5, 0.1, warm_start=True)(q.inner, w, lam, v)
    assert cold.info.iterations == 8 and cold.info.method == "penalty"
    x = cold.info.solution["w"]
    assert cold.info.residual == pytest.approx(
        float((v["w"] - q.A @ x).norm() / v["w"].norm()), rel=1e-5
    )
    assert cold.info.residual > 0.05  # five steps of a solve with condition number 10
    warm = penalty(1, 0.1, warm_start=True)(
        q.inner, w, lam, v, HopContext(warm_start={"w": x_star})
    )
    assert warm.info.iterations == 5
    assert warm.info.residual < 1e-6
    assert rel(warm.vjp["lam"], q.exact_vjp(v)["lam"]) < 1e-6
    ignored = penalty(1, 0.1)(q.inner, w, lam, v, HopContext(warm_start={"w": x_star}))
    assert ignored.info.iterations == 4 and ignored.info.residual > 0.1
    assert penalty(warm_start=True).warm_starts and not penalty().warm_starts


def test_capabilities() -> None:
    method = penalty()
    assert method.first_order_only and method.finite_differences and method.reads_cotangent
    assert not method.needs_preconditioner and not method.follows_trajectory
    assert method.curvature == GradientSecant()
    # a data-parallel wrapper reaches the descent's gradient changes through its curvature
    wrapped = method.with_curvature(lambda c: FiniteDifference(radius=1.0))
    assert wrapped == penalty(curvature=FiniteDifference(radius=1.0))
    assert not penalty(curvature=DoubleBackward()).first_order_only
    with pytest.raises(ValueError, match="penalty curvature must be a"):
        Penalty(curvature="secant")  # type: ignore[arg-type]


def test_zero_cotangent_gives_zero() -> None:
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()
    result = penalty()(q.inner, w, lam, {"w": torch.zeros_like(v["w"])})
    assert torch.equal(result.vjp["lam"], torch.zeros_like(lam["lam"]))
    assert result.info.iterations == 0


def test_a_non_finite_cotangent_is_refused() -> None:
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()
    with pytest.raises(ValueError, match="penalty: the right-hand side b"):
        penalty()(q.inner, w, lam, {"w": torch.full_like(v["w"], math.nan)})


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"steps": 0}, r"penalty steps must be an integer >= 1, got 0"),
        ({"step": 0.0}, r"penalty step must be a finite number > 0, got 0.0"),
        ({"epsilon": -1e-3}, r"penalty epsilon must be a finite number > 0, got -0.001"),
        ({"momentum": 1.0}, r"penalty momentum must be < 1 \(.*\), got 1.0"),
        ({"momentum": -0.5}, r"penalty momentum must be a finite number >= 0, got -0.5"),
        ({"damping": -1.0}, r"penalty damping must be a finite number >= 0, got -1.0"),
        ({"warm_start": "yes"}, r"penalty warm_start must be True or False, got 'yes'"),
    ],
)
def test_options_are_checked(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        penalty(**options)


def test_penalty_of_reads_the_lower_levels_sgd() -> None:
    method = penalty_of(sgd(0.05, momentum=0.9, dampening=0.2, weight_decay=1e-3), 20)
    assert method == Penalty(20, 0.05 * 0.8, None, 0.9, 1e-3, False)
    with pytest.raises(ValueError, match="penalty_of: adam's normalised steps"):
        penalty_of(adam(1e-3))
    with pytest.raises(ValueError, match=r"penalty_of: sgd with nesterov=True .* use penalty\("):
        penalty_of(sgd(0.1, momentum=0.9, nesterov=True))


def test_damping_is_the_lower_levels_weight_decay() -> None:
    """With ``damping = c`` the answer is the best response of ``f + c/2 ||w||^2`` (H + c I), as
    :func:`fixed_point` with the same damping computes."""
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()
    got = penalty(300, 0.08, damping=0.5)(q.inner, w, lam, v).vjp["lam"]
    eye = torch.eye(q.A.shape[0], dtype=D)
    assert rel(got, q.B.T @ torch.linalg.solve(q.A + 0.5 * eye, v["w"])) < 1e-7


def test_float32_and_bfloat16_parameters() -> None:
    """The displacement and the difference are kept in float32 for bf16 parameters; the answer
    has the parameters' dtypes. On this quadratic: float32 1.8e-4 (about ``sqrt(eps)``, the
    floor of a one-sided difference), bf16 parameters 0.028."""
    q = QuadraticBilevel.make(seed=0)
    w, lam, v = q.point()
    truth = q.exact_vjp(v)["lam"]
    for dtype, bound in ((torch.float32, 2e-3), (torch.bfloat16, 0.1)):
        A, B = q.A.to(dtype), q.B.to(dtype)

        def inner(w_, lam_, A=A, B=B):
            x = w_["w"]
            return 0.5 * x @ A @ x - x @ B @ lam_["lam"]

        cast = [{k: t.to(dtype) for k, t in tree.items()} for tree in (w, lam, v)]
        result = penalty(300, 0.08)(inner, *cast)
        assert result.vjp["lam"].dtype == dtype and result.info.solution["w"].dtype == dtype
        assert rel(result.vjp["lam"].double(), truth) < bound


# ---------------------------------------------------------------- presets and Config
def test_preset_and_config_type() -> None:
    assert PRESETS["penalty"] is penalty and "penalty" in CONFIG_TYPES
    assert from_name("penalty", steps=3) == penalty(3)
    config = Config(
        type="penalty",
        penalty_steps=7,
        penalty_step=0.2,
        penalty_epsilon=1e-4,
        penalty_momentum=0.5,
        penalty_warm_start=True,
    )
    assert config.method() == penalty(7, 0.2, epsilon=1e-4, momentum=0.5, warm_start=True)
    assert Config(type="penalty").method() == penalty()
    assert Config(type="penalty", curvature="finite_difference").method() == penalty()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"penalty_steps": 0}, "Config penalty_steps must be an integer >= 1, got 0"),
        ({"penalty_step": -1.0}, "Config penalty_step must be a finite number > 0"),
        ({"penalty_epsilon": 0.0}, "Config penalty_epsilon must be a finite number > 0"),
        ({"penalty_momentum": 1.0}, "Config penalty_momentum must be < 1, got 1.0"),
        ({"penalty_warm_start": 1}, "Config penalty_warm_start must be True or False"),
    ],
)
def test_config_options_are_checked(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Config(type="penalty", **options)


def test_fused_attention() -> None:
    """Through ``scaled_dot_product_attention`` (no double backward on the CPU kernel), against
    the double-backward answer of the unfused maths: 1e-6 in float64."""
    w, lam, v = attention_point()
    truth = flat(exact()(attention_loss(fused=False), w, lam, v).vjp)
    got = flat(penalty(300, 0.45)(attention_loss(fused=True), w, lam, v).vjp)
    assert rel(got, truth) < 1e-6
