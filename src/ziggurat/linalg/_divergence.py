"""Telling a diverged solve from a converged one, and saying what to change.

A relative residual ``||b - H x|| / ||b||`` above :data:`DIVERGED` (ten times that of ``x = 0``)
or a non-finite one means the iteration blew up instead of converging; returning its ``x``
would hand an overflowed hypergradient to the optimizer. The check goes through
:mod:`ziggurat._health`, so the engine reads it with its other checks in one host sync.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import _health, _tree
from .._types import MatVec, Params

DIVERGED = 10.0
"""Relative residuals above this are divergence."""


def largest_eigenvalue(op: MatVec, start: Params, iterations: int = 30) -> float:
    """``|lambda_max(H)|`` by power iteration from ``start`` (deterministic; a host sync per
    step, spent only when a message needs it)."""
    x = _tree.scale(start, 1.0 / max(float(_tree.norm(start)), 1e-300))
    estimate = 0.0
    for _ in range(iterations):
        y = op(x)
        estimate = float(_tree.norm(y))
        if not estimate > 0.0 or not torch.isfinite(torch.tensor(estimate)):
            break
        x = _tree.scale(y, 1.0 / estimate)
    return estimate


def step_bound(op: MatVec, b: Params, limit: Callable[[float], float]) -> str:
    """``lambda_max`` of ``op`` and the bound ``limit(lambda_max)`` a step size must stay
    below, as text for a message."""
    top = largest_eigenvalue(op, b)
    if not 0.0 < top < float("inf"):
        return f"the largest eigenvalue of H could not be estimated ({top})"
    return f"here lambda_max ~ {top:.3g} (power iteration), so it must be below {limit(top):.3g}"


def check_residual(
    residual: Tensor, solver: str, advice: Callable[[], str], bound: float = DIVERGED
) -> None:
    """Fail when ``residual`` is not finite or above ``bound``; the message gives the residual
    and ``advice()``. Iterations whose residual can legitimately exceed that of ``x = 0`` on a
    non-convex loss (conjugate gradient's is not monotone) pass ``bound=inf``."""

    def message() -> str:
        return (
            f"{solver}: the solve diverged (relative residual {float(residual):.3g}, above "
            f"{bound:g} or not finite), so its answer is meaningless; {advice()}"
        )

    _health.check(residual, message, bound=bound)


def relative(norm: Tensor, b_norm: Tensor) -> Tensor:
    """``norm / b_norm``, and 0 where ``b_norm`` is 0 (no sync)."""
    return torch.where(b_norm > 0, norm / torch.where(b_norm > 0, b_norm, 1.0), 0.0)
