"""Identity "solver": ``H^{-1} b ~ scale * b`` (no curvature; the DARTS assumption)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _checks, _tree
from .._types import MatVec, Params
from ._result import LinearSolver, SolveResult


@dataclass(frozen=True)
class Identity(LinearSolver):
    """Approximates ``H^{-1}`` by ``scale * I``; spends no operator application.

    The residual is not measured (it would cost a Hessian-vector product) and is ``nan``. It
    does not inspect ``b`` (no pass over it); DARTS's finite-difference mixed product refuses a
    non-finite ``b``, and a double-backward mixed product propagates its NaN.
    """

    scale: float = 1.0

    def __post_init__(self) -> None:
        _checks.positive("identity scale", self.scale)

    @property
    def uses_operator(self) -> bool:
        return False

    def __call__(self, matvec: MatVec, b: Params, x0: Params | None = None) -> SolveResult:
        # scale 1 (DARTS) returns b's leaves as they are: no pass over the tree (a non-finite
        # b is refused by the finite-difference mixed product, which takes its norm anyway)
        x = dict(b) if self.scale == 1.0 else _tree.scale(b, self.scale)
        return SolveResult(x=x, iterations=0, residual=math.nan)


def identity(scale: float = 1.0) -> Identity:
    """Build the identity solver ``x = scale * b``."""
    return Identity(scale=scale)
