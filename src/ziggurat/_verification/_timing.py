"""Wall-time medians, and the two cost units ``G`` and ``H`` that make them comparable.

A method's time alone depends on the machine and the model; divided by the time of one
gradient (``G``) or one Hessian-vector product (``H``) of the same loss, timed in the same call,
it becomes a count that can be compared with the method's floor (``benchmarks/floors.py``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

from .. import _checks, _tree
from .._products import Linearization, grad_lam
from .._types import InnerLoss, Params
from ._report import CostUnits

T = TypeVar("T")


def timed(call: Callable[[], T], repeats: int) -> tuple[T, float]:
    """The last of ``repeats`` calls of ``call`` and the median wall time of one call.

    The last result is the one kept because a stochastic call differs from call to call, and
    which one is reported must not depend on the timings.
    """
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``call``."""
    return timed(call, repeats)[1]


def measure_units(
    inner: InnerLoss, w: Params, lam: Params, v: Params, *, repeats: int = 5
) -> CostUnits:
    """Time one gradient ``G`` and one Hessian-vector product ``H`` of ``inner`` at ``(w, lam)``.

    ``G`` is ``grad_lam`` (what the finite-difference mixed product calls twice); ``H`` is one
    product ``H v`` through a gradient graph built beforehand and not timed, as each iteration
    of CG or Neumann spends it. Both are medians of ``repeats`` calls.
    """
    _checks.int_at_least("measure_units repeats", repeats, 1)
    g_seconds = median_seconds(lambda: grad_lam(inner, w, lam), repeats)
    lin = Linearization(inner, w, lam)
    u = _tree.detach(v)
    lin.hvp(u)  # builds the graph
    h_seconds = median_seconds(lambda: lin.hvp(u), repeats)
    return CostUnits(g_seconds, h_seconds)
