"""Folding best-response products along a path of levels.

For a path ``U -> X_1 -> ... -> X_k -> U`` (``U``'s loss reads ``X_1``; ``X_i``'s loss reads
``X_{i+1}``; ``X_k``'s loss reads ``U``) the contribution to ``U``'s gradient is::

    v_0 = dL_U/dw_1,   v_i = method_i(f_i, w_i, w_{i+1}, v_{i-1}),   result = v_k,

each hop linearised by its own lower level's method, with every other level held fixed. This is
the same shape as ``optax.chain``: the fold does not care which method sits at which level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._second_order import DoubleBackwardError
from .._types import InnerLoss, Params
from ._base import NO_CONTEXT, HopContext, HopInfo, Method


@dataclass(frozen=True)
class Hop:
    """One level on a path: its method, its pure loss, its parameters and the next level's."""

    method: Method
    inner: InnerLoss
    w: Params
    lam: Params
    context: HopContext = NO_CONTEXT


def fold(hops: Sequence[Hop], v: Params) -> tuple[Params, list[HopInfo]]:
    """Apply every hop's best-response vjp in order, starting from the cotangent ``v``.

    Returns the final cotangent (shaped like the last hop's ``lam``) and each hop's diagnostics.
    An error of a hop is raised with the hop's index and method in front; a
    :class:`~ziggurat._second_order.DoubleBackwardError` keeps its type and records the index.
    """
    if not hops:
        raise ValueError("fold needs at least one hop")
    infos: list[HopInfo] = []
    for i, hop in enumerate(hops):
        try:
            result = hop.method(hop.inner, hop.w, hop.lam, v, hop.context)
        except DoubleBackwardError as err:
            raise err.at(f"hop {i} ({hop.method.name})", hop=i) from err
        except ValueError as err:
            raise ValueError(f"hop {i} ({hop.method.name}): {err}") from err
        v = result.vjp
        infos.append(result.info)
    return v, infos
