"""Measure the error of hypergradient methods on the user's own problem.

``verify(inner, w, lam, v)`` computes a float64 reference ``v^T dw*/dlam`` (a dense solve for
small problems, a long conjugate-gradient solve otherwise, whose achieved residual is checked)
and reports, for each method, its
relative error, cosine similarity, norm ratio, solver diagnostics and cost: wall time, and the
same time in units of one gradient (G) and one Hessian-vector product (H) of the user's loss,
both timed in the same call (the units of ``benchmarks/floors.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch

from .. import _checks, _tree
from .._types import InnerLoss, Params
from ..hypergradient import (
    Curvature,
    HopContext,
    Method,
    cg,
    darts,
    first_order,
    neumann,
    sama,
)
from ._reference import reference_vjp
from ._report import VerifyReport, VerifyRow
from ._timing import measure_units, timed


def default_methods() -> dict[str, Method]:
    """The presets ``verify`` compares when no methods are given."""
    return {
        "darts": darts(),
        "sama": sama(),
        "neumann(5)": neumann(5, 0.1),
        "cg(5)": cg(5),
        "cg(50)": cg(50),
        "first_order": first_order(),
    }


def _compare(got: Params, ref: Params) -> tuple[float, float, float]:
    g = _tree.flatten(_tree.detach(got)).double()
    r = _tree.flatten(ref).double()
    rn, gn = float(r.norm()), float(g.norm())
    rel = float((g - r).norm()) / rn if rn > 0 else float((g - r).norm())
    cos = float(g @ r) / (gn * rn) if gn > 0 and rn > 0 else math.nan
    return rel, cos, gn / rn if rn > 0 else math.nan


def verify(
    inner: InnerLoss,
    w: Params,
    lam: Params,
    v: Params,
    *,
    methods: Mapping[str, Method] | None = None,
    context: HopContext | None = None,
    reference_dtype: torch.dtype | None = torch.float64,
    reference_dense_limit: int = 3000,
    reference_damping: float = 0.0,
    reference_curvature: Curvature | None = None,
    repeats: int = 3,
) -> VerifyReport:
    """Report each method's error against an exact reference on ``(inner, w, lam, v)``.

    Args:
        inner: pure lower loss ``f(w, lam)``; for the float64 reference it must accept float64
            parameters.
        w: the lower parameters, in the dtype the methods run in.
        lam: the upper parameters.
        v: the cotangent on ``w`` (shaped like ``w``).
        methods: name -> method; defaults to :func:`default_methods`.
        context: optional per-call state (e.g. a SAMA preconditioner) passed to every method.
        reference_dtype: dtype of the reference; ``None`` keeps the inputs' dtype.
        reference_dense_limit: the reference is a dense solve up to this many unknowns (``n``
            products and ``O(n^3)`` time), a conjugate-gradient solve to ``1e-12`` above it.
        reference_damping: the reference solves ``(H + damping I) x = v``; use it for a
            singular or indefinite Hessian, and give the compared methods the same damping.
        reference_curvature: ``H`` of the reference (e.g. a :class:`GaussNewton`, positive
            semi-definite, so CG converges); default the exact Hessian by double backward.
        repeats: timings are the median of this many calls; the cost units ``G`` and ``H``
            are medians of ``max(repeats, 5)`` calls, measured once before the methods run.

    Raises:
        ValueError: when the reference's achieved relative residual
            ``||v - (H + damping I) x|| / ||v||`` is above ``1e-8`` (``sqrt(eps)`` below
            float64), typically CG stopped on an indefinite Hessian above the dense limit; the
            message names the options above. The report's ``reference`` gives the residual.

    Examples:
        >>> import torch
        >>> from ziggurat import verify
        >>> from ziggurat.hypergradient import cg, darts
        >>> a = torch.tensor([2.0, 4.0], dtype=torch.float64)
        >>> def inner(w, lam):  # H = diag(a): darts's H^{-1} ~ I is off by the factors a
        ...     return 0.5 * (a * w["w"] ** 2).sum() - (w["w"] * lam["lam"]).sum()
        >>> w = {"w": torch.zeros(2, dtype=torch.float64)}
        >>> lam = {"lam": torch.ones(2, dtype=torch.float64)}
        >>> v = {"w": torch.ones(2, dtype=torch.float64)}
        >>> report = verify(inner, w, lam, v, methods={"cg": cg(2), "darts": darts()})
        >>> report.row("cg").rel_error < 1e-12, round(report.row("darts").rel_error, 2)
        (True, 1.61)
        >>> print(report)  # doctest: +ELLIPSIS
        reference: dense solve in torch.float64, residual 0.0e+00
        ...
        cg               0.00e+00   1.00000          1      2 ...
        darts            1.61e+00   0.94868       2.53      0 ...
    """
    _checks.int_at_least("verify repeats", repeats, 1)
    _tree.check_same_shapes(w, v, "verify: cotangent v against lower parameters w")
    ref, label = reference_vjp(
        inner,
        w,
        lam,
        v,
        dtype=reference_dtype,
        dense_limit=reference_dense_limit,
        damping=reference_damping,
        curvature=reference_curvature,
    )
    units = measure_units(inner, w, lam, v, repeats=max(repeats, 5))
    report = VerifyReport(reference=label, units=units)
    ctx = context or HopContext()
    for name, method in (methods or default_methods()).items():
        # a stochastic method's row is its last call
        result, seconds = timed(functools.partial(method, inner, w, lam, v, ctx), repeats)
        rel, cos, ratio = _compare(result.vjp, ref)
        info = result.info
        report.rows.append(
            VerifyRow(
                name,
                rel,
                cos,
                ratio,
                info.iterations,
                info.residual,
                seconds,
                seconds / units.g_seconds,
                seconds / units.h_seconds,
            )
        )
    return report
