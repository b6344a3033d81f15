"""Conjugate gradient on parameter trees (Hestenes & Stiefel 1952)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _checks, _tree
from .._types import MatVec, Params
from ._damping import damped
from ._divergence import check_residual, relative
from ._result import LinearSolver, SolveResult


@dataclass(frozen=True)
class ConjugateGradient(LinearSolver):
    """Solve ``(H + damping I) x = b`` for symmetric positive definite ``H``.

    Stops after ``maxiter`` products or once ``||r|| <= tol * ||b||``; in exact arithmetic it
    is exact after ``n`` iterations on an ``n``-dimensional system. The residual is tracked by
    the usual recurrence, so it costs nothing extra. Once a direction of non-positive curvature
    appears (the operator is then not positive definite) the iterate stops moving, without
    dividing by zero; ``residual`` tells how far it got. A right-hand side with a NaN or an
    infinity is a ``ValueError``, and a residual that is not finite a ``FloatingPointError``
    (:mod:`ziggurat.linalg._divergence`).

    Host syncs: with a tolerance, one per iteration (reading the residual to decide whether to
    stop); with ``tol=None`` (a fixed number of iterations) none.

    With ``warm_start=True`` the solver starts from ``x0`` when one is given (callers pass the
    previous solution), which costs one extra product for the initial residual; with
    ``warm_start=False`` it ignores ``x0`` and starts from zero.
    """

    maxiter: int = 10
    tol: float | None = 1e-10
    damping: float = 0.0
    warm_start: bool = False

    def __post_init__(self) -> None:
        _checks.int_at_least("cg maxiter", self.maxiter, 1)
        if self.tol is not None:
            _checks.positive("cg tol", self.tol)
        _checks.non_negative("cg damping", self.damping)

    @property
    def warm_starts(self) -> bool:
        return self.warm_start

    def __call__(self, matvec: MatVec, b: Params, x0: Params | None = None) -> SolveResult:
        op = damped(matvec, self.damping)
        b_norm = _tree.finite_rhs_norm(b, "cg")
        used = 0
        if x0 is None or not self.warm_start:
            x, r = _tree.zeros_like(b), b
        else:
            _tree.check_same_shapes(b, x0, "cg warm start x0")
            x, r = x0, _tree.sub(b, op(x0))
            used = 1
        p = r
        rr = _tree.dot(r, r)
        live = torch.ones((), dtype=torch.bool, device=rr.device)  # no breakdown yet
        threshold = None if self.tol is None else (self.tol * b_norm) ** 2
        fresh = False  # whether x, r and p are this call's own tensors (then updated in place)
        for _ in range(self.maxiter):
            if threshold is not None and _stops(rr, threshold, live):
                break
            hp = op(p)
            used += 1
            curvature = _tree.dot(p, hp)
            live = live & (curvature > 0)
            step = torch.where(live, rr / torch.where(live, curvature, 1.0), 0.0)
            x, r, p, rr = _cg_update(x, r, p, hp, rr, step, fresh)
            fresh = True
        residual = relative(torch.sqrt(rr), b_norm)
        check_residual(residual, "cg", _advice, bound=math.inf)
        return SolveResult(x=x, iterations=used, residual=residual)


def _stops(rr: Tensor, threshold: Tensor, live: Tensor) -> bool:
    """Whether the residual is below the threshold or the curvature broke down (one sync)."""
    converged, alive = torch.stack([rr <= threshold, live]).tolist()
    return bool(converged) or not alive


def _advice() -> str:
    return (
        "cg needs a symmetric positive definite H; the products overflowed or are not finite. "
        "Check the lower loss for NaN, add damping (cg(damping=...)), or scale the problem"
    )


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
        return x, r, _tree.xpay_(r, _ratio(rr_new, rr), p), rr_new
    x = _tree.axpy(step, p, x)
    r = _tree.axpy(-step, hp, r)
    rr_new = _tree.dot(r, r)
    return x, r, _tree.axpy(_ratio(rr_new, rr), p, r), rr_new


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, 0 where ``den`` is 0 (a converged or zero right-hand side)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def conjugate_gradient(
    maxiter: int = 10, tol: float | None = 1e-10, *, damping: float = 0.0, warm_start: bool = False
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
