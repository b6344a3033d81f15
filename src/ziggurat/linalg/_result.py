"""The value every linear solver returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .._types import MatVec, Params


@dataclass(frozen=True)
class SolveResult:
    """Approximate solution of ``H x = b`` with its diagnostics.

    Attributes:
        x: the solution tree.
        iterations: operator applications the solver spent (Hessian-vector products).
        residual: relative residual ``||b - H x|| / ||b||``; see each solver for how it is
            obtained. ``nan`` when the solver does not measure it.
    """

    x: Params
    iterations: int
    residual: float


class LinearSolver(Protocol):
    """Anything with ``solve(matvec, b, x0=None) -> SolveResult`` semantics, called directly."""

    def __call__(self, matvec: MatVec, b: Params, x0: Params | None = None) -> SolveResult: ...


SolverFactory = Callable[..., LinearSolver]
