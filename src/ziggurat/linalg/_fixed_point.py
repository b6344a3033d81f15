"""Fixed-point iteration for ``H x = b`` (Grazzi, Franceschi, Pontil & Salzo, ICML 2020).

When the lower problem is solved by an iterative optimizer, its solution is a fixed point of the
optimizer's map. Grazzi et al. (2020, "On the iteration complexity of hypergradient
computation") differentiate that fixed-point equation and iterate the transposed linearised map
to get the hypergradient; on the linear system ``H x = b`` this is a stationary linear
iteration. Two maps are implemented, selected by ``momentum``:

* **gradient descent** (``momentum = 0``, the default): ``Phi(w) = w - eta grad_w f(w, lam)``.
  Its linearisation ``I - eta H`` gives ``x <- x - eta (H x - b)``.
* **heavy-ball SGD** (``momentum = mu > 0``, as ``torch.optim.SGD(momentum=mu)``): the map acts
  on the joint state ``(w, m)`` with ``m' = mu m + g(w)`` and ``w' = w - eta m'``. At a
  stationary point (``g = 0``, ``m = 0``) its Jacobian is ``A = [[I - eta H, -eta mu I],
  [H, mu I]]`` and its derivative in ``lam`` is ``[-eta M; M]`` (``M`` the mixed derivative).
  The implicit function theorem gives ``v^T dw*/dlam = p^T [-eta M; M]`` where ``p`` solves
  ``p = A^T p + (v, 0)``. Writing ``x = eta p_w - p_m`` (so that the answer is ``-M^T x``),
  the iteration ``p <- A^T p + (v, 0)`` from ``p = 0`` becomes exactly Polyak's heavy-ball
  iteration on ``H x = v``::

      x_{k+1} = x_k + eta (v - H x_k) + mu (x_k - x_{k-1}),     x_{-1} = x_0 = 0,

  one Hessian-vector product per step. Its ``K``-th iterate equals differentiating ``K``
  momentum-SGD steps started at the optimum with an empty momentum buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from .. import _checks, _tree
from .._types import MatVec, Params
from ._damping import damped
from ._divergence import check_residual, relative, step_bound
from ._result import LinearSolver, SolveResult


@dataclass(frozen=True)
class FixedPoint(LinearSolver):
    """Iterate ``x_{k+1} = x_k - step (H x_k - b) + momentum (x_k - x_{k-1})`` from ``x_0``.

    ``x_0`` is zero unless warm-started (then ``x_{-1} = x_0``: no initial velocity).

    Convergence, for positive definite ``H`` with eigenvalues in ``[mu_H, L]``:

    * ``momentum = 0``: the iterates are the partial sums of the Neumann series,
      ``x_k = step * sum_{j<k} (I - step H)^j b``, and the error contracts like
      ``(1 - step mu_H)^k`` when ``0 < step < 2 / L`` (Grazzi et al. 2020, Theorem 2).
    * ``0 < momentum < 1``: converges if and only if ``0 < step * L < 2 (1 + momentum)``
      (each eigenvalue ``l`` gives the characteristic polynomial
      ``z^2 - (1 + momentum - step l) z + momentum``, whose roots lie inside the unit disc
      exactly then). With Polyak's (1964) choice ``step = 4 / (sqrt L + sqrt mu_H)^2``,
      ``momentum = ((sqrt L - sqrt mu_H) / (sqrt L + sqrt mu_H))^2`` the error contracts like
      ``((sqrt k - 1) / (sqrt k + 1))^k`` for the condition number ``k = L / mu_H``, against
      ``((k - 1) / (k + 1))^k`` for the best plain step ``2 / (L + mu_H)``.

    Relation to :class:`~ziggurat.linalg.Neumann`: for the same number ``K`` of operator
    applications, ``neumann(K, alpha)`` returns the iterate ``x_{K+1}`` and reports the residual
    of ``x_K``, whereas ``fixed_point(K, step)`` returns ``x_K`` and reports the exact residual
    ``||b - H x_K|| / ||b||`` of what it returns, measured directly (no recurrence, so no drift).
    Each product is spent on that residual, which also lets it stop early once the residual is
    at most ``tol`` and start from a previous solution ``x0``.

    Each of the ``iterations`` updates costs one operator application, spent on the residual
    of the new iterate; a warm start ``x0`` costs one more, for its initial residual.
    ``SolveResult.iterations`` counts the applications actually spent.
    """

    iterations: int = 10
    step: float = 1.0
    tol: float | None = None
    damping: float = 0.0
    momentum: float = 0.0

    def __post_init__(self) -> None:
        _checks.int_at_least("fixed_point iterations", self.iterations, 1)
        _checks.positive("fixed_point step", self.step)
        if self.tol is not None:
            _checks.positive("fixed_point tol", self.tol)
        _checks.non_negative("fixed_point damping", self.damping)
        _checks.non_negative("fixed_point momentum", self.momentum)
        if self.momentum >= 1.0:
            raise ValueError(
                f"fixed_point momentum must be < 1 (the heavy-ball map diverges otherwise), "
                f"got {self.momentum!r}"
            )

    def __call__(self, matvec: MatVec, b: Params, x0: Params | None = None) -> SolveResult:
        op = damped(matvec, self.damping)
        b_norm = _tree.finite_rhs_norm(b, "fixed_point")
        if float(b_norm) == 0.0:  # one host sync: no product is spent on b = 0
            return SolveResult(x=_tree.zeros_like(b), iterations=0, residual=0.0)
        used = 0
        if x0 is None:
            x, r = _tree.zeros_like(b), b
        else:
            _tree.check_same_shapes(b, x0, "fixed_point warm start x0")
            x, r = x0, _tree.sub(b, op(x0))
            used = 1
        x_prev = x
        for _ in range(self.iterations):
            # with a tolerance, one host sync per iteration decides whether to stop
            if self.tol is not None and self._converged(r, b_norm):
                break
            x_prev, x = x, self._update(x, x_prev, r)
            r = _tree.sub(b, op(x))
            used += 1
        res = relative(_tree.norm(r), b_norm)
        check_residual(res, "fixed_point", lambda: self._advice(op, b))
        return SolveResult(x=x, iterations=used, residual=res)

    def _converged(self, r: Params, b_norm: Tensor) -> bool:
        assert self.tol is not None
        r_norm = float(_tree.norm(r))
        return not math.isfinite(r_norm) or r_norm <= self.tol * float(b_norm)

    def _advice(self, op: MatVec, b: Params) -> str:
        bound = step_bound(op, b, lambda top: 2.0 * (1.0 + self.momentum) / top)
        return (
            "the fixed-point iteration converges only for 0 < step < 2 (1 + momentum) / "
            f"lambda_max(H) and step is {self.step:g}; {bound}. Lower the step, or use cg"
        )

    def _update(self, x: Params, x_prev: Params, r: Params) -> Params:
        out = _tree.axpy(self.step, r, x)
        if self.momentum == 0.0:
            return out
        return _tree.axpy(self.momentum, _tree.sub(x, x_prev), out)


def fixed_point(
    iterations: int = 10,
    step: float = 1.0,
    *,
    tol: float | None = None,
    damping: float = 0.0,
    momentum: float = 0.0,
) -> FixedPoint:
    """Build the fixed-point solver: the linearised gradient-descent map, or with
    ``momentum > 0`` the linearised heavy-ball map (see the module docstring)."""
    return FixedPoint(iterations=iterations, step=step, tol=tol, damping=damping, momentum=momentum)


def heavy_ball_rate(step: float, momentum: float, low: float, high: float) -> float:
    """Asymptotic contraction factor of :class:`FixedPoint` on a spectrum in ``[low, high]``.

    The largest root modulus of ``z^2 - (1 + momentum - step l) z + momentum`` over
    ``l in [low, high]``; the maximum over an interval is reached at an end point, because the
    modulus is ``sqrt(momentum)`` for complex roots and monotone in ``l`` on each side of them.
    Below 1 exactly when the iteration converges. ``momentum = 0`` gives the gradient-descent
    factor ``max |1 - step l|``.
    """
    _checks.non_negative("heavy_ball_rate momentum", momentum)
    _checks.positive("heavy_ball_rate step", step)
    if not 0 < low <= high:
        raise ValueError(f"heavy_ball_rate needs 0 < low <= high, got low={low}, high={high}")

    def modulus(eig: float) -> float:
        trace = 1.0 + momentum - step * eig
        disc = trace * trace - 4.0 * momentum
        if disc < 0:
            return math.sqrt(momentum)
        return (abs(trace) + math.sqrt(disc)) / 2.0

    return max(modulus(low), modulus(high))


def polyak_parameters(low: float, high: float) -> tuple[float, float]:
    """Polyak's (1964) heavy-ball ``(step, momentum)`` for a spectrum in ``[low, high]``.

    ``step = 4 / (sqrt high + sqrt low)^2`` and ``momentum = ((sqrt high - sqrt low) /
    (sqrt high + sqrt low))^2``, which make :func:`heavy_ball_rate` equal
    ``(sqrt k - 1) / (sqrt k + 1)`` with ``k = high / low``, the best rate of any such choice.
    """
    if not 0 < low <= high or not math.isfinite(high):
        raise ValueError(f"polyak_parameters needs 0 < low <= high, got low={low}, high={high}")
    s_hi, s_lo = math.sqrt(high), math.sqrt(low)
    return 4.0 / (s_hi + s_lo) ** 2, ((s_hi - s_lo) / (s_hi + s_lo)) ** 2
