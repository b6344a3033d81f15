"""``HigherIterativeProblem``: Betty's unrolled problem through the ``higher`` library, refused
with directions to :class:`~ziggurat.problems.IterativeProblem`.

It is not an alias because the two differ where a program would not notice: ``higher``
monkey-patches ``self.module`` so that ``self.module(x)`` inside ``training_step`` runs on the
unrolled weights, while an ``IterativeProblem`` keeps its unrolled weights in ``self.params``
and runs them through ``self(x)`` / ``self.forward(x)`` (``self.module`` holds detached copies,
so a loss computed through it would not train the level). Betty's class also dropped the
optimizer's momentum and weight decay, which ``IterativeProblem`` keeps, and it raised on its
first step in Betty 0.2.1. The class can be imported and subclassed, so a module that only
mentions it still loads; creating a problem raises ``TypeError``.
"""

from __future__ import annotations

from typing import Any

from ._iterative import IterativeProblem


class HigherIterativeProblem(IterativeProblem):
    """Not supported: subclass :class:`IterativeProblem` instead (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            f"{type(self).__name__}: HigherIterativeProblem (Betty's unrolling through the "
            "`higher` library) is not provided. Subclass ziggurat.problems.IterativeProblem, "
            "and in training_step call self(x) or self.forward(x) instead of self.module(x): "
            "its unrolled weights live in self.params, not in self.module. It differentiates "
            "through the torch.optim optimizer as configured (momentum and weight decay "
            "included; SGD, Adam or AdamW)"
        )
