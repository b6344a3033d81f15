"""Second-order products of a pure inner loss ``f(w, lam)``.

* ``hvp``: ``u -> (d^2 f / dw^2) u``;
* ``mixed_vjp``: ``u -> d/dlam <grad_w f(w, lam), u> = (d^2 f / dlam dw) u``.

Each comes by double backward (``hvp``, ``mixed_vjp``, or a :class:`Linearization` that caches
the gradient graph for many products) or by central differences of ordinary gradients
(``hvp_fd``, ``mixed_vjp_fd``: no second-order autograd, one step rule derived below).

Both are linear in ``u``. They are evaluated at fixed ``(w, lam)``: the returned tensors carry
no graph back to the caller's tensors. Double-backward products evaluate the loss under
:func:`~ziggurat._second_order.twice_differentiable` (fused attention takes its math kernel),
and an operation without a double backward is a
:class:`~ziggurat._second_order.DoubleBackwardError` error naming it; finite-difference products
evaluate it as it is, with its fastest kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from . import _checks, _tree
from ._second_order import check_gradient_graph, translated, twice_differentiable
from ._types import InnerLoss, Params


def scalar_loss(value: object, where: str) -> Tensor:
    """Check that an inner loss returned a finite-shaped scalar tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{where} must return a scalar tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(
            f"{where} must return a scalar loss, got shape {tuple(value.shape)}; "
            "reduce it, e.g. with .mean() or .sum()"
        )
    return value.reshape(())


def _grad(out: Tensor, wrt: Params) -> Params:
    grads = torch.autograd.grad(out, list(wrt.values()), allow_unused=True)
    return _tree.fill_none(grads, wrt)


def grad_lam(inner: InnerLoss, w: Params, lam: Params) -> Params:
    """Plain gradient ``grad_lam f(w, lam)`` at fixed ``w``: one gradient evaluation (G)."""
    lam_ = _tree.leaves(lam)
    f = scalar_loss(inner(_tree.detach(w), lam_), "inner loss")
    return _tree.detach(_grad(f, lam_))


def pullback(
    pairs: Iterable[tuple[Tensor, Tensor]], wrt: Params, *, retain_graph: bool = False
) -> Params:
    """``sum_i c_i^T (d o_i / d wrt)`` over ``(o_i, c_i)`` pairs, detached.

    Outputs that do not depend on the graph are skipped; when none does, the result is zeros.
    """
    live = [(o, c.detach()) for o, c in pairs if o.requires_grad]
    if not live:
        return _tree.zeros_like(_tree.detach(wrt))
    grads = torch.autograd.grad(
        [o for o, _ in live],
        list(wrt.values()),
        grad_outputs=[c for _, c in live],
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return _tree.detach(_tree.fill_none(grads, wrt))


class Linearization:
    """The gradient graph ``g = grad_w f(w, lam)`` built once, lazily, and reused.

    Every ``hvp`` and ``mixed_vjp`` call is one backward pass through that graph, instead of a
    forward and a double backward per product. The graph is built only when a product is first
    asked for, so first-order methods never pay for it. The loss is evaluated under
    :func:`~ziggurat._second_order.twice_differentiable`, and the graph is checked once for
    operations without a double backward (:class:`~ziggurat._second_order.DoubleBackwardError`).
    """

    WHERE = "a Hessian-vector or mixed product by double backward"

    def __init__(self, inner: InnerLoss, w: Params, lam: Params) -> None:
        self.inner, self.w, self.lam = inner, w, lam
        self._built: tuple[Params, Params, list[Tensor], Tensor] | None = None

    def _graph(self) -> tuple[Params, Params, list[Tensor], Tensor]:
        if self._built is None:
            w_, lam_ = _tree.leaves(self.w), _tree.leaves(self.lam)
            with twice_differentiable():
                f = scalar_loss(self.inner(w_, lam_), "inner loss")
                g = torch.autograd.grad(f, list(w_.values()), create_graph=True, allow_unused=True)
            check_gradient_graph(g, f, self.WHERE)
            g_list = [
                torch.zeros_like(t) if gi is None else gi
                for gi, t in zip(g, w_.values(), strict=True)
            ]
            self._built = (w_, lam_, g_list, f)
        return self._built

    def _through(self, u: Params, wrt: Params) -> Params:
        _, _, g, f = self._graph()
        with translated(self.WHERE, f):
            return pullback(zip(g, u.values(), strict=True), wrt, retain_graph=True)

    def hvp(self, u: Params) -> Params:
        """``(d^2 f / dw^2) u`` by one backward pass through the cached gradient graph."""
        return self._through(u, self._graph()[0])

    def mixed_vjp(self, u: Params) -> Params:
        """``(d^2 f / dlam dw) u`` by one backward pass through the cached gradient graph."""
        return self._through(u, self._graph()[1])


def hvp(inner: InnerLoss, w: Params, lam: Params, u: Params) -> Params:
    """One Hessian-vector product ``(d^2 f/dw^2) u`` by double backward.

    Examples:
        >>> import torch
        >>> a = torch.tensor([2.0, 4.0], dtype=torch.float64)
        >>> def inner(w, lam):  # f = w'diag(a)w/2 - w'lam: H = diag(a), w* = lam / a
        ...     return 0.5 * (a * w["w"] ** 2).sum() - (w["w"] * lam["lam"]).sum()
        >>> w = {"w": torch.zeros(2, dtype=torch.float64)}
        >>> lam = {"lam": torch.ones(2, dtype=torch.float64)}
        >>> v = {"w": torch.ones(2, dtype=torch.float64)}
        >>> from ziggurat import hvp
        >>> hvp(inner, w, lam, v)["w"].tolist()  # diag(a) v
        [2.0, 4.0]
    """
    return Linearization(inner, w, lam).hvp(u)


def hvp_forward(inner: InnerLoss, w: Params, lam: Params, u: Params) -> Params:
    """``(d^2 f/dw^2) u`` by forward-over-reverse: ``torch.func.jvp`` of ``torch.func.grad``.

    Needs an inner loss that ``torch.func`` transforms can trace (no in-place ``.data`` edits or
    ``torch.autograd.grad`` inside it). Evaluated under
    :func:`~ziggurat._second_order.twice_differentiable` (fused attention has no forward-mode
    derivative either).
    """
    lam_d = _tree.detach(lam)

    def grad_w(w_: Params) -> Params:
        return torch.func.grad(lambda x: scalar_loss(inner(x, lam_d), "inner loss"))(w_)

    with twice_differentiable(), translated("a Hessian-vector product by forward-over-reverse"):
        out = torch.func.jvp(grad_w, (_tree.detach(w),), (_tree.detach(u),))
    return _tree.detach(out[1])


def mixed_vjp(inner: InnerLoss, w: Params, lam: Params, u: Params) -> Params:
    """``(d^2 f / dlam dw) u`` by double backward.

    Examples:
        >>> import torch
        >>> a = torch.tensor([2.0, 4.0], dtype=torch.float64)
        >>> def inner(w, lam):  # f = w'diag(a)w/2 - w'lam: H = diag(a), w* = lam / a
        ...     return 0.5 * (a * w["w"] ** 2).sum() - (w["w"] * lam["lam"]).sum()
        >>> w = {"w": torch.zeros(2, dtype=torch.float64)}
        >>> lam = {"lam": torch.ones(2, dtype=torch.float64)}
        >>> v = {"w": torch.ones(2, dtype=torch.float64)}
        >>> from ziggurat import mixed_vjp
        >>> mixed_vjp(inner, w, lam, v)["lam"].tolist()  # d/dlam of (df/dw . v) = -v
        [-1.0, -1.0]
    """
    return Linearization(inner, w, lam).mixed_vjp(u)


# ---------------------------------------------------------------- finite differences
#
# The step rule. A finite difference of gradients along ``u`` with step ``h`` has two errors:
#
# * truncation: a central difference ``(g(w + h u) - g(w - h u)) / 2h`` is off by
#   ``h^2/6 d^3f[u, u, .]``, i.e. ``O(h^2 ||d^3 f|| ||u||^3)`` (order p = 2); a one-sided
#   difference ``(g(w + h u) - g(w)) / h`` by ``O(h ||d^3 f|| ||u||^2)`` (order p = 1);
# * rounding: each gradient is computed with an absolute error of about ``eps ||grad f||``
#   (``eps`` the unit roundoff), and ``w + h u`` is rounded to ``w``'s precision, an error of
#   about ``eps ||w||`` in the perturbation itself; the quotient amplifies both by ``1 / h``.
#
# Both depend on ``h`` only through the length of the perturbation ``r = h ||u||``. Measured in
# units of the point's own scale ``s = max(1, ||w||)`` (so that rescaling the parameters moves
# the step with them), the total relative error is about ``(r/s)^p + eps s / r``, smallest at
# ``r = eps^(1/(p+1)) s``: ``h = eps^(1/3) max(1, ||w||) / ||u||`` for central differences, with
# an error of order ``eps^(2/3)`` (4e-11 in float64, 2.4e-5 in float32, 0.04 in bfloat16), and
# ``eps^(1/2)`` for one-sided ones. ``eps`` is the roundoff of the arithmetic the loss runs in:
# the parameters' dtype, or an active autocast dtype when that is coarser (a bfloat16 forward
# rounds every gradient to 8 bits whatever the parameters' dtype).


def roundoff(w: Params) -> float:
    """Unit roundoff of the arithmetic that evaluates the loss at ``w``.

    The machine epsilon of ``w``'s (first) floating dtype, or of the autocast dtype of ``w``'s
    device when autocast is active there and coarser.
    """
    first = next(iter(w.values()))
    dtype = first.dtype if first.is_floating_point() else torch.float32
    eps = torch.finfo(dtype).eps
    device = first.device.type
    if torch.is_autocast_enabled(device):
        eps = max(eps, torch.finfo(torch.get_autocast_dtype(device)).eps)
    return eps


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: bfloat16 and float16 differences and quotients are formed in float32."""
    return torch.promote_types(dtype, torch.float32)


def _norm(a: Params) -> Tensor:
    """``||a||`` as a 0-dim tensor in the accumulation dtype of ``a``'s first leaf (no sync)."""
    first = next(iter(a.values()))
    acc = accumulation_dtype(first.dtype)
    norms = [_tree.whole(torch.linalg.vector_norm(t, dtype=acc)) for t in a.values()]
    return torch.linalg.vector_norm(torch.stack(norms))


def step_length(w: Params, order: int = 2) -> Tensor:
    """The default perturbation length ``eps^(1/(order+1)) max(1, ||w||)`` (a 0-dim tensor).

    ``order`` is the order of the difference's truncation error: 2 for a central difference,
    1 for a one-sided one (the derivation is in the comment that opens this section).
    """
    eps = roundoff(w)
    return eps ** (1.0 / (order + 1)) * _norm(_tree.detach(w)).clamp(min=1.0)


def fd_step(length: float | Tensor, u: Params, u_norm: Tensor | None = None) -> Tensor:
    """The step ``h = length / ||u||`` that moves ``w`` by ``length`` along ``u`` (a 0-dim
    tensor, no host sync). For ``u = 0`` it is ``length`` itself, harmless: the perturbation
    is then zero. ``u_norm``: ``||u||`` when the caller has it."""
    u_norm = _norm(u) if u_norm is None else u_norm
    return length / torch.where(u_norm > 0, u_norm, torch.ones_like(u_norm))


def perturbation_length(w: Params, radius: float | None, order: int = 2) -> float | Tensor:
    """``radius`` when given (checked > 0), else :func:`step_length` of ``w``."""
    if radius is None:
        return step_length(w, order)
    _checks.positive("finite-difference radius", radius)
    return radius


def _plain(tensors: list[Tensor], dtype_of: list[Tensor]) -> bool:
    """Whether the fused ``torch._foreach_*`` kernels apply: plain tensors (not a subclass
    such as a DTensor) whose dtypes need no widening and match ``dtype_of``'s."""
    return all(
        type(t) in _PLAIN and t.dtype == d.dtype and accumulation_dtype(t.dtype) == t.dtype
        for t, d in zip(tensors, dtype_of, strict=True)
    )


_PLAIN = (Tensor, torch.nn.Parameter)


def shifted(w: Params, u: Params, h: float | Tensor) -> Params:
    """``w + h u``, formed in at least float32 and rounded once to each leaf's dtype."""
    ws, us = list(w.values()), [u[k] for k in w]
    if _plain(ws, ws) and _plain(us, ws):  # one fused kernel per operation, not per tensor
        return dict(zip(w, torch._foreach_add(ws, torch._foreach_mul(us, h)), strict=True))
    out: Params = {}
    for k, t in w.items():
        acc = accumulation_dtype(t.dtype)
        out[k] = torch.add(t.to(acc), u[k].to(acc) * h).to(t.dtype)
    return out


def central_difference(
    grad: Callable[[Params], Params], w: Params, u: Params, h: float | Tensor
) -> Params:
    """``(grad(w + h u) - grad(w - h u)) / (2 h)``: two gradient evaluations.

    The perturbed points are formed, and the difference and quotient taken, in at least
    float32: for bfloat16 and float16 parameters each point is rounded once, and dividing by a
    small ``2 h`` neither rounds again nor overflows float16's range. The result has the dtype
    of ``grad``'s output.
    """
    wd, ud = _tree.detach(w), _tree.detach(u)
    plus = grad(shifted(wd, ud, h))
    minus = grad(shifted(wd, ud, -h))
    ps, ms = list(plus.values()), [minus[k] for k in plus]
    if _plain(ps, ps) and _plain(ms, ps):
        diff = torch._foreach_sub(ps, ms)
        torch._foreach_div_(diff, 2 * h)
        return dict(zip(plus, diff, strict=True))
    out: Params = {}
    for k, p in plus.items():
        acc = accumulation_dtype(p.dtype)
        out[k] = ((p.to(acc) - minus[k].to(acc)) / (2 * h)).to(p.dtype)
    return out


NOT_CONNECTED = (
    "the inner loss does not depend on the lower parameters w through autograd, so its gradient "
    "in w (which finite-difference curvature and the penalty method take) is not available; "
    "an inner loss must evaluate the model at the w it is given (e.g. through "
    "torch.func.functional_call), not at parameters of its own"
)


def grad_w(inner: InnerLoss, w: Params, lam: Params) -> Params:
    """Plain gradient ``grad_w f(w, lam)`` at fixed ``lam``: one gradient evaluation (G).

    A loss that reaches none of ``w``'s tensors through autograd is a ``ValueError``: its
    gradient would read as zero and make every product built on it silently zero.
    """
    w_ = _tree.leaves(w)
    f = scalar_loss(inner(w_, _tree.detach(lam)), "inner loss")
    if not f.requires_grad:
        raise ValueError(NOT_CONNECTED)
    grads = torch.autograd.grad(f, list(w_.values()), allow_unused=True)
    if all(g is None for g in grads):
        raise ValueError(NOT_CONNECTED)
    return _tree.detach(_tree.fill_none(grads, w_))


def hvp_fd(
    inner: InnerLoss, w: Params, lam: Params, u: Params, radius: float | None = None
) -> Params:
    """``(d^2 f/dw^2) u`` by central differences of gradients, with no second-order autograd.

    ``(grad_w f(w + h u, lam) - grad_w f(w - h u, lam)) / (2 h)`` with ``h = radius / ||u||``,
    by default ``eps^(1/3) max(1, ||w||) / ||u||`` (:func:`step_length`).
    Costs two gradients (2 G); runs where double backward does not (e.g. the fused attention
    kernels). Exact when ``f`` is quadratic in ``w`` (up to rounding,
    relative ``O(eps^(2/3))``). No host synchronisation: the step stays a tensor.
    """
    h = fd_step(perturbation_length(_tree.detach(w), radius), u)
    return central_difference(lambda x: grad_w(inner, x, lam), w, u, h)


def mixed_vjp_fd(
    inner: InnerLoss, w: Params, lam: Params, u: Params, radius: float | None = None
) -> Params:
    """``(d^2 f / dlam dw) u`` by central finite differences (the DARTS rule; Liu et al. 2019).

    ``(grad_lam f(w + h u, lam) - grad_lam f(w - h u, lam)) / (2 h)``. With ``radius`` the step
    is ``h = radius / ||u||`` (Betty's ``darts_alpha``); otherwise
    ``eps^(1/3) max(1, ||w||) / ||u||`` (:func:`step_length`), the same rule as :func:`hvp_fd`.
    Costs two gradients (2 G) and no second-order autograd. Exact when ``grad_lam f`` is
    quadratic in ``w`` (up to rounding). A ``u`` with a NaN or an infinity is a ``ValueError``.
    """
    length = perturbation_length(_tree.detach(w), radius)
    u_norm = _tree.finite_rhs_norm(u, "finite-difference mixed product", _norm(u))
    # a tensor: no host sync (for u = 0 the perturbation and the quotient are zero)
    h = fd_step(length, u, u_norm)
    return central_difference(lambda x: grad_lam(inner, x, lam), w, u, h)
