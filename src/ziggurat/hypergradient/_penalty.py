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

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _checks, _tree
from .._products import accumulation_dtype, grad_w, scalar_loss, step_length
from .._types import InnerLoss, Params
from ..linalg._rhs import finite_rhs_norm
from ._base import NO_CONTEXT, HopContext, HopInfo, HopResult, Method, check_inputs


def _acc(a: Params) -> Params:
    """Each leaf in its accumulation dtype (at least float32)."""
    return {k: t.to(accumulation_dtype(t.dtype)) for k, t in a.items()}


def _gradients(inner: InnerLoss, w: Params, lam: Params) -> tuple[Params, Params]:
    """``grad_w f`` and ``grad_lam f`` from one backward pass, in accumulation dtypes."""
    w_, lam_ = _tree.leaves(w), _tree.leaves(lam)
    f = scalar_loss(inner(w_, lam_), "inner loss")
    grads = torch.autograd.grad(f, [*w_.values(), *lam_.values()], allow_unused=True)
    g_w = _tree.fill_none(grads[: len(w_)], w_)
    g_lam = _tree.fill_none(grads[len(w_) :], lam_)
    return _acc(_tree.detach(g_w)), _acc(_tree.detach(g_lam))


@dataclass(frozen=True)
class _Tilted:
    """The perturbed lower problem's gradient ``G(d) = grad_w f(w + d) - g + eps v + c d``
    as a function of the displacement ``d`` (kept in at least float32)."""

    inner: InnerLoss
    w: Params
    lam: Params
    tilt: Params  # g - eps v, in accumulation dtypes
    damping: float

    def point(self, d: Params) -> Params:
        """``w + d``, rounded once to ``w``'s dtypes."""
        return {k: (t.to(d[k].dtype) + d[k]).to(t.dtype) for k, t in self.w.items()}

    def _tilted(self, g_w: Params, d: Params) -> Params:
        out = _tree.sub(g_w, self.tilt)
        return out if self.damping == 0.0 else _tree.axpy_(self.damping, d, out)

    def gradient(self, d: Params) -> Params:
        return self._tilted(_acc(grad_w(self.inner, self.point(d), self.lam)), d)

    def final(self, d: Params) -> tuple[Params, Params]:
        """``G(d)`` (for the residual) and ``grad_lam f(w + d)``, from one backward pass."""
        g_w, g_lam = _gradients(self.inner, self.point(d), self.lam)
        return self._tilted(g_w, d), g_lam


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

    Costs ``steps + 1`` gradient evaluations (``steps + 2`` from a warm start) and no
    second-order autograd: the first step needs no evaluation, because ``G(0) = eps v``.

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

    Under the Engine's data-parallel strategies each rank descends on its own shard of the
    batch: the cotangent is averaged, the gradients inside the descent are not, so the hop is
    the mean of per-shard answers rather than the global-batch one (unlike the implicit
    methods, whose curvature products are averaged).

    Attributes:
        steps: first-order steps on the perturbed problem (>= 1).
        step: their step size; ``< 2 / lambda_max(H)`` (the lower level's SGD learning rate
            satisfies this whenever that level trains stably, see :func:`penalty_of`).
        epsilon: the perturbation ``eps`` (F2SA's ``1 / lambda``), or ``None`` for the rule.
        momentum: heavy-ball momentum in ``[0, 1)``.
        damping: Tikhonov damping ``c`` (the curvature becomes ``H + c I``).
        warm_start: start from ``context.warm_start`` when given.
    """

    steps: int = 10
    step: float = 1.0
    epsilon: float | None = None
    momentum: float = 0.0
    damping: float = 0.0
    warm_start: bool = False

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
        return True

    def _epsilon(self, w: Params, v_norm: float) -> float | Tensor:
        if self.epsilon is not None:
            return self.epsilon
        return step_length(w, order=1) / (self.step * v_norm)

    def _descend(self, problem: _Tilted, d: Params, grad: Params) -> Params:
        """``steps`` heavy-ball steps on ``d`` from the gradient ``grad`` at ``d``."""
        buf: Params | None = None
        for k in range(self.steps):
            if k > 0:
                grad = problem.gradient(d)
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
        v_norm = finite_rhs_norm(vd, "penalty")
        if v_norm == 0.0:
            zero = HopInfo(self.name, 0, 0.0, solution=_tree.zeros_like(wd))
            return HopResult(_tree.zeros_like(lamd), zero)
        eps = self._epsilon(wd, v_norm)
        g_w, g_lam = _gradients(inner, wd, lamd)
        problem = _Tilted(inner, wd, lamd, _tree.axpy(-eps, vd, g_w), self.damping)
        x0 = context.warm_start if self.warm_start else None
        if x0 is None:
            d, grad, evaluations = _tree.zeros_like(vd), _tree.scale(vd, eps), 2
        else:
            _tree.check_same_shapes(wd, x0, "penalty warm start")
            d = _tree.scale(_acc(_tree.detach(x0)), -eps)
            grad, evaluations = problem.gradient(d), 3
        d = self._descend(problem, d, grad)
        residual, g_lam_eps = problem.final(d)
        out = {k: ((t - g_lam[k]) / eps).to(lamd[k].dtype) for k, t in g_lam_eps.items()}
        x = {k: (-t / eps).to(wd[k].dtype) for k, t in d.items()}
        ratio = float(_tree.norm(residual) / eps) / v_norm
        info = HopInfo(self.name, evaluations + self.steps - 1, ratio, solution=x)
        return HopResult(out, info)
