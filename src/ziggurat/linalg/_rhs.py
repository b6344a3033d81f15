"""The check every linear solver makes on its right-hand side before spending a product."""

from __future__ import annotations

import math

from .. import _tree
from .._types import Params


def finite_rhs_norm(b: Params, solver: str) -> float:
    """``||b||``, or a ``ValueError`` when ``b`` holds a NaN or an infinity.

    A non-finite ``b`` has no meaningful solution or residual; returning zeros or reporting a
    residual of 0 would hide the NaN from every diagnostic downstream. In a hypergradient ``b``
    is the cotangent ``v = dF/dw`` of the upper loss, so that is where the NaN comes from.
    """
    b_norm = float(_tree.norm(b))
    if not math.isfinite(b_norm):
        bad = [name for name, t in b.items() if not bool(t.isfinite().all())]
        where = f"non-finite entries in {bad}" if bad else "its norm overflows the dtype"
        raise ValueError(
            f"{solver}: the right-hand side b (the cotangent v = dF/dw in a hypergradient) is "
            f"not finite: ||b|| = {b_norm}, {where}; check the upper loss and its gradient "
            "for NaN or inf (e.g. a diverged lower problem or a log of 0)"
        )
    return b_norm
