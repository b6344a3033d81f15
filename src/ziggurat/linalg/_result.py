"""The value every linear solver returns."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

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


class LinearSolver(abc.ABC):
    """``solver(matvec, b, x0=None) -> SolveResult``: approximately solve ``H x = b``.

    Every solver subclasses this base and declares what it does with its inputs: whether it
    applies the operator at all (``uses_operator``) and whether it starts from ``x0``
    (``warm_starts``), so that callers can keep the last solution for it.
    """

    @abc.abstractmethod
    def __call__(self, matvec: MatVec, b: Params, x0: Params | None = None) -> SolveResult:
        """Solve ``H x = b`` with ``H`` given by ``matvec``, from ``x0`` when warm-starting."""

    @property
    def uses_operator(self) -> bool:
        """Whether the solver calls ``matvec`` (the identity solver does not)."""
        return True

    @property
    def warm_starts(self) -> bool:
        """Whether the solver starts from ``x0`` when one is given."""
        return False


SolverFactory = Callable[..., LinearSolver]
