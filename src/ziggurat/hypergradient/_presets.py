"""Named presets: the methods users pick, each a value built from the strategies.

Strings map to these in exactly one place, :data:`PRESETS` through :func:`from_name`;
``Config(type=...)``, Betty's ``jvp_fn_mapping`` and the command line all go through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import linalg
from ..optim import Adam, FunctionalOptimizer
from ._auto import auto
from ._base import Method
from ._finite_difference import FiniteDifference
from ._first_order import FirstOrder
from ._implicit import Curvature, DoubleBackward, Implicit, MixedAutograd, MixedFiniteDifference
from ._optimizer_map import linearised_map
from ._penalty import GradientSecant, Penalty
from ._sama import Sama
from ._stochastic import BatchLoss, Sampler, Stochastic
from ._strategies import MixedRule
from ._unrolled import Unrolled


def darts(radius: float | None = None, *, scale: float = 1.0) -> Implicit:
    """DARTS (Liu et al., ICLR 2019), read as implicit differentiation with ``H^{-1} ~ scale I``.

    The mixed product is a central finite difference; ``radius=None`` picks the step from the
    dtype, a number sets ``h = radius / ||v||`` (Betty's ``darts_alpha``). ``scale=1`` is
    Betty's rule; the paper's second-order term is ``scale = xi``, the lower level's learning
    rate (its one-step unrolled approximation), which keeps that term from dominating the
    direct gradient when the lower loss is stiff. Costs 2 G.

    Examples:
        With ``H^{-1} ~ I``, the best response's ``v / a`` becomes ``v``:

        >>> import torch
        >>> a = torch.tensor([2.0, 4.0], dtype=torch.float64)
        >>> def inner(w, lam):  # f = w'diag(a)w/2 - w'lam: H = diag(a), w* = lam / a
        ...     return 0.5 * (a * w["w"] ** 2).sum() - (w["w"] * lam["lam"]).sum()
        >>> w = {"w": torch.zeros(2, dtype=torch.float64)}
        >>> lam = {"lam": torch.ones(2, dtype=torch.float64)}
        >>> v = {"w": torch.ones(2, dtype=torch.float64)}
        >>> from ziggurat.hypergradient import darts
        >>> [round(x, 6) for x in darts()(inner, w, lam, v).vjp["lam"].tolist()]
        [1.0, 1.0]
    """
    return Implicit(linalg.identity(scale), MixedFiniteDifference(radius), label="darts")


def neumann(
    iterations: int = 1,
    alpha: float = 1.0,
    *,
    damping: float = 0.0,
    curvature: Curvature = DoubleBackward(),
    mixed: MixedRule = MixedAutograd(),
) -> Implicit:
    """Neumann-series implicit differentiation (Lorraine et al., AISTATS 2020).

    Needs ``alpha < 2 / lambda_max(H)``. Costs ``iterations`` Hessian-vector products plus one
    mixed product. ``curvature=FiniteDifference(), mixed=MixedFiniteDifference()`` needs only
    first-order autograd (as for every preset below that takes both).

    Examples:
        The series converges to ``v / a`` at the rate ``max |1 - alpha a_i|`` (here 1/2):

        >>> import torch
        >>> a = torch.tensor([2.0, 4.0], dtype=torch.float64)
        >>> def inner(w, lam):  # f = w'diag(a)w/2 - w'lam: H = diag(a), w* = lam / a
        ...     return 0.5 * (a * w["w"] ** 2).sum() - (w["w"] * lam["lam"]).sum()
        >>> w = {"w": torch.zeros(2, dtype=torch.float64)}
        >>> lam = {"lam": torch.ones(2, dtype=torch.float64)}
        >>> v = {"w": torch.ones(2, dtype=torch.float64)}
        >>> from ziggurat.hypergradient import neumann
        >>> [round(x, 4) for x in neumann(30, alpha=0.25)(inner, w, lam, v).vjp["lam"].tolist()]
        [0.5, 0.25]
    """
    solver = linalg.neumann(iterations, alpha, damping=damping)
    return Implicit(solver, mixed, curvature, label="neumann")


def cg(
    maxiter: int = 10,
    tol: float = 1e-10,
    *,
    damping: float = 0.0,
    warm_start: bool = False,
    curvature: Curvature = DoubleBackward(),
    mixed: MixedRule = MixedAutograd(),
) -> Implicit:
    """Conjugate-gradient implicit differentiation (as in iMAML, Rajeswaran et al. 2019).

    Exact after ``n`` iterations on ``n`` parameters when ``H`` is positive definite.

    Examples:
        On a quadratic lower loss the best response is ``w* = lam / a``, so
        ``v^T dw*/dlam = v / a``; CG finds it in two products on two parameters:

        >>> import torch
        >>> a = torch.tensor([2.0, 4.0], dtype=torch.float64)
        >>> def inner(w, lam):  # f = w'diag(a)w/2 - w'lam: H = diag(a), w* = lam / a
        ...     return 0.5 * (a * w["w"] ** 2).sum() - (w["w"] * lam["lam"]).sum()
        >>> w = {"w": torch.zeros(2, dtype=torch.float64)}
        >>> lam = {"lam": torch.ones(2, dtype=torch.float64)}
        >>> v = {"w": torch.ones(2, dtype=torch.float64)}
        >>> from ziggurat.hypergradient import cg
        >>> result = cg(maxiter=2)(inner, w, lam, v)
        >>> result.vjp["lam"].tolist()
        [0.5, 0.25]
        >>> result.info.iterations
        2
    """
    solver = linalg.conjugate_gradient(maxiter, tol, damping=damping, warm_start=warm_start)
    return Implicit(solver, mixed, curvature, label="cg")


def fixed_point(
    iterations: int = 10,
    step: float = 1.0,
    *,
    momentum: float = 0.0,
    tol: float | None = None,
    damping: float = 0.0,
    curvature: Curvature = DoubleBackward(),
    mixed: MixedRule = MixedAutograd(),
) -> Implicit:
    """Fixed-point implicit differentiation (Grazzi et al., ICML 2020).

    Iterates the transposed linearised map of the inner optimizer: gradient descent by default,
    ``x <- x - step (H x - v)``, which needs ``step < 2 / lambda_max(H)`` and has the same
    iterates as :func:`neumann` (one behind for the same cost); with ``momentum = mu`` the
    heavy-ball map of ``torch.optim.SGD(lr=step, momentum=mu)``,
    ``x <- x - step (H x - v) + mu (x - x_prev)``, which needs ``mu < 1`` and
    ``step < 2 (1 + mu) / lambda_max(H)``. Reports the exact residual of its answer and stops
    once it is ``<= tol``. Costs at most ``iterations`` Hessian-vector products plus one mixed
    product. :func:`fixed_point_of` reads ``step``, ``momentum`` and ``damping`` off an
    optimizer.
    """
    solver = linalg.fixed_point(iterations, step, tol=tol, damping=damping, momentum=momentum)
    return Implicit(solver, mixed, curvature, label="fixed_point")


def fixed_point_of(
    optimizer: FunctionalOptimizer,
    iterations: int = 100,
    *,
    tol: float | None = None,
    curvature: Curvature = DoubleBackward(),
    mixed: MixedRule = MixedAutograd(),
) -> Implicit:
    """:func:`fixed_point` on the linearised update map of the inner ``optimizer``.

    ``sgd(lr, momentum=mu, dampening=d, weight_decay=c)`` gives ``step = lr (1 - d)`` (``lr``
    without momentum), ``momentum = mu`` and ``damping = c``: the hypergradient of the point the
    optimizer converges to, a stationary point of ``f + c/2 ||w||^2``. Adam and AdamW are
    refused with the reason (their map has no fixed-point linearisation at a stationary point;
    see ``docs/hypergradients.md``).
    """
    m = linearised_map(optimizer)
    return fixed_point(
        iterations,
        m.step,
        momentum=m.momentum,
        tol=tol,
        damping=m.damping,
        curvature=curvature,
        mixed=mixed,
    )


def exact(
    *,
    damping: float = 0.0,
    curvature: Curvature = DoubleBackward(),
    mixed: MixedRule = MixedAutograd(),
) -> Implicit:
    """Implicit differentiation with a dense direct solve: the reference for small problems."""
    return Implicit(linalg.dense(damping=damping), mixed, curvature, label="exact")


def stochastic(
    loss: BatchLoss,
    sample: Sampler,
    *,
    num_batches: int = 1,
    mixed_batches: int | None = None,
    solver: linalg.LinearSolver | None = None,
    curvature: Curvature = DoubleBackward(),
    mixed: MixedRule = MixedAutograd(),
) -> Stochastic:
    """Stochastic implicit differentiation (Grazzi et al., AISTATS 2021).

    Hessian and mixed products averaged over ``num_batches`` and ``mixed_batches`` independent
    mini-batches drawn by ``sample`` and scored by ``loss(w, lam, batch)``. The default solver is
    ``conjugate_gradient(maxiter=100, tol=1e-10)``. ``curvature=FiniteDifference(),
    mixed=MixedFiniteDifference()`` takes both products from gradients (``first_order_only``).
    """
    solver = linalg.conjugate_gradient(100, 1e-10) if solver is None else solver
    return Stochastic(solver, loss, sample, num_batches, mixed_batches, curvature, mixed)


def sama(radius: float = 1.0) -> Sama:
    """SAMA (Choe et al., NeurIPS 2023): optimizer-preconditioned, first-order."""
    return Sama(radius)


def first_order() -> FirstOrder:
    """No term through the lower level."""
    return FirstOrder()


def penalty(
    steps: int = 10,
    step: float = 1.0,
    *,
    epsilon: float | None = None,
    momentum: float = 0.0,
    damping: float = 0.0,
    warm_start: bool = False,
    curvature: Curvature = GradientSecant(),
) -> Penalty:
    """The fully first-order penalty method (F2SA, Kwon et al., ICML 2023; BOME, Liu et al.,
    NeurIPS 2022): ``(grad_lam f(w_eps) - grad_lam f(w)) / eps`` with ``w_eps`` reached by
    ``steps`` gradient steps on ``f - <grad_w f(w), .> + eps <v, .>``.

    Only ordinary gradients (``steps + 1`` of them), so it runs where double backward does not.
    ``step`` needs ``step < 2 / lambda_max(H)``, like :func:`fixed_point`, which it equals on
    a quadratic; the lower level's SGD learning rate is a safe choice (:func:`penalty_of` reads
    it). ``epsilon=None`` picks ``eps`` from the dtype and the norms (see :class:`Penalty`).
    """
    return Penalty(steps, step, epsilon, momentum, damping, warm_start, curvature)


def penalty_of(
    optimizer: FunctionalOptimizer,
    steps: int = 10,
    *,
    epsilon: float | None = None,
    warm_start: bool = False,
) -> Penalty:
    """:func:`penalty` with the lower level's own SGD: step, momentum and weight decay.

    ``sgd(lr, momentum=mu, dampening=d, weight_decay=c)`` gives ``step = lr (1 - d)``,
    ``momentum = mu`` and ``damping = c``, the perturbed problem is then solved by the update
    that trains the lower level, stable whenever that training is. Adam and AdamW are refused:
    their normalised steps move ``w`` by about ``lr`` whatever ``eps`` is, so the displacement
    would not scale with the perturbation.
    """
    if isinstance(optimizer, Adam):
        raise ValueError(
            "penalty_of: adam's normalised steps move w by about lr whatever eps is, so the "
            "perturbed solve would not measure H^{-1} v; use penalty(steps, step=...) with the "
            "step of plain gradient descent on the lower loss"
        )
    m = linearised_map(optimizer, "penalty_of", "penalty(steps, step, momentum=...)")
    return Penalty(steps, m.step, epsilon, m.momentum, m.damping, warm_start)


def unrolled(
    optimizer: FunctionalOptimizer,
    steps: int = 1,
    *,
    truncate: int | None = None,
    checkpoint_segments: int | str | None = None,
) -> Unrolled:
    """Reverse-mode through ``steps`` differentiable optimizer steps, optionally truncated.

    ``checkpoint_segments="sqrt"`` (or an int) recomputes segments in the reverse pass from
    stored boundary states: memory ``O(sqrt T)`` instead of ``O(T)``, same result.
    """
    return Unrolled(optimizer, steps, truncate, checkpoint_segments)


PRESETS: dict[str, Callable[..., Method]] = {
    "darts": darts,
    "neumann": neumann,
    "cg": cg,
    "fixed_point": fixed_point,
    "exact": exact,
    "sama": sama,
    "stochastic": stochastic,
    "first_order": first_order,
    "unrolled": unrolled,
    "penalty": penalty,
    "auto": auto,
}


CONFIG_TYPES = ("darts", "sama", "neumann", "cg", "exact", "first_order", "penalty", "auto")
"""The preset names ``Config(type=...)`` accepts: Betty's method names, ``penalty`` and
``auto``."""

PRODUCT_RULES: dict[str, dict[str, Curvature | MixedRule]] = {
    "autograd": {"curvature": DoubleBackward(), "mixed": MixedAutograd()},
    "finite_difference": {"curvature": FiniteDifference(), "mixed": MixedFiniteDifference()},
}
"""``Config(curvature=...)``: the ``curvature=`` and ``mixed=`` options of the implicit presets.

``"autograd"`` takes Hessian-vector and mixed products by double backward; ``"finite_difference"``
takes both by central differences of ordinary gradients (:class:`FiniteDifference`,
:class:`MixedFiniteDifference`), so the method needs only first-order autograd.
"""

PRODUCT_TYPES = ("neumann", "cg", "fixed_point", "exact")
"""The presets that take ``curvature=`` and ``mixed=`` (the others are first-order already or,
like ``stochastic``, take their own products)."""


def from_name(name: str, **options: Any) -> Method:
    """Build the preset called ``name`` with ``options``; a clear error for unknown names."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown hypergradient method {name!r}; choose one of {sorted(PRESETS)}"
        ) from None
    return factory(**options)
