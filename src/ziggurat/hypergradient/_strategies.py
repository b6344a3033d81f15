"""The two strategy axes of implicit methods besides the linear solver, as base classes.

A :class:`Curvature` builds ``u -> H u`` and a :class:`MixedRule` computes
``(d^2 f/dlam dw) u``, both at a :class:`~ziggurat._products.Linearization`. Each declares the
autograd it needs (``second_order``) and whether it perturbs ``w`` (``finite_differences``);
:class:`~ziggurat.hypergradient.Implicit` derives its own capabilities from theirs and from its
solver's.
"""

from __future__ import annotations

import abc

from .._products import Linearization
from .._types import MatVec, Params


class Curvature(abc.ABC):
    """Builds ``u -> H u`` (or a positive semi-definite stand-in for ``H``)."""

    @abc.abstractmethod
    def matvec(self, lin: Linearization) -> MatVec:
        """The product ``u -> H u`` at ``lin``'s point."""

    @property
    def second_order(self) -> bool:
        """Whether a product differentiates the gradient graph again (double backward)."""
        return True

    @property
    def finite_differences(self) -> bool:
        """Whether a product evaluates the loss at perturbed points ``w +- h u``."""
        return False

    @property
    def reads_inner(self) -> bool:
        """Whether products come from the linearisation's own loss; a curvature built from a
        closure of its own (Gauss-Newton's outputs) ignores the loss it is given."""
        return True


class MixedRule(abc.ABC):
    """Computes ``(d^2 f/dlam dw) u``."""

    @abc.abstractmethod
    def __call__(self, lin: Linearization, u: Params) -> Params:
        """The mixed product at ``lin``'s point."""

    @property
    def second_order(self) -> bool:
        """Whether the product differentiates the gradient graph again (double backward)."""
        return True

    @property
    def finite_differences(self) -> bool:
        """Whether the product evaluates the loss at perturbed points ``w +- h u``."""
        return False
