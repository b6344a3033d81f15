"""Implicit differentiation as a product of two independent strategies.

``v^T dw*/dlam = -mixed(solve(H, v))`` (implicit function theorem; e.g. Lorraine et al. 2020,
Rajeswaran et al. 2019). The linear solver approximates ``H^{-1} v``; the mixed rule computes
``(d^2 f/dlam dw) u`` by double backward or by central finite differences (Liu et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .. import _checks, _tree
from .._products import Linearization, hvp_forward, mixed_vjp_fd
from .._types import InnerLoss, MatVec, Params
from ..linalg import LinearSolver
from ._base import NO_CONTEXT, HopContext, HopInfo, HopResult, check_inputs


class Curvature(Protocol):
    """Builds ``u -> H u`` (or a positive semi-definite stand-in for ``H``)."""

    def matvec(self, lin: Linearization) -> MatVec: ...


class MixedRule(Protocol):
    """Computes ``(d^2 f/dlam dw) u``."""

    def __call__(self, lin: Linearization, u: Params) -> Params: ...


@dataclass(frozen=True)
class DoubleBackward:
    """Exact Hessian-vector products by double backward through a cached gradient graph."""

    def matvec(self, lin: Linearization) -> MatVec:
        return lin.hvp


@dataclass(frozen=True)
class ForwardOverReverse:
    """Exact Hessian-vector products by ``torch.func.jvp`` of ``torch.func.grad``."""

    def matvec(self, lin: Linearization) -> MatVec:
        return lambda u: hvp_forward(lin.inner, lin.w, lin.lam, u)


@dataclass(frozen=True)
class MixedAutograd:
    """Exact mixed product by double backward (shares the Hessian's gradient graph)."""

    def __call__(self, lin: Linearization, u: Params) -> Params:
        return lin.mixed_vjp(u)


@dataclass(frozen=True)
class MixedFiniteDifference:
    """Central finite-difference mixed product (two gradients, no second-order autograd).

    ``radius=None`` picks the step from the dtype and the vector norms; a number sets
    ``h = radius / ||u||`` as Betty's ``darts_alpha`` does.
    """

    radius: float | None = None

    def __post_init__(self) -> None:
        if self.radius is not None:
            _checks.positive("finite-difference radius", self.radius)

    def __call__(self, lin: Linearization, u: Params) -> Params:
        return mixed_vjp_fd(lin.inner, lin.w, lin.lam, u, self.radius)


def check_strategies(owner: str, solver: object, curvature: object) -> None:
    """Refuse, at construction, a solver or curvature that would only fail when called."""
    if not callable(solver):
        raise ValueError(
            f"{owner} solver must be a linear solver, a callable solver(matvec, b, x0) such as "
            f"ziggurat.linalg.conjugate_gradient(), got {solver!r}"
        )
    if not callable(getattr(curvature, "matvec", None)):
        raise ValueError(
            f"{owner} curvature must have a matvec(linearization) method, such as "
            f"DoubleBackward(), ForwardOverReverse() or GaussNewton(...), got {curvature!r}"
        )


@dataclass(frozen=True)
class Implicit:
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
        if not callable(self.mixed):
            raise ValueError(
                "implicit mixed must be a mixed-product rule, a callable mixed(lin, u) such as "
                f"MixedAutograd() or MixedFiniteDifference(), got {self.mixed!r}"
            )
        if not isinstance(self.label, str):
            raise ValueError(f"implicit label must be a string, got {self.label!r}")

    @property
    def name(self) -> str:
        return self.label

    @property
    def uses_warm_start(self) -> bool:
        """Whether the solver starts from ``context.warm_start`` (callers may keep solutions)."""
        return bool(getattr(self.solver, "warm_start", False))

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
        info = HopInfo(self.label, sol.iterations, sol.residual, solution=sol.x)
        return HopResult(vjp=out, info=info)
