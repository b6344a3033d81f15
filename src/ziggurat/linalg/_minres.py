"""MINRES on parameter trees (Paige & Saunders, SIAM J. Numer. Anal. 1975).

For a symmetric ``H`` that may be indefinite, as the Hessian of a neural network's loss away
from a minimum usually is, conjugate gradient breaks down at the first direction of
non-positive curvature. MINRES minimises ``||b - H x||`` over the same Krylov space instead,
so its residual never grows and it converges for every nonsingular symmetric ``H``. It runs the
Lanczos recurrence with a QR factorisation of the tridiagonal matrix updated by one Givens
rotation per iteration (the three-term form of van der Vorst, *Iterative Krylov Methods for
Large Linear Systems*, 2003, section 6.4): one product, a few vector updates and two dot
products per iteration, and its residual norm ``|eta|`` comes from the rotations for free.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _checks, _tree
from .._types import MatVec, Params
from ._damping import damped
from ._divergence import check_residual, relative
from ._result import LinearSolver, SolveResult


@dataclass(frozen=True)
class MinRes(LinearSolver):
    """Solve ``(H + damping I) x = b`` for symmetric ``H``, definite or not.

    Stops after ``maxiter`` products or once the relative residual is ``<= tol``. The residual
    is the recurrence's ``|eta| / ||b||``, exact in exact arithmetic. Host syncs: with a
    tolerance, one per iteration; with ``tol=None`` none.
    """

    maxiter: int = 10
    tol: float | None = 1e-10
    damping: float = 0.0

    def __post_init__(self) -> None:
        _checks.int_at_least("minres maxiter", self.maxiter, 1)
        if self.tol is not None:
            _checks.positive("minres tol", self.tol)
        _checks.non_negative("minres damping", self.damping)

    def __call__(self, matvec: MatVec, b: Params, x0: Params | None = None) -> SolveResult:
        b_norm = _tree.finite_rhs_norm(b, "minres")
        x, used, residual = _tree.zeros_like(b), 0, relative(b_norm, b_norm)
        for used, x, residual in self.iterates(damped(matvec, self.damping), b):  # noqa: B007
            if self.tol is not None and float(residual) <= self.tol:
                break
        check_residual(residual, "minres", _advice)
        return SolveResult(x=x, iterations=used, residual=residual)

    def iterates(self, op: MatVec, b: Params) -> Iterator[tuple[int, Params, Tensor]]:
        """``(k, x_k, ||b - H x_k|| / ||b||)`` after each of ``maxiter`` products, from
        ``x_0 = 0`` (the iterates are fresh trees; the residuals are 0-dim tensors)."""
        beta = torch.sqrt(_tree.dot(b, b))
        b_norm = beta
        if not _positive(beta):
            return
        v_old: Params = _tree.zeros_like(b)
        v = _tree.scale(b, 1.0 / beta)
        w_old, w = _tree.zeros_like(b), _tree.zeros_like(b)
        x = _tree.zeros_like(b)
        one, zero = torch.ones_like(beta), torch.zeros_like(beta)
        c_old, c, s_old, s = one, one, zero, zero
        eta = beta
        for k in range(1, self.maxiter + 1):
            hv = op(v)
            alpha = _tree.dot(v, hv)
            v_new = _tree.axpy(-beta, v_old, _tree.axpy(-alpha, v, hv))
            beta_new = torch.sqrt(_tree.dot(v_new, v_new))
            v_new = _tree.scale(v_new, _safe_inverse(beta_new))  # 0 when the space is exhausted
            # the new column of the tridiagonal matrix, through the last two rotations
            a0 = c * alpha - c_old * s * beta
            a1 = torch.sqrt(a0 * a0 + beta_new * beta_new)
            a2 = s * alpha + c_old * c * beta
            a3 = s_old * beta
            c_new, s_new = a0 * _safe_inverse(a1), beta_new * _safe_inverse(a1)
            w_new = _tree.scale(_tree.axpy(-a2, w, _tree.axpy(-a3, w_old, v)), _safe_inverse(a1))
            x = _tree.axpy(c_new * eta, w_new, x)
            eta = -s_new * eta
            yield k, x, relative(eta.abs(), b_norm)
            v_old, v, beta = v, v_new, beta_new
            w_old, w = w, w_new
            c_old, c, s_old, s = c, c_new, s, s_new


def _safe_inverse(t: Tensor) -> Tensor:
    """``1 / t``, and 0 where ``t`` is 0 (no sync)."""
    return torch.where(t > 0, 1.0 / torch.where(t > 0, t, 1.0), 0.0)


def _positive(t: Tensor) -> bool:
    return bool(t > 0)  # one host sync, before the first product


def _advice() -> str:
    return (
        "minres needs a symmetric H; the products overflowed or are not finite. Check the lower "
        "loss for NaN, or add damping (minres(damping=...))"
    )


def minres(maxiter: int = 10, tol: float | None = 1e-10, *, damping: float = 0.0) -> MinRes:
    """Build a MINRES solver (for symmetric, possibly indefinite systems).

    Examples:
        Exact in ``n`` iterations on an ``n``-dimensional system, definite or not, where
        conjugate gradient would stop at the negative eigenvalue:

        >>> import torch
        >>> A = torch.tensor([[2.0, 1.0], [1.0, -3.0]], dtype=torch.float64)
        >>> def matvec(x):
        ...     return {"x": A @ x["x"]}
        >>> b = {"x": torch.tensor([1.0, 2.0], dtype=torch.float64)}
        >>> from ziggurat.linalg import minres
        >>> result = minres(maxiter=2)(matvec, b)
        >>> [round(x, 12) for x in result.x["x"].tolist()], result.iterations
        ([0.714285714286, -0.428571428571], 2)
    """
    return MinRes(maxiter=maxiter, tol=tol, damping=damping)
