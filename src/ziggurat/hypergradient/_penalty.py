"""A fully first-order best-response product: the penalty (value-function) method.

Kwon, Kwon, Wright & Nowak (ICML 2023, "A fully first-order method for stochastic bilevel
optimization", F2SA) and Liu, Ye, Wright, Stone & Liu (NeurIPS 2022, "BOME! Bilevel
optimization made easy") replace the inverse Hessian by a second, slightly perturbed solve of
the lower problem. With the upper loss linearised at ``w`` along its cotangent ``v``, the
perturbed lower problem of one hop is::

    w_eps = argmin_x  f(x, lam) - <g, x> + eps <v, x>,        g = grad_w f(w, lam).

The tilt ``-<g, x>`` makes ``w`` itself the solution at ``eps = 0``, so the product is
linearised at the given ``w`` whether or not it is stationary, like every implicit method (F2SA
and BOME take ``w`` stationary, where the tilt vanishes). The stationarity condition
``grad_w f(w_eps, lam) = g - eps v`` and the implicit function theorem give
``w_eps = w - eps H^{-1} v + O(eps^2)``, hence::

    (grad_lam f(w_eps, lam) - grad_lam f(w, lam)) / eps
        = -(d^2 f/dlam dw) H^{-1} v + O(eps)  =  v^T dw*/dlam + O(eps),

the best-response product from ordinary gradients alone (F2SA's
``lambda (grad_x g(x, y_lambda) - grad_x g(x, z))`` with penalty ``lambda = 1 / eps``).

``w_eps`` is reached by ``steps`` gradient steps (heavy-ball with ``momentum > 0``) from ``w``,
or from the previous hop's solution. On a loss quadratic in ``w`` the displacement after ``K``
steps is exactly ``-eps`` times the ``K``-th iterate of the fixed-point iteration on
``H x = v`` (Grazzi et al., ICML 2020), so the method then equals
``fixed_point(K, step, momentum=...)`` and converges under the same condition,
``step < 2 / lambda_max(H)`` (``2 (1 + momentum) / lambda_max(H)`` with momentum).

Three errors remain: the solve's (contracting like ``(1 - step mu)^K`` for plain steps), the
``O(eps)`` truncation of the one-sided difference (zero on a quadratic) and rounding, of order
``eps_mach ||w|| / ||w_eps - w||``. ``benchmarks/RESULTS_fd.md`` measures them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .. import _checks, _tree
from .._products import Linearization, accumulation_dtype, grad_lam, grad_w, step_length
from .._types import InnerLoss, MatVec, Params
from ._base import NO_CONTEXT, HopContext, HopInfo, HopResult, Method, check_inputs
from ._strategies import Curvature


def _acc(a: Params) -> Params:
    """Each leaf in its accumulation dtype (at least float32)."""
    return {k: t.to(accumulation_dtype(t.dtype)) for k, t in a.items()}


def _shifted(w: Params, d: Params) -> Params:
    """``w + d`` for a displacement ``d`` kept in a wider dtype, rounded once to ``w``'s."""
    return {k: (t.to(d[k].dtype) + d[k]).to(t.dtype) for k, t in w.items()}


def _lam_difference(inner: InnerLoss, w: Params, lam: Params, d: Params, eps: float) -> Params:
    """``(grad_lam f(w + d, lam) - grad_lam f(w, lam)) / eps``, formed in at least float32."""
    moved, here = grad_lam(inner, _shifted(w, d), lam), grad_lam(inner, w, lam)
    out: Params = {}
    for k, t in moved.items():
        acc = accumulation_dtype(t.dtype)
        out[k] = ((t.to(acc) - here[k].to(acc)) / eps).to(t.dtype)
    return out


@dataclass(frozen=True)
class GradientSecant(Curvature):
    """``d -> grad_w f(w + d, lam) - grad_w f(w, lam)``: how the gradient changes over a
    displacement ``d``, ``H d + O(||d||^2)``; one gradient per product, after one at ``w``.

    Not linear in ``d``: it is the operator of :class:`Penalty`'s perturbed descent (whose
    displacements are small), not one for a linear solver. Being a curvature lets a
    data-parallel wrapper average it over ranks like any other (gradients are linear in the
    data), so the descent is the global batch's. Products are in at least float32.
    """

    @property
    def second_order(self) -> bool:
        return False

    @property
    def finite_differences(self) -> bool:
        return True

    def matvec(self, lin: Linearization) -> MatVec:
        w, lam, inner = _tree.detach(lin.w), _tree.detach(lin.lam), lin.inner
        base: list[Params] = []  # grad_w f(w), evaluated at the first product

        def product(d: Params) -> Params:
            if not base:
                base.append(_acc(grad_w(inner, w, lam)))
            return _tree.sub(_acc(grad_w(inner, _shifted(w, d), lam)), base[0])

        return product


@dataclass(frozen=True)
class Penalty(Method):
    """``v^T dw*/dlam ~ (grad_lam f(w_eps, lam) - grad_lam f(w, lam)) / eps`` (F2SA, BOME).

    ``w_eps`` approximately minimises ``f(., lam) - <grad_w f(w, lam), .> + eps <v, .>``: it is
    reached by ``steps`` steps ``d <- d - step m``, ``m <- momentum m + G(d)`` on the
    displacement ``d = w_eps - w`` (the heavy-ball form of ``torch.optim.SGD``; plain gradient
    descent when ``momentum = 0``), where ``G`` is that problem's gradient plus ``damping d``
    (the weight decay of the lower level's SGD, as in :func:`fixed_point_of`). See the module
    docstring for the derivation; the bias vanishes as ``steps`` grows and ``eps`` shrinks,
    down to a rounding floor.

    Costs ``steps + 3`` gradient evaluations (``steps + 4`` from a warm start) and no
    second-order autograd: one at ``w``, one per step after the first (``G(0) = eps v`` needs
    none), one at the returned point for its residual, and two of ``grad_lam f`` for the
    difference. ``G``'s gradient change ``grad_w f(w + d) - grad_w f(w)`` is a
    :class:`GradientSecant` curvature, so the Engine's data-parallel strategies (``ddp``,
    ``zero``) average it over ranks like the implicit methods' products: the descent is the
    global batch's. On an FSDP2-sharded level the gradients in ``w`` go through FSDP2's forward
    and reduce-scatter (the global batch's already).

    ``epsilon=None`` picks ``eps = sqrt(eps_mach) max(1, ||w||) / (step ||v||)``: the first step
    then moves ``w`` by ``sqrt(eps_mach) max(1, ||w||)``, the length that balances the ``O(eps)``
    truncation of a one-sided difference against its ``O(eps_mach / eps)`` rounding (see
    :mod:`ziggurat._products`), and the final displacement is that length times between 1
    and the condition number of ``H`` when ``step <= 1 / lambda_max(H)``. ``eps_mach`` is the
    roundoff of ``w``'s dtype, or of an active coarser autocast dtype.

    Diagnostics: ``HopInfo.iterations`` counts gradient evaluations; ``residual`` is the
    relative stationarity of the returned point, ``||G(d)|| / (eps ||v||)``, which equals
    ``||v - H x|| / ||v||`` for ``x = -d / eps`` on a quadratic. ``solution`` is that ``x``
    (an estimate of ``H^{-1} v``); with ``warm_start=True`` the next call starts from
    ``d = -eps x0`` for the ``x0`` it is given in ``context.warm_start``.

    Attributes:
        steps: first-order steps on the perturbed problem (>= 1).
        step: their step size; ``< 2 / lambda_max(H)`` (the lower level's SGD learning rate
            satisfies this whenever that level trains stably, see :func:`penalty_of`).
        epsilon: the perturbation ``eps`` (F2SA's ``1 / lambda``), or ``None`` for the rule.
        momentum: heavy-ball momentum in ``[0, 1)``.
        damping: Tikhonov damping ``c`` (the curvature becomes ``H + c I``).
        warm_start: start from ``context.warm_start`` when given.
        curvature: the gradient change over a displacement; :class:`GradientSecant` (the
            method as published). A linear one, such as ``FiniteDifference()``, turns the
            descent into :func:`fixed_point` on that operator.
    """

    steps: int = 10
    step: float = 1.0
    epsilon: float | None = None
    momentum: float = 0.0
    damping: float = 0.0
    warm_start: bool = False
    curvature: Curvature = GradientSecant()

    def __post_init__(self) -> None:
        _checks.int_at_least("penalty steps", self.steps, 1)
        _checks.positive("penalty step", self.step)
        if self.epsilon is not None:
            _checks.positive("penalty epsilon", self.epsilon)
        _checks.non_negative("penalty momentum", self.momentum)
        if self.momentum >= 1.0:
            raise ValueError(
                f"penalty momentum must be < 1 (the heavy-ball steps diverge otherwise), "
                f"got {self.momentum!r}"
            )
        _checks.non_negative("penalty damping", self.damping)
        _checks.boolean("penalty warm_start", self.warm_start)
        if not isinstance(self.curvature, Curvature):
            raise ValueError(
                "penalty curvature must be a ziggurat.hypergradient.Curvature, by default "
                f"GradientSecant(), got {self.curvature!r}"
            )

    @property
    def name(self) -> str:
        return "penalty"

    @property
    def warm_starts(self) -> bool:
        return self.warm_start

    @property
    def finite_differences(self) -> bool:
        return True

    @property
    def first_order_only(self) -> bool:
        return not self.curvature.second_order

    def with_curvature(self, wrap: Callable[[Curvature], Curvature]) -> Penalty:
        return dataclasses.replace(self, curvature=wrap(self.curvature))

    def _epsilon(self, w: Params, v_norm: float) -> float:
        # a Python number (one sync, next to the norm of v): a tensor built from FSDP-sharded w
        # would be a DTensor, which a plain lam's gradients cannot be divided by
        if self.epsilon is not None:
            return self.epsilon
        return float(step_length(w, order=1)) / (self.step * v_norm)

    def _descend(self, gradient: MatVec, d: Params, grad: Params) -> Params:
        """``steps`` heavy-ball steps on ``d`` from the gradient ``grad`` at ``d``."""
        buf: Params | None = None
        for k in range(self.steps):
            if k > 0:
                grad = gradient(d)
            if buf is None or self.momentum == 0.0:
                buf = grad
            else:
                buf = _tree.axpy_(1.0, grad, _tree.scale_(buf, self.momentum))
            d = _tree.axpy_(-self.step, buf, d)  # d is this call's own tree
        return d

    def __call__(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        v: Params,
        context: HopContext = NO_CONTEXT,
    ) -> HopResult:
        check_inputs(w, lam, v)
        wd, lamd, vd = _tree.detach(w), _tree.detach(lam), _acc(_tree.detach(v))
        v_norm = float(_tree.finite_rhs_norm(vd, "penalty"))  # one sync, as for eps
        if v_norm == 0.0:
            zero = HopInfo(self.name, 0, 0.0, solution=_tree.zeros_like(wd))
            return HopResult(_tree.zeros_like(lamd), zero)
        eps = self._epsilon(wd, v_norm)
        secant = self.curvature.matvec(Linearization(inner, wd, lamd))

        def gradient(d: Params) -> Params:
            """The perturbed problem's gradient ``G(d) = secant(d) + eps v + c d``."""
            out = _tree.axpy_(eps, vd, _acc(secant(d)))
            return out if self.damping == 0.0 else _tree.axpy_(self.damping, d, out)

        x0 = context.warm_start if self.warm_start else None
        if x0 is None:  # G(0) = eps v: the first step needs no evaluation
            d, grad, evaluations = _tree.zeros_like(vd), _tree.scale(vd, eps), 0
        else:
            _tree.check_same_shapes(wd, x0, "penalty warm start")
            d = _tree.scale(_acc(_tree.detach(x0)), -eps)
            grad, evaluations = gradient(d), 1
        d = self._descend(gradient, d, grad)
        residual = float(_tree.norm(gradient(d))) / (eps * v_norm)
        out = _lam_difference(inner, wd, lamd, d, eps)
        x = {k: (-t / eps).to(wd[k].dtype) for k, t in d.items()}
        # the secant's base, the steps after the first, the residual and two grad_lam
        info = HopInfo(self.name, self.steps + 3 + evaluations, residual, solution=x)
        return HopResult(out, info)
