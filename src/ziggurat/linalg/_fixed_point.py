"""Fixed-point iteration for ``H x = b`` (Grazzi, Franceschi, Pontil & Salzo, ICML 2020).

When the lower problem is solved by gradient descent with step ``eta``, its solution is a fixed
point of ``Phi(w) = w - eta grad_w f(w, lam)``. Differentiating ``w = Phi(w)`` gives the linear
fixed-point equation ``x = x - eta (H x - b)`` whose solution is ``H^{-1} b``; iterating it is the
"fixed-point method" of Grazzi et al. (2020), the linear analogue of running the inner solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _checks, _tree
from .._types import MatVec, Params
from ._damping import damped
from ._result import SolveResult


@dataclass(frozen=True)
class FixedPoint:
    """Iterate ``x_{k+1} = x_k - step (H x_k - b)`` from ``x_0`` (zero unless warm-started).

    With ``x_0 = 0`` the iterates are the partial sums of the Neumann series,
    ``x_k = step * sum_{j<k} (I - step H)^j b``, so the error contracts like
    ``(1 - step mu)^k`` when ``0 < step < 2 / lambda_max(H)`` and ``mu = lambda_min(H) > 0``
    (Grazzi et al. 2020, Theorem 2).

    Relation to :class:`~ziggurat.linalg.Neumann`: for the same number ``K`` of operator
    applications, ``neumann(K, alpha)`` returns the iterate ``x_{K+1}`` and reports the residual
    of ``x_K``, whereas ``fixed_point(K, step)`` returns ``x_K`` and reports the exact residual
    ``||b - H x_K|| / ||b||`` of what it returns, measured directly (no recurrence, so no drift).
    Each product is spent on that residual, which also lets it stop early once the residual is
    at most ``tol`` and start from a previous solution ``x0``.

    Each of the ``iterations`` updates costs one operator application, spent on the residual
    of the new iterate; a warm start ``x0`` costs one more, for its initial residual.
    ``SolveResult.iterations`` counts the applications actually spent.
    """

    iterations: int = 10
    step: float = 1.0
    tol: float | None = None
    damping: float = 0.0

    def __post_init__(self) -> None:
        _checks.int_at_least("fixed_point iterations", self.iterations, 1)
        _checks.positive("fixed_point step", self.step)
        if self.tol is not None:
            _checks.positive("fixed_point tol", self.tol)
        _checks.non_negative("fixed_point damping", self.damping)

    def __call__(self, matvec: MatVec, b: Params, x0: Params | None = None) -> SolveResult:
        op = damped(matvec, self.damping)
        b_norm = float(_tree.norm(b))
        if b_norm == 0.0 or not math.isfinite(b_norm):
            return SolveResult(
                x=_tree.zeros_like(b), iterations=0, residual=0.0 if b_norm == 0 else b_norm
            )
        stop = 0.0 if self.tol is None else self.tol * b_norm
        used = 0
        if x0 is None:
            x, r = _tree.zeros_like(b), b
        else:
            _tree.check_same_shapes(b, x0, "fixed_point warm start x0")
            x, r = x0, _tree.sub(b, op(x0))
            used = 1
        r_norm = float(_tree.norm(r))
        for _ in range(self.iterations):
            if r_norm <= stop or not math.isfinite(r_norm):
                break
            x = _tree.axpy(self.step, r, x)
            r = _tree.sub(b, op(x))
            used += 1
            r_norm = float(_tree.norm(r))
        return SolveResult(x=x, iterations=used, residual=r_norm / b_norm)


def fixed_point(
    iterations: int = 10, step: float = 1.0, *, tol: float | None = None, damping: float = 0.0
) -> FixedPoint:
    """Build the fixed-point (linearised gradient-descent) solver."""
    return FixedPoint(iterations=iterations, step=step, tol=tol, damping=damping)
