"""An inner optimizer's update map, linearised at a stationary point, as fixed-point options.

Grazzi et al. (ICML 2020) obtain the hypergradient by iterating the transposed Jacobian of the
map that the inner optimizer applies at every step. For SGD the map is linear in the gradient,
so its linearisation at a stationary point is an iteration on ``H x = v`` with a step, a
momentum and a damping (see :mod:`ziggurat.linalg._fixed_point` for the derivation):

* ``torch.optim.SGD(lr, momentum=mu, dampening=d, weight_decay=c)`` updates
  ``m' = mu m + (1 - d) (g + c w)``, ``w' = w - lr m'`` (with ``mu = 0``:
  ``w' = w - lr (g + c w)``).
  Its fixed points are the stationary points of ``f + c/2 ||w||^2``; the linearised map is the
  heavy-ball iteration with step ``lr (1 - d)`` (``lr`` without momentum), momentum ``mu`` and
  damping ``c`` (the curvature becomes ``H + c I``; the mixed derivative does not change).

Adam has no such map at a stationary point: there ``g = 0``, so its first and second moments
tend to zero and the update ``lr m_hat / (sqrt(v_hat) + eps)`` linearises to a step of
``lr / eps`` (about ``1e5`` for ``lr = 1e-3``), which no iteration survives; the square root is
not differentiable at ``v = 0`` and the bias corrections make the map depend on the step count.
What Adam's state at the end of training does say is a diagonal preconditioner, which
:func:`~ziggurat.hypergradient.sama` uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .. import _checks
from ..optim import SGD, Adam, FunctionalOptimizer


@dataclass(frozen=True)
class LinearisedMap:
    """Options of :class:`~ziggurat.linalg.FixedPoint` equal to an optimizer's linearised map."""

    step: float
    momentum: float
    damping: float


def _float(lr: float | Tensor) -> float:
    return float(lr.detach()) if isinstance(lr, Tensor) else float(lr)


def linearised_map(
    optimizer: FunctionalOptimizer,
    owner: str = "fixed_point_of",
    explicit: str = "fixed_point(iterations, step, momentum=...)",
) -> LinearisedMap:
    """Step, momentum and damping of ``optimizer``'s update map at a stationary point.

    Raises ``ValueError`` for optimizers without a sensible fixed-point iteration there (Adam,
    AdamW), and for SGD options whose map is not implemented (Nesterov, ``maximize``); the
    messages begin with ``owner``, the preset that asked, and suggest ``explicit``.
    """
    if isinstance(optimizer, Adam):
        name = "adamw" if optimizer.decoupled else "adam"
        raise ValueError(
            f"{owner}: {name} has no fixed-point iteration at a stationary point (its "
            "moments vanish there and the linearised step is lr / eps); use cg, neumann or "
            "fixed_point on H, or sama for Adam's preconditioner"
        )
    if not isinstance(optimizer, SGD):
        raise ValueError(
            f"{owner}: no linearised map for {type(optimizer).__name__}; pass "
            f"ziggurat.optim.sgd(...) or use {explicit}"
        )
    if optimizer.nesterov or optimizer.maximize:
        option = "nesterov=True" if optimizer.nesterov else "maximize=True"
        raise ValueError(
            f"{owner}: sgd with {option} is not supported; use "
            f"{explicit} for plain heavy-ball momentum"
        )
    lr = _float(optimizer.lr)
    _checks.positive(f"{owner} sgd lr", lr)
    if optimizer.momentum == 0.0:
        return LinearisedMap(lr, 0.0, optimizer.weight_decay)
    if optimizer.dampening >= 1.0:
        raise ValueError(
            f"{owner}: sgd dampening must be < 1 with momentum (the map does not move "
            f"w otherwise), got {optimizer.dampening!r}"
        )
    step = lr * (1.0 - optimizer.dampening)
    return LinearisedMap(step, optimizer.momentum, optimizer.weight_decay)
