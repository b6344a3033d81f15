"""``ziggurat check``: every method against exact answers on the built-in analytic problems."""

from __future__ import annotations

import torch

from .._types import Params
from ..analytic import BernoulliReward, BilevelFixture, LogisticHPO, QuadraticBilevel, RidgeHPO
from ..hypergradient import (
    Baseline,
    ConstantBaseline,
    FiniteDifference,
    GaussNewton,
    LeaveOneOut,
    Method,
    MixedFiniteDifference,
    NoBaseline,
    cg,
    darts,
    exact,
    first_order,
    fixed_point,
    gauss_newton,
    neumann,
    penalty,
    random_batches,
    reinforce,
    sama,
    stochastic,
    unrolled,
)
from ..linalg import polyak_parameters
from ..optim import sgd
from ._estimator import Estimator, verify_estimator
from ._verify import verify

FD_H, FD_M = FiniteDifference(), MixedFiniteDifference()
"""Products from gradients alone, for the ``+FD`` rows."""


def check_methods(
    spectrum: tuple[float, float], curvature: GaussNewton | None = None
) -> dict[str, Method]:
    """The rows of tables (a) and (b): every preset, tuned to a Hessian's spectrum.

    The rows ending in ``+FD`` take every product from gradients (``FiniteDifference`` and
    ``MixedFiniteDifference``: only first-order autograd), and ``penalty`` is the penalty
    method (F2SA / BOME), first-order as well; their error is that of their solve plus the
    floor of a difference (``benchmarks/RESULTS_fd.md``).

    Args:
        spectrum: the smallest and largest eigenvalue of the lower Hessian, which set the
            Neumann and fixed-point step ``1 / lambda_max`` and Polyak's heavy-ball momentum.
        curvature: a Gauss-Newton model of the problem, which adds its two rows.
    """
    lambda_min, lambda_max = spectrum
    alpha = 1.0 / lambda_max
    step, beta = polyak_parameters(lambda_min, lambda_max)
    methods: dict[str, Method] = {
        "exact": exact(),
        "cg(10)": cg(10),
        "cg(tol=1e-10)": cg(500, 1e-10),
        "neumann(20)": neumann(20, alpha),
        "neumann(500)": neumann(500, alpha),
        "fixed_point(20)": fixed_point(20, alpha),
        "fixed_point(tol=1e-10)": fixed_point(20_000, alpha, tol=1e-10),
        "fixed_point(20)+momentum": fixed_point(20, step, momentum=beta),
        "fixed_point(tol=1e-10)+momentum": fixed_point(20_000, step, momentum=beta, tol=1e-10),
        "unrolled(500)": unrolled(sgd(alpha), 500),
        "darts": darts(),
        "sama": sama(),
        "first_order": first_order(),
        "exact+FD": exact(curvature=FD_H, mixed=FD_M),
        "cg(tol=1e-10)+FD": cg(500, 1e-10, curvature=FD_H, mixed=FD_M),
        "neumann(500)+FD": neumann(500, alpha, curvature=FD_H, mixed=FD_M),
        "fixed_point(tol=1e-10)+momentum+FD": fixed_point(
            20_000, step, momentum=beta, tol=1e-10, curvature=FD_H, mixed=FD_M
        ),
        "penalty(20)": penalty(20, alpha),
        "penalty(500)": penalty(500, alpha),
    }
    if curvature is not None:
        methods["cg(tol=1e-10)+GN"] = cg(500, 1e-10, curvature=curvature)
        methods["fixed_point(tol=1e-10)+GN"] = fixed_point(
            20_000, alpha, tol=1e-10, curvature=curvature
        )
    return methods


def _ridge_gauss_newton(ridge: RidgeHPO) -> GaussNewton:
    """``1/2 ||X w - y||^2``: a convex loss of a linear model, so Gauss-Newton is the Hessian."""
    return gauss_newton(
        lambda w, lam: ridge.X @ w["w"],
        lambda out: 0.5 * (out - ridge.y).pow(2).sum(),
        regularizer=lambda w, lam: 0.5 * (lam["lam"] * w["w"] ** 2).sum(),
    )


def _bilevel_block(
    title: str, fixture: BilevelFixture, methods: dict[str, Method], repeats: int = 3
) -> str:
    """``title`` over the :func:`verify` table of ``methods`` at the fixture's point."""
    w, lam, v = fixture.point()
    report = verify(fixture.inner, w, lam, v, methods=methods, repeats=repeats)
    return f"{title}\n{report}"


def _logistic_block() -> str:
    problem = LogisticHPO.breast_cancer()
    gn = gauss_newton(
        lambda w, lam: problem.X @ w["w"] + w["b"],
        lambda out: torch.nn.functional.binary_cross_entropy_with_logits(out, problem.y),
        regularizer=lambda w, lam: 0.5 * (lam["lam"].exp() * w["w"] ** 2).sum(),
    )
    sampler = random_batches(problem.X, problem.y, batch_size=32, seed=0)
    methods: dict[str, Method] = {
        "cg(tol=1e-10)": cg(500, 1e-10),
        "cg(tol=1e-10)+GN": cg(500, 1e-10, curvature=gn),
        "stochastic(1x32)": stochastic(problem.batch_loss, sampler, num_batches=1),
        "stochastic(16x32)": stochastic(problem.batch_loss, sampler, num_batches=16),
        "darts": darts(),
    }
    title = "(c) per-feature L2 logistic regression on breast_cancer (31 parameters)"
    return _bilevel_block(title, problem, methods, repeats=1)


def _reinforce_block() -> str:
    problem = BernoulliReward.make()
    lam = problem.lam()
    baselines: dict[str, Baseline] = {
        "none": NoBaseline(),
        "constant(5)": ConstantBaseline(problem.offset),
        "leave-one-out": LeaveOneOut(),
    }

    def estimator(baseline: Baseline) -> Estimator:
        method = reinforce(8, baseline=baseline)

        def estimate(gen: torch.Generator) -> Params:
            return method(problem.log_prob, problem.sample, problem.reward, lam, gen).grad

        return estimate

    estimators = {f"reinforce(8, {k})": estimator(b) for k, b in baselines.items()}
    report = verify_estimator(estimators, problem.expected_gradient(lam), estimates=400)
    return (
        "(d) REINFORCE: gradient of E[R(z)] over 4 independent Bernoulli draws, in closed form\n"
        "(a score-function estimate of an expectation, not a best-response product)\n"
        f"{report}"
    )


def _spectrum(hessian: torch.Tensor) -> tuple[float, float]:
    eig = torch.linalg.eigvalsh(hessian)
    return float(eig.min()), float(eig.max())


def run_check(seed: int = 0) -> str:
    """The tables printed by ``ziggurat check``."""
    blocks = []
    quad = QuadraticBilevel.make(seed=seed)
    title = "(a) quadratic bilevel, 8 lower / 5 upper parameters"
    blocks.append(_bilevel_block(title, quad, check_methods(_spectrum(quad.A))))
    try:
        ridge = RidgeHPO.diabetes()
    except ImportError:
        blocks.append(
            "(b) ridge HPO skipped: install scikit-learn (pip install 'ziggurat[examples]')"
        )
    else:
        spectrum = _spectrum(ridge.hessian({"lam": ridge.lam0}))
        methods = check_methods(spectrum, _ridge_gauss_newton(ridge))
        title = "(b) per-feature ridge HPO on diabetes (10 features)"
        blocks.append(_bilevel_block(title, ridge, methods))
        blocks.append(_logistic_block())
    blocks.append(_reinforce_block())
    return "\n\n".join(blocks)
