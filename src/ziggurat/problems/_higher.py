"""``HigherIterativeProblem``: Betty's name for an unrolled level whose ``training_step`` calls
``self.module(x)``.

Betty built it on the ``higher`` library, which monkey-patches the module so that its calls run
on the unrolled weights. Here every :class:`~ziggurat.problems.IterativeProblem` does the same
without patching: while a loss is evaluated its unrolled weights sit in the module's parameter
slots. So this class is ``IterativeProblem`` under Betty's name. It differs from Betty's in
what Betty dropped or broke: it keeps the optimizer's momentum and weight decay, unrolls
whatever the upper levels' ``first_order``, and needs no ``higher`` package.
"""

from __future__ import annotations

from ._iterative import IterativeProblem


class HigherIterativeProblem(IterativeProblem):
    """:class:`IterativeProblem` under Betty's name (see the module docstring)."""
