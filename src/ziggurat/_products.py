"""Second-order products of a pure inner loss ``f(w, lam)``.

* ``hvp``: ``u -> (d^2 f / dw^2) u``;
* ``mixed_vjp``: ``u -> d/dlam <grad_w f(w, lam), u> = (d^2 f / dlam dw) u``.

Both are linear in ``u``. They are evaluated at fixed ``(w, lam)``: the returned tensors carry
no graph back to the caller's tensors.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from . import _checks, _tree
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
    asked for, so first-order methods never pay for it.
    """

    def __init__(self, inner: InnerLoss, w: Params, lam: Params) -> None:
        self.inner, self.w, self.lam = inner, w, lam
        self._built: tuple[Params, Params, list[Tensor]] | None = None

    def _graph(self) -> tuple[Params, Params, list[Tensor]]:
        if self._built is None:
            w_, lam_ = _tree.leaves(self.w), _tree.leaves(self.lam)
            f = scalar_loss(self.inner(w_, lam_), "inner loss")
            g = torch.autograd.grad(f, list(w_.values()), create_graph=True, allow_unused=True)
            g_list = [
                torch.zeros_like(t) if gi is None else gi
                for gi, t in zip(g, w_.values(), strict=True)
            ]
            self._built = (w_, lam_, g_list)
        return self._built

    def _through(self, u: Params, wrt: Params) -> Params:
        _, _, g = self._graph()
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
    ``torch.autograd.grad`` inside it).
    """
    lam_d = _tree.detach(lam)

    def grad_w(w_: Params) -> Params:
        return torch.func.grad(lambda x: scalar_loss(inner(x, lam_d), "inner loss"))(w_)

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


def default_fd_step(w: Params, u: Params) -> float:
    """Central-difference step ``eps^(1/3) * max(1, ||w||) / ||u||`` for ``w``'s dtype.

    ``eps^(1/3)`` balances the ``O(h^2)`` truncation error against the ``O(eps/h)`` rounding
    error of a central difference; scaling by ``||w||/||u||`` makes the step relative to the
    size of the point and direction.
    """
    first = next(iter(w.values()))
    eps = torch.finfo(first.dtype if first.is_floating_point() else torch.float32).eps
    u_norm = _tree.finite_rhs_norm(u, "finite-difference mixed product")
    if u_norm == 0.0:
        return 0.0
    return eps ** (1.0 / 3.0) * max(1.0, float(_tree.norm(_tree.detach(w)))) / u_norm


def mixed_vjp_fd(
    inner: InnerLoss, w: Params, lam: Params, u: Params, radius: float | None = None
) -> Params:
    """``(d^2 f / dlam dw) u`` by central finite differences (the DARTS rule; Liu et al. 2019).

    ``(grad_lam f(w + h u, lam) - grad_lam f(w - h u, lam)) / (2 h)``. With ``radius`` the step
    is ``h = radius / ||u||`` (Betty's ``darts_alpha``); otherwise :func:`default_fd_step`.
    Costs two gradients (2 G) and no second-order autograd. Exact when ``f`` is quadratic in
    ``w`` (up to rounding).
    """
    if radius is not None:
        _checks.positive("finite-difference radius", radius)
        u_norm = _tree.finite_rhs_norm(u, "finite-difference mixed product")
        h = radius / u_norm if u_norm > 0 else 0.0
    else:
        h = default_fd_step(w, u)
    if h == 0.0:
        return _tree.zeros_like(lam)
    wd, ud = _tree.detach(w), _tree.detach(u)
    plus = grad_lam(inner, _tree.axpy(h, ud, wd), lam)
    minus = grad_lam(inner, _tree.axpy(-h, ud, wd), lam)
    return _tree.scale_(_tree.sub(plus, minus), 1.0 / (2.0 * h))
