"""Evaluating a loss whose gradient will be differentiated again, and what refuses to be.

Second-order products (Hessian-vector and mixed products by double backward, differentiable
optimizer steps, Gauss-Newton's double-vjp) differentiate a gradient graph built with
``create_graph=True``. Two kinds of operation cannot take part:

* **kernels without a double backward.** ``torch.nn.functional.scaled_dot_product_attention``
  (inside ``nn.MultiheadAttention`` and every ``nn.Transformer*`` layer) dispatches to fused
  kernels (flash attention on the CPU; flash, memory-efficient and cuDNN on CUDA) whose backward
  is not differentiable. Its math kernel is a composite of matrix products and a softmax: it
  has a double backward and the same values up to rounding. :func:`twice_differentiable`
  selects it for the forward passes whose graph is differentiated twice; nothing else changes.
* **operations PyTorch cannot differentiate twice** (e.g. ``torch.cdist``'s backward) and
  custom ``torch.autograd.Function``s marked ``@once_differentiable``. The first raise a
  ``RuntimeError`` in the second backward pass; the second are worse: their backward is cut
  from the graph, so a double backward through them silently reads as zero. Both become a
  :class:`DoubleBackwardError` (a ``ValueError``) that names the operation and the first-order
  methods that run instead: :func:`check_gradient_graph` finds the silent kind (and the
  operations PyTorch marks as not implemented) by walking the gradient graph once, before
  any product, and :func:`translated` turns the raised kind into the same error.

When :func:`twice_differentiable` is used, and why: always, for exactly the forward passes
whose gradient is differentiated again, and for no others. There is no choice to make there
(no fused kernel has a double backward, so the math kernel is the only one that works), it is
the same on every device and every run (reproducible), and a level's own training step, which
differentiates once, keeps the fastest kernel. The price is that of the math kernel in those
passes: it materialises the attention matrix, ``O(L^2)`` memory per head for ``L`` tokens
(``benchmarks/RESULTS.md`` measures the time).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

FIRST_ORDER_METHODS = (
    "curvature=FiniteDifference() with mixed=MixedFiniteDifference() on cg, neumann, "
    "fixed_point or exact; penalty(); darts(); sama(); first_order()"
)
"""The core's methods that need only first-order autograd, as named in error messages."""


@contextmanager
def twice_differentiable() -> Iterator[None]:
    """Evaluate operations with a kernel that has a double backward.

    Today that is ``scaled_dot_product_attention``'s math kernel
    (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``); other operations are unaffected, so
    the context costs nothing for models without attention. Use it around the forward pass of
    a loss whose gradient is taken with ``create_graph=True`` and then differentiated.
    """
    with sdpa_kernel(SDPBackend.MATH):
        yield


class DoubleBackwardError(ValueError):
    """A second-order product met an operation that cannot be differentiated twice.

    Attributes:
        operation: what was met, as PyTorch names it (``aten::_cdist_backward``) or as the
            custom ``torch.autograd.Function`` classes of the loss.
        hop: the index of the hop on its path where it happened, when known (set by
            ``hypergradient.fold``).
    """

    def __init__(self, operation: str, where: str = "", hop: int | None = None) -> None:
        self.operation, self.where, self.hop = operation, where, hop
        prefix = f"{where}: " if where else ""
        super().__init__(
            f"{prefix}the loss cannot be differentiated twice: the second backward pass "
            f"reaches {operation}, which has no derivative. Methods that need only "
            f"first-order autograd run here: {FIRST_ORDER_METHODS}"
        )

    def at(self, where: str, hop: int | None = None) -> DoubleBackwardError:
        """The same error, located by ``where`` (e.g. the hop and its method)."""
        return DoubleBackwardError(self.operation, where, self.hop if hop is None else hop)


Losses = Tensor | Sequence[Tensor] | None
"""The loss (or losses) whose graph names the custom functions met, when given."""

_NOT_IMPLEMENTED = re.compile(
    r"derivative for '?([\w:.]+)'? is not implemented"
    r"|forward AD with ([\w:.]+) that does not support it"
)
_TWICE = "trying to differentiate twice a function that was marked with @once_differentiable"
_ONCE = "a custom torch.autograd.Function marked @once_differentiable"


@contextmanager
def translated(where: str = "", loss: Losses = None) -> Iterator[None]:
    """Turn autograd's errors about a missing double backward into :class:`DoubleBackwardError`.

    ``loss`` (its graph) names the ``@once_differentiable`` functions, when given.
    """
    try:
        yield
    except (RuntimeError, NotImplementedError) as err:
        operation = _operation_of(str(err), loss)
        if operation is None:
            raise
        raise DoubleBackwardError(operation, where) from err


def _operation_of(message: str, loss: Losses) -> str | None:
    found = _NOT_IMPLEMENTED.search(message)
    if found:
        return found.group(1) or found.group(2)
    if _TWICE in message:
        return _custom_functions(loss)
    return None


def _nodes(roots: Iterable[object], stop: Iterable[object] = ()) -> Iterator[object]:
    """Every node of the autograd graphs below ``roots``, once each, not below ``stop``."""
    stack = [r for r in roots if r is not None]
    seen = {id(r) for r in stack} | {id(s) for s in stop}
    while stack:
        node = stack.pop()
        yield node
        for nxt, _ in node.next_functions:  # type: ignore[attr-defined]
            if nxt is not None and id(nxt) not in seen:
                seen.add(id(nxt))
                stack.append(nxt)


def _custom_functions(loss: Losses) -> str:
    """The ``@once_differentiable`` custom functions in ``loss``'s graph, by class name (their
    ``backward`` is a wrapper: ``__wrapped__``)."""
    losses = [] if loss is None else [loss] if isinstance(loss, Tensor) else list(loss)
    names = set()
    for node in _nodes(t.grad_fn for t in losses):
        cls = getattr(node, "_forward_cls", None)
        if cls is not None and hasattr(cls.backward, "__wrapped__"):
            names.add(cls.__qualname__)
    return f"{_ONCE} ({', '.join(sorted(names))})" if names else _ONCE


def _message_of(node: object) -> str:
    """What an error node raises when the backward pass reaches it."""
    try:
        inputs = len(node._input_metadata)  # type: ignore[attr-defined]
        node(*[None] * inputs)  # type: ignore[operator]
    except RuntimeError as err:
        return str(err)
    except (TypeError, AttributeError):  # a diagnostic only: the caller falls back
        pass
    return ""


_ERROR_NODES = ("torch::autograd::Error", "torch::autograd::NotImplemented")


def check_gradient_graph(
    grads: Iterable[Tensor | None],
    loss: Losses,
    where: str = "",
    inputs: Iterable[Tensor] = (),
) -> None:
    """Refuse a gradient graph that a second backward pass cannot go through.

    ``grads`` were taken of ``loss`` (one tensor or several) with ``create_graph=True``.
    Their graph holds an error node where an operation has no double backward: one PyTorch
    marks as not implemented, or a ``@once_differentiable`` custom function (whose node is
    also cut from the inputs, so that a double backward would silently read zero). One walk
    of the graph, about a microsecond a node, before any product. The graphs that produced
    ``inputs`` (the iterate of an unrolled step, made by the steps before it) are not walked
    again: a loop of ``T`` steps costs ``O(T)``, not ``O(T^2)``.

    Raises:
        DoubleBackwardError: naming the operation.
    """
    roots = [g.grad_fn for g in grads if g is not None and g.grad_fn is not None]
    stop = [t.grad_fn for t in inputs if t.grad_fn is not None]
    for node in _nodes(roots, stop):
        if node.name() not in _ERROR_NODES:  # type: ignore[attr-defined]
            continue
        operation = _operation_of(_message_of(node), loss) or _custom_functions(loss)
        raise DoubleBackwardError(operation, where)
    # a @once_differentiable function whose backward received no input requiring grad leaves
    # no error node at all: its part of the gradient is simply constant, and a product through
    # it reads zero. Its node in the loss's own graph gives it away.
    losses = [] if loss is None else [loss] if isinstance(loss, Tensor) else list(loss)
    for node in _nodes((t.grad_fn for t in losses), stop):
        cls = getattr(node, "_forward_cls", None)
        if cls is not None and hasattr(cls.backward, "__wrapped__"):
            raise DoubleBackwardError(_custom_functions(loss), where)
