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

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .. import _tree
from .._types import InnerLoss, Params
from ._strategies import Curvature


@dataclass(frozen=True)
class HopContext:
    """Per-call inputs that are state, not configuration.

    Attributes:
        warm_start: a previous solution ``H^{-1} v`` for solvers that warm-start.
        preconditioner: a diagonal (tree shaped like ``w``) applied to ``v`` by SAMA; built from
            the lower optimizer's state, e.g. with :func:`adam_preconditioner`.
        state: what a stateful method (``Method.stateful``) returned in ``HopInfo.state`` at
            this hop's last call, or ``None`` on the first; callers keep it and checkpoint it.
        first_order_only: set by the caller where second-order autograd cannot run (a level
            sharded with FSDP2); a method that adapts (``Method.restricts_to_first_order``)
            then uses only gradients.
    """

    warm_start: Params | None = None
    preconditioner: Params | None = None
    state: Any = None
    first_order_only: bool = False


@dataclass(frozen=True)
class HopInfo:
    """Diagnostics of one hop, for logging.

    Attributes:
        method: the method's name.
        iterations: operator applications (or gradient evaluations) spent.
        residual_value: the solver's relative residual, a 0-dim tensor (no host sync until
            read) or a float; ``nan`` when not measured. :attr:`residual` reads it as a float.
        solution: ``H^{-1} v`` (or the method's equivalent), for warm starts.
        state: a stateful method's state after this call (plain values and tensors), which the
            caller passes back in ``HopContext.state`` at the hop's next call.
        decision: what a method that chooses (``auto``) decided at this call, or ``None``.
    """

    method: str
    iterations: int = 0
    residual_value: float | Tensor = math.nan
    solution: Params | None = field(default=None, repr=False)
    state: Any = field(default=None, repr=False)
    decision: Any = field(default=None, repr=False)

    def __init__(
        self,
        method: str,
        iterations: int = 0,
        residual: float | Tensor = math.nan,
        solution: Params | None = None,
        *,
        state: Any = None,
        decision: Any = None,
    ) -> None:
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "iterations", iterations)
        object.__setattr__(self, "residual_value", residual)
        object.__setattr__(self, "solution", solution)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "decision", decision)

    @property
    def residual(self) -> float:
        """The relative residual as a float (a host sync when it is a tensor)."""
        return float(self.residual_value)


@dataclass(frozen=True)
class HopResult:
    vjp: Params
    info: HopInfo


class Method(abc.ABC):
    """A hypergradient method: ``method(inner, w, lam, v, context) -> HopResult``.

    Every method subclasses this base, implements ``name`` and ``__call__``, and declares what
    it needs from its caller by overriding the capability properties below. Their defaults
    describe a second-order method that reads its cotangent and nothing else; the surface
    reads them off the method and never inspects its type.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The name reported in diagnostics and logs."""

    @abc.abstractmethod
    def __call__(
        self, inner: InnerLoss, w: Params, lam: Params, v: Params, context: HopContext = ...
    ) -> HopResult:
        """``v^T dw*/dlam`` (shaped like ``lam``) with the hop's diagnostics."""

    @property
    def reads_cotangent(self) -> bool:
        """Whether the answer depends on ``v``; when not, callers need not compute it."""
        return True

    @property
    def identically_zero(self) -> bool:
        """Whether the answer is zero for every input (first-order): a path through such a
        hop brings nothing, so callers need not take the hop at all."""
        return False

    @property
    def warm_starts(self) -> bool:
        """Whether the method starts from ``context.warm_start``; callers then keep the
        solution of the last call (``HopInfo.solution``) and pass it back."""
        return False

    @property
    def finite_differences(self) -> bool:
        """Whether the method evaluates ``inner`` at perturbed points ``w +- h u``.

        Such evaluations must run at full precision: a perturbation below the resolution of a
        reduced-precision forward (bf16 keeps 8 bits) is rounded away.
        """
        return False

    @property
    def first_order_only(self) -> bool:
        """Whether the method needs only gradients of ``inner`` (no second-order autograd), so
        that it runs where double backward does not: on FSDP2-sharded parameters and through
        operations without a double backward."""
        return False

    @property
    def evaluates_inner(self) -> bool:
        """Whether every loss the method evaluates is the ``inner`` it is given. One that
        evaluates a loss of its own (``stochastic``'s mini-batch loss) cannot run where only
        the caller's ``inner`` knows how to evaluate the level: an FSDP2-sharded level, whose
        pure loss writes ``w`` into the shards."""
        return True

    @property
    def stateful(self) -> bool:
        """Whether the method keeps state between calls at a hop: it returns it in
        ``HopInfo.state``, and callers pass it back in ``HopContext.state`` and save it in
        checkpoints (``auto`` keeps its decision there)."""
        return False

    @property
    def restricts_to_first_order(self) -> bool:
        """Whether the method runs with gradients alone when the caller sets
        ``HopContext.first_order_only`` (it may then sit on an FSDP2-sharded level even though
        it is not :attr:`first_order_only` elsewhere)."""
        return False

    @property
    def needs_preconditioner(self) -> bool:
        """Whether the method reads ``context.preconditioner``, a diagonal built from the lower
        level's optimizer state (SAMA)."""
        return False

    @property
    def follows_trajectory(self) -> bool:
        """Whether the method differentiates the graph that produced ``w`` (unrolled levels)
        instead of a pure loss: on the first hop of a path the upper level's own backward pass
        already goes through it, so no separate hop is taken there."""
        return False

    def with_curvature(self, wrap: Callable[[Curvature], Curvature]) -> Method:
        """This method with its curvature ``c`` replaced by ``wrap(c)`` (e.g. products averaged
        over data-parallel ranks); a method without curvature products returns itself."""
        return self


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
