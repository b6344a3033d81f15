"""Conjugate gradient on parameter trees (Hestenes & Stiefel 1952)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from .. import _checks, _tree
from .._types import MatVec, Params
from ._damping import damped
from ._result import LinearSolver, SolveResult


@dataclass(frozen=True)
class ConjugateGradient(LinearSolver):
    """Solve ``(H + damping I) x = b`` for symmetric positive definite ``H``.

    Stops after ``maxiter`` products or once ``||r|| <= tol * ||b||``; in exact arithmetic it
    is exact after ``n`` iterations on an ``n``-dimensional system. The residual is tracked by
    the usual recurrence, so it costs nothing extra. It also stops, without dividing by zero,
    when the residual is exactly zero or a direction of non-positive curvature appears (the
    operator is then not positive definite; ``residual`` tells how far it got). A right-hand
    side with a NaN or an infinity is a ``ValueError``.

    With ``warm_start=True`` the solver starts from ``x0`` when one is given (callers pass the
    previous solution), which costs one extra product for the initial residual; with
    ``warm_start=False`` it ignores ``x0`` and starts from zero.
    """

    maxiter: int = 10
    tol: float = 1e-10
    damping: float = 0.0
    warm_start: bool = False

    def __post_init__(self) -> None:
        _checks.int_at_least("cg maxiter", self.maxiter, 1)
        _checks.positive("cg tol", self.tol)
        _checks.non_negative("cg damping", self.damping)

    @property
    def warm_starts(self) -> bool:
        return self.warm_start

    def __call__(self, matvec: MatVec, b: Params, x0: Params | None = None) -> SolveResult:
        op = damped(matvec, self.damping)
        b_norm = _tree.finite_rhs_norm(b, "cg")
        if b_norm == 0.0:
            return SolveResult(x=_tree.zeros_like(b), iterations=0, residual=0.0)
        used = 0
        if x0 is None or not self.warm_start:
            x, r = _tree.zeros_like(b), b
        else:
            _tree.check_same_shapes(b, x0, "cg warm start x0")
            x, r = x0, _tree.sub(b, op(x0))
            used = 1
        p = r
        rr = _tree.dot(r, r)
        fresh = False  # whether x, r and p are this call's own tensors (then updated in place)
        for _ in range(self.maxiter):
            if float(rr) <= (self.tol * b_norm) ** 2:
                break
            hp = op(p)
            used += 1
            curvature = _tree.dot(p, hp)
            if float(curvature) <= 0.0:
                break
            x, r, p, rr = _cg_update(x, r, p, hp, rr, rr / curvature, fresh)
            fresh = True
        return SolveResult(x=x, iterations=used, residual=math.sqrt(float(rr)) / b_norm)


def _cg_update(
    x: Params, r: Params, p: Params, hp: Params, rr: Tensor, step: Tensor, fresh: bool
) -> tuple[Params, Params, Params, Tensor]:
    """One CG update: ``x += step p``, ``r -= step Hp``, ``p = r + (r'r' / r'r) p``.

    The first update allocates (``x``, ``r`` and ``p`` may be the caller's ``b``, ``x0`` or
    aliases of each other); later ones overwrite the iterates, the same kernels in place.
    """
    if fresh:
        _tree.axpy_(step, p, x)
        _tree.axpy_(-step, hp, r)
        rr_new = _tree.dot(r, r)
        return x, r, _tree.xpay_(r, rr_new / rr, p), rr_new
    x = _tree.axpy(step, p, x)
    r = _tree.axpy(-step, hp, r)
    rr_new = _tree.dot(r, r)
    return x, r, _tree.axpy(rr_new / rr, p, r), rr_new


def conjugate_gradient(
    maxiter: int = 10, tol: float = 1e-10, *, damping: float = 0.0, warm_start: bool = False
) -> ConjugateGradient:
    """Build a conjugate-gradient solver.

    Examples:
        Exact in ``n`` iterations on an ``n``-dimensional positive definite system:

        >>> import torch
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> def matvec(x):
        ...     return {"x": A @ x["x"]}
        >>> b = {"x": torch.tensor([1.0, 2.0], dtype=torch.float64)}
        >>> from ziggurat.linalg import conjugate_gradient
        >>> result = conjugate_gradient(maxiter=2)(matvec, b)
        >>> [round(x, 12) for x in result.x["x"].tolist()], result.iterations
        ([0.2, 0.6], 2)
        >>> result.residual < 1e-12
        True
    """
    return ConjugateGradient(maxiter=maxiter, tol=tol, damping=damping, warm_start=warm_start)
