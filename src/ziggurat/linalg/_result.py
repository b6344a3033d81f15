"""The value every linear solver returns."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from .._types import MatVec, Params


@dataclass(frozen=True)
class SolveResult:
    """Approximate solution of ``H x = b`` with its diagnostics.

    Attributes:
        x: the solution tree.
        iterations: operator applications the solver spent (Hessian-vector products).
        residual_value: relative residual ``||b - H x|| / ||b||`` as the solver computed it, a
            0-dim tensor (no host sync until read) or a float; see each solver for how it is
            obtained. ``nan`` when the solver does not measure it. :attr:`residual` reads it
            as a float.
    """

    x: Params
    iterations: int
    residual_value: float | Tensor

    def __init__(self, x: Params, iterations: int, residual: float | Tensor) -> None:
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "iterations", iterations)
        object.__setattr__(self, "residual_value", residual)

    @property
    def residual(self) -> float:
        """The relative residual as a float (a host sync when it is a tensor)."""
        return float(self.residual_value)


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
