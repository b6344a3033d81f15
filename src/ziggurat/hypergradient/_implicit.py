"""Implicit differentiation as a product of two independent strategies.

``v^T dw*/dlam = -mixed(solve(H, v))`` (implicit function theorem; e.g. Lorraine et al. 2020,
Rajeswaran et al. 2019). The linear solver approximates ``H^{-1} v``; the mixed rule computes
``(d^2 f/dlam dw) u`` by double backward or by central finite differences (Liu et al. 2019).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .. import _checks, _tree
from .._products import Linearization, hvp_forward, mixed_vjp_fd
from .._types import InnerLoss, MatVec, Params
from ..linalg import LinearSolver
from ._base import NO_CONTEXT, HopContext, HopInfo, HopResult, Method, check_inputs
from ._strategies import Curvature, MixedRule


@dataclass(frozen=True)
class DoubleBackward(Curvature):
    """Exact Hessian-vector products by double backward through a cached gradient graph."""

    def matvec(self, lin: Linearization) -> MatVec:
        return lin.hvp


@dataclass(frozen=True)
class ForwardOverReverse(Curvature):
    """Exact Hessian-vector products by ``torch.func.jvp`` of ``torch.func.grad``."""

    def matvec(self, lin: Linearization) -> MatVec:
        return lambda u: hvp_forward(lin.inner, lin.w, lin.lam, u)


@dataclass(frozen=True)
class MixedAutograd(MixedRule):
    """Exact mixed product by double backward (shares the Hessian's gradient graph)."""

    def __call__(self, lin: Linearization, u: Params) -> Params:
        return lin.mixed_vjp(u)


@dataclass(frozen=True)
class MixedFiniteDifference(MixedRule):
    """Central finite-difference mixed product (two gradients, no second-order autograd).

    ``radius=None`` picks the step from the dtype and the vector norms; a number sets
    ``h = radius / ||u||`` as Betty's ``darts_alpha`` does.
    """

    radius: float | None = None

    def __post_init__(self) -> None:
        if self.radius is not None:
            _checks.positive("finite-difference radius", self.radius)

    @property
    def second_order(self) -> bool:
        return False

    @property
    def finite_differences(self) -> bool:
        return True

    def __call__(self, lin: Linearization, u: Params) -> Params:
        return mixed_vjp_fd(lin.inner, lin.w, lin.lam, u, self.radius)


def check_strategies(owner: str, solver: object, curvature: object) -> None:
    """Refuse, at construction, a solver or curvature that would only fail when called."""
    if not isinstance(solver, LinearSolver):
        raise ValueError(
            f"{owner} solver must be a linear solver, a ziggurat.linalg.LinearSolver such as "
            f"ziggurat.linalg.conjugate_gradient() (subclass it for your own), got {solver!r}"
        )
    if not isinstance(curvature, Curvature):
        raise ValueError(
            f"{owner} curvature must have a matvec(linearization) method, such as "
            f"DoubleBackward(), ForwardOverReverse() or GaussNewton(...) (subclass "
            f"ziggurat.hypergradient.Curvature for your own), got {curvature!r}"
        )


@dataclass(frozen=True)
class Implicit(Method):
    """``v^T dw*/dlam = -(d^2 f/dlam dw) solver(H, v)``.

    Attributes:
        solver: linear solver for ``H^{-1} v`` (``ziggurat.linalg``).
        mixed: mixed-product rule.
        curvature: how ``H u`` is computed.
        label: the name reported in diagnostics.
    """

    solver: LinearSolver
    mixed: MixedRule = MixedAutograd()
    curvature: Curvature = DoubleBackward()
    label: str = "implicit"

    def __post_init__(self) -> None:
        check_strategies("implicit", self.solver, self.curvature)
        if not isinstance(self.mixed, MixedRule):
            raise ValueError(
                "implicit mixed must be a mixed-product rule, a callable mixed(lin, u) such as "
                "MixedAutograd() or MixedFiniteDifference() (subclass "
                f"ziggurat.hypergradient.MixedRule for your own), got {self.mixed!r}"
            )
        if not isinstance(self.label, str):
            raise ValueError(f"implicit label must be a string, got {self.label!r}")

    @property
    def name(self) -> str:
        return self.label

    @property
    def warm_starts(self) -> bool:
        return self.solver.warm_starts

    @property
    def uses_warm_start(self) -> bool:
        """Alias of :attr:`warm_starts`."""
        return self.warm_starts

    @property
    def finite_differences(self) -> bool:
        curvature = self.solver.uses_operator and self.curvature.finite_differences
        return self.mixed.finite_differences or curvature

    @property
    def first_order_only(self) -> bool:
        curvature = self.solver.uses_operator and self.curvature.second_order
        return not (self.mixed.second_order or curvature)

    def with_curvature(self, wrap: Callable[[Curvature], Curvature]) -> Implicit:
        return dataclasses.replace(self, curvature=wrap(self.curvature))

    def __call__(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        v: Params,
        context: HopContext = NO_CONTEXT,
    ) -> HopResult:
        check_inputs(w, lam, v)
        lin = Linearization(inner, w, lam)
        sol = self.solver(self.curvature.matvec(lin), _tree.detach(v), context.warm_start)
        out = _tree.neg(self.mixed(lin, sol.x))
        info = HopInfo(self.label, sol.iterations, sol.residual_value, solution=sol.x)
        return HopResult(vjp=out, info=info)
