"""``ziggurat check``: every method against exact answers on the built-in analytic problems."""

from __future__ import annotations

import torch

from ._verify import verify
from .analytic import LogisticHPO, QuadraticBilevel, RidgeHPO
from .hypergradient import (
    GaussNewton,
    Method,
    cg,
    darts,
    exact,
    first_order,
    fixed_point,
    gauss_newton,
    neumann,
    random_batches,
    sama,
    stochastic,
    unrolled,
)
from .optim import sgd


def _methods(lambda_max: float, curvature: GaussNewton | None = None) -> dict[str, Method]:
    alpha = 1.0 / lambda_max
    methods: dict[str, Method] = {
        "exact": exact(),
        "cg(10)": cg(10),
        "cg(tol=1e-10)": cg(500, 1e-10),
        "neumann(20)": neumann(20, alpha),
        "neumann(500)": neumann(500, alpha),
        "fixed_point(20)": fixed_point(20, alpha),
        "fixed_point(tol=1e-10)": fixed_point(20_000, alpha, tol=1e-10),
        "unrolled(500)": unrolled(sgd(alpha), 500),
        "darts": darts(),
        "sama": sama(),
        "first_order": first_order(),
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


def _logistic_block() -> str:
    problem = LogisticHPO.breast_cancer()
    w, lam, v = problem.point()
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
    report = verify(problem.inner, w, lam, v, methods=methods, repeats=1)
    return f"(c) per-feature L2 logistic regression on breast_cancer (31 parameters)\n{report}"


def run_check(seed: int = 0) -> str:
    """The tables printed by ``ziggurat check``."""
    blocks = []
    quad = QuadraticBilevel.make(seed=seed)
    w, lam, v = quad.point()
    lmax = float(torch.linalg.eigvalsh(quad.A).max())
    report = verify(quad.inner, w, lam, v, methods=_methods(lmax))
    blocks.append(f"(a) quadratic bilevel, 8 lower / 5 upper parameters\n{report}")
    try:
        ridge = RidgeHPO.diabetes()
    except ImportError:
        blocks.append(
            "(b) ridge HPO skipped: install scikit-learn (pip install 'ziggurat[examples]')"
        )
    else:
        w, lam, v = ridge.point()
        lmax = float(torch.linalg.eigvalsh(ridge.hessian(lam)).max())
        report = verify(ridge.inner, w, lam, v, methods=_methods(lmax, _ridge_gauss_newton(ridge)))
        blocks.append(f"(b) per-feature ridge HPO on diabetes (10 features)\n{report}")
        blocks.append(_logistic_block())
    return "\n\n".join(blocks)
