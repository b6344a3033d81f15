"""Curvature from gradients alone: Hessian-vector products by central differences.

``H u ~ (grad_w f(w + h u, lam) - grad_w f(w - h u, lam)) / (2 h)`` needs two ordinary
backward passes and no double backward, so the implicit methods built on it run where
second-order autograd does not: through operations without a double backward (a custom
``@once_differentiable`` function, ``torch.cdist``) and on FSDP2-sharded levels. Paired with
:class:`~ziggurat.hypergradient.MixedFiniteDifference` for the mixed product, an
:class:`~ziggurat.hypergradient.Implicit` method needs only first-order autograd
(``first_order_only``), whatever its solver: ``cg``, ``neumann``, ``fixed_point`` or ``exact``.
(Fused attention needs neither: double-backward products evaluate it with its math kernel,
see ``ziggurat.twice_differentiable``; finite differences keep the fused kernel, which is
cheaper per product, see ``benchmarks/RESULTS.md``.)

The step follows the dtype and the norms (derived in :mod:`ziggurat._products`):
``h = eps^(1/3) max(1, ||w||) / ||u||``, balancing the ``O(h^2)`` truncation error of a central
difference against its ``O(eps / h)`` rounding error. On a loss quadratic in ``w`` only the
rounding remains, a relative error of order ``eps^(2/3)`` per product, which a solver amplifies
by up to the condition number of ``H``; ``benchmarks/RESULTS_fd.md`` lists the measured floors.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _checks, _tree
from .._products import (
    Linearization,
    central_difference,
    fd_step,
    grad_w,
    perturbation_length,
)
from .._types import MatVec, Params
from ._strategies import Curvature


@dataclass(frozen=True)
class FiniteDifference(Curvature):
    """``u -> H u`` by central differences of ``grad_w f``: two gradients (2 G) per product.

    ``radius=None`` takes the step ``h = eps^(1/3) max(1, ||w||) / ||u||`` with ``eps`` the
    roundoff of ``w``'s dtype (or of an active, coarser autocast dtype); a number sets the
    perturbation length, ``h = radius / ||u||``. For bfloat16 and float16 parameters the
    perturbed points are formed in float32 and rounded once, and the difference and quotient
    are taken in float32 (no extra rounding; no float16 overflow when dividing by a small
    ``2 h``); the floor is then set by the gradients' own rounding, about ``eps^(2/3)`` of the
    dtype. Products carry no host synchronisation.

    Attributes:
        radius: the perturbation length ``||h u||``, or ``None`` for the dtype's rule.
    """

    radius: float | None = None

    def __post_init__(self) -> None:
        if self.radius is not None:
            _checks.positive("finite-difference curvature radius", self.radius)

    @property
    def second_order(self) -> bool:
        return False

    @property
    def finite_differences(self) -> bool:
        return True

    def matvec(self, lin: Linearization) -> MatVec:
        w, lam, inner = _tree.detach(lin.w), _tree.detach(lin.lam), lin.inner
        length = perturbation_length(w, self.radius)  # once per point, not per product

        def product(u: Params) -> Params:
            return central_difference(lambda x: grad_w(inner, x, lam), w, u, fd_step(length, u))

        return product
