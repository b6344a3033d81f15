"""Dense direct solve: materialise ``H`` column by column, then factorise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import _checks, _tree
from .._types import MatVec, Params
from ._damping import damped
from ._divergence import check_residual, relative
from ._result import LinearSolver, SolveResult


def materialize(matvec: MatVec, like: Params) -> torch.Tensor:
    """The ``n x n`` matrix of ``matvec`` on trees shaped like ``like`` (``n`` products)."""
    n = _tree.numel(like)
    flat = _tree.flatten(like)
    basis = torch.eye(n, dtype=flat.dtype, device=flat.device)
    cols = [_tree.flatten(matvec(_tree.unflatten(basis[i], like))) for i in range(n)]
    return torch.stack(cols, dim=1) if cols else basis


@dataclass(frozen=True)
class Dense(LinearSolver):
    """Exact ``(H + damping I)^{-1} b`` by ``torch.linalg.solve`` on the materialised matrix.

    Costs ``n`` products and ``O(n^3)`` time: meant for tests, references and small problems.
    The residual is measured on the materialised matrix. A singular matrix and a right-hand
    side with a NaN or an infinity are ``ValueError``s; any other error of the solve (a dtype
    or device mismatch) propagates as it is.
    """

    damping: float = 0.0
    max_size: int = 20_000

    def __post_init__(self) -> None:
        _checks.non_negative("dense damping", self.damping)
        _checks.int_at_least("dense max_size", self.max_size, 1)

    def __call__(self, matvec: MatVec, b: Params, x0: Params | None = None) -> SolveResult:
        n = _tree.numel(b)
        if n > self.max_size:
            raise ValueError(
                f"dense solve: {n} unknowns exceed max_size={self.max_size}; "
                "use conjugate_gradient for large problems or raise max_size"
            )
        b_norm = _tree.finite_rhs_norm(b, "dense solve")
        h = materialize(damped(matvec, self.damping), b)
        rhs = _tree.flatten(b)
        try:
            sol = torch.linalg.solve(h, rhs)
        except torch.linalg.LinAlgError as err:  # only a singular matrix; other errors propagate
            raise ValueError(
                f"dense solve: the Hessian is singular ({err}); add damping > 0 "
                "(dense(damping=...), exact(damping=...)), or remove parameters the loss "
                "does not depend on"
            ) from err
        res = relative((rhs - h @ sol).norm(), b_norm)
        check_residual(res, "dense solve", _advice, bound=math.inf)
        return SolveResult(x=_tree.unflatten(sol, b), iterations=n, residual=res)


def _advice() -> str:
    return (
        "the materialised Hessian is not finite or numerically singular; check the lower loss "
        "for NaN, or add damping > 0 (dense(damping=...), exact(damping=...))"
    )


def dense(*, damping: float = 0.0, max_size: int = 20_000) -> Dense:
    """Build the dense direct solver.

    Examples:
        >>> import torch
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> def matvec(x):
        ...     return {"x": A @ x["x"]}
        >>> b = {"x": torch.tensor([1.0, 2.0], dtype=torch.float64)}
        >>> from ziggurat.linalg import dense
        >>> [round(x, 12) for x in dense()(matvec, b).x["x"].tolist()]
        [0.2, 0.6]
    """
    return Dense(damping=damping, max_size=max_size)
