"""Truncated Neumann series for ``H^{-1} b`` (Lorraine, Vicol & Duvenaud, AISTATS 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import _checks, _tree
from .._types import MatVec, Params
from ._damping import damped
from ._divergence import check_residual, relative, step_bound
from ._result import LinearSolver, SolveResult


@dataclass(frozen=True)
class Neumann(LinearSolver):
    """``x = alpha * sum_{k=0..K} (I - alpha H)^k b`` with ``K = iterations``.

    Converges to ``H^{-1} b`` when ``0 < alpha < 2 / lambda_max(H)`` and ``H`` is positive
    definite; the error is ``(I - alpha H)^{K+1} H^{-1} b``, so it shrinks like
    ``(1 - alpha mu)^K`` for the smallest eigenvalue ``mu``. Costs ``K`` operator
    applications. The reported residual is ``||(I - alpha H)^K b|| / ||b||``, which is the exact
    residual of the series truncated one term earlier (measuring the returned iterate's own
    residual would cost one more product); it bounds the true one from above whenever
    ``||I - alpha H|| <= 1``. A right-hand side with a NaN or an infinity is a ``ValueError``.
    """

    iterations: int = 1
    alpha: float = 1.0
    damping: float = 0.0

    def __post_init__(self) -> None:
        _checks.int_at_least("neumann iterations", self.iterations, 0)
        _checks.positive("neumann alpha", self.alpha)
        _checks.non_negative("neumann damping", self.damping)

    def __call__(self, matvec: MatVec, b: Params, x0: Params | None = None) -> SolveResult:
        op = damped(matvec, self.damping)
        b_norm = _tree.finite_rhs_norm(b, "neumann")
        term = total = b
        # the first update allocates the iterates (b is the caller's); the rest run in place
        for i in range(self.iterations):
            if i == 0:
                term = _tree.axpy(-self.alpha, op(term), term)
                total = _tree.add(total, term)
            else:
                term = _tree.axpy_(-self.alpha, op(term), term)
                total = _tree.add_(total, term)
        res = relative(_tree.norm(term), b_norm)  # a tensor: no host sync
        check_residual(res, "neumann", lambda: self._advice(op, b))
        x = _tree.scale_(total, self.alpha) if self.iterations else _tree.scale(b, self.alpha)
        return SolveResult(x=x, iterations=self.iterations, residual=res)

    def _advice(self, op: MatVec, b: Params) -> str:
        bound = step_bound(op, b, lambda top: 2.0 / top)
        return (
            f"the Neumann series converges only for 0 < alpha < 2 / lambda_max(H) and alpha is "
            f"{self.alpha:g}; {bound}. Lower alpha (Config(neumann_alpha=...)), or use cg"
        )


def neumann(iterations: int = 1, alpha: float = 1.0, *, damping: float = 0.0) -> Neumann:
    """Build a Neumann-series solver with ``iterations`` Hessian-vector products.

    Examples:
        Converges when ``alpha < 2 / lambda_max`` (here ``lambda_max`` is about 3.6):

        >>> import torch
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> def matvec(x):
        ...     return {"x": A @ x["x"]}
        >>> b = {"x": torch.tensor([1.0, 2.0], dtype=torch.float64)}
        >>> from ziggurat.linalg import neumann
        >>> [round(x, 6) for x in neumann(100, alpha=0.4)(matvec, b).x["x"].tolist()]
        [0.2, 0.6]
    """
    return Neumann(iterations=iterations, alpha=alpha, damping=damping)


__all__ = ["Neumann", "neumann"]
