"""Tikhonov damping shared by all solvers: solve ``(H + rho I) x = b`` instead of ``H x = b``."""

from __future__ import annotations

from .. import _tree
from .._types import MatVec


def damped(matvec: MatVec, damping: float) -> MatVec:
    """Return ``u -> H u + damping * u``; the operator itself when ``damping`` is zero."""
    if damping == 0.0:
        return matvec
    return lambda u: _tree.axpy(damping, u, matvec(u))
