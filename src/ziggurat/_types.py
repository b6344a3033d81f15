"""The small type vocabulary shared by the functional core."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from torch import Tensor

Params: TypeAlias = dict[str, Tensor]
"""A flat mapping from parameter names to tensors: the only tree the core uses."""

InnerLoss: TypeAlias = Callable[[Params, Params], Tensor]
"""A pure lower-level loss ``f(w, lam) -> scalar``: ``w`` lower parameters, ``lam`` upper ones."""

MatVec: TypeAlias = Callable[[Params], Params]
"""A linear operator applied to a tree, e.g. ``u -> H u``."""
