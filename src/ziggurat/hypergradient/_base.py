"""The one core abstraction: a best-response vector-Jacobian product.

Given the lower problem's pure loss ``f(w, lam)``, its parameters ``w``, the upper parameters
``lam`` and a cotangent ``v`` on ``w``, a method returns ``v^T dw*/dlam`` (a tree shaped like
``lam``), where ``w*(lam)`` is the lower problem's best response. By the implicit function
theorem at a stationary point ``grad_w f(w*, lam) = 0``::

    v^T dw*/dlam = -(d^2 f/dlam dw) H^{-1} v,      H = d^2 f/dw^2.

Methods differ in how they approximate ``H^{-1} v`` and the mixed product, or (unrolled) in
differentiating the optimizer's trajectory instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from .. import _tree
from .._types import InnerLoss, Params


@dataclass(frozen=True)
class HopContext:
    """Per-call inputs that are state, not configuration.

    Attributes:
        warm_start: a previous solution ``H^{-1} v`` for solvers that warm-start.
        preconditioner: a diagonal (tree shaped like ``w``) applied to ``v`` by SAMA; built from
            the lower optimizer's state, e.g. with :func:`adam_preconditioner`.
    """

    warm_start: Params | None = None
    preconditioner: Params | None = None


@dataclass(frozen=True)
class HopInfo:
    """Diagnostics of one hop, for logging."""

    method: str
    iterations: int = 0
    residual: float = math.nan
    solution: Params | None = field(default=None, repr=False)


@dataclass(frozen=True)
class HopResult:
    vjp: Params
    info: HopInfo


class Method(Protocol):
    """A hypergradient method: ``method(inner, w, lam, v, context) -> HopResult``."""

    @property
    def name(self) -> str: ...

    def __call__(
        self, inner: InnerLoss, w: Params, lam: Params, v: Params, context: HopContext = ...
    ) -> HopResult: ...


NO_CONTEXT = HopContext()


def check_inputs(w: Params, lam: Params, v: Params) -> None:
    """Validate one hop's inputs: ``v`` must match ``w`` key for key, in shape and in dtype.

    A dtype mismatch would otherwise run silently in mixed precision (CG) or fail deep inside a
    solver with an unrelated message (the dense solve), so it is refused here.
    """
    if not w:
        raise ValueError("best-response vjp: the lower parameters w are empty")
    if not lam:
        raise ValueError("best-response vjp: the upper parameters lam are empty")
    _tree.check_same_shapes(w, v, "best-response vjp: cotangent v against lower parameters w")
    for name, t in w.items():
        if v[name].dtype != t.dtype:
            raise ValueError(
                f"best-response vjp: cotangent v[{name!r}] has dtype {v[name].dtype} but the "
                f"lower parameter w[{name!r}] has dtype {t.dtype}; cast v to w's dtype "
                "(e.g. {k: t.to(w[k].dtype) for k, t in v.items()})"
            )


def best_response_vjp(
    method: Method,
    inner: InnerLoss,
    w: Params,
    lam: Params,
    v: Params,
    context: HopContext = NO_CONTEXT,
) -> Params:
    """``v^T dw*/dlam`` by ``method``, without the diagnostics."""
    return method(inner, w, lam, v, context).vjp
