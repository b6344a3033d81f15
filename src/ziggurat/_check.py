"""``ziggurat check``: every method against exact answers on the built-in analytic problems."""

from __future__ import annotations

import torch

from ._verify import verify
from .analytic import QuadraticBilevel, RidgeHPO
from .hypergradient import Method, cg, darts, exact, first_order, neumann, sama, unrolled
from .optim import sgd


def _methods(lambda_max: float) -> dict[str, Method]:
    alpha = 1.0 / lambda_max
    return {
        "exact": exact(),
        "cg(10)": cg(10),
        "cg(tol=1e-10)": cg(500, 1e-10),
        "neumann(20)": neumann(20, alpha),
        "neumann(500)": neumann(500, alpha),
        "unrolled(500)": unrolled(sgd(alpha), 500),
        "darts": darts(),
        "sama": sama(),
        "first_order": first_order(),
    }


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
        report = verify(ridge.inner, w, lam, v, methods=_methods(lmax))
        blocks.append(f"(b) per-feature ridge HPO on diabetes (10 features)\n{report}")
    return "\n\n".join(blocks)
