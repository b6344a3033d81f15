"""Measure the error of hypergradient methods on the user's own problem.

``verify(inner, w, lam, v)`` computes a float64 reference ``v^T dw*/dlam`` (a dense solve for
small problems, a long conjugate-gradient solve otherwise, whose achieved residual is checked)
and reports, for each method, its
relative error, cosine similarity, norm ratio, solver diagnostics and cost: wall time, and the
same time in units of one gradient (G) and one Hessian-vector product (H) of the user's loss,
both timed in the same call (the units of ``benchmarks/floors.py``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import torch

from . import _checks, _tree
from ._products import Linearization, grad_lam
from ._types import InnerLoss, Params
from .hypergradient import (
    DoubleBackward,
    HopContext,
    Method,
    cg,
    darts,
    exact,
    first_order,
    neumann,
    sama,
)
from .hypergradient._implicit import Curvature


@dataclass(frozen=True)
class VerifyRow:
    """One method's figures.

    Attributes:
        rel_error: ``||g - g*|| / ||g*||`` against the reference ``g*``.
        cosine, norm_ratio: ``cos(g, g*)`` and ``||g|| / ||g*||``.
        iterations, residual: the solver's diagnostics (``HopInfo``).
        seconds: median wall time of one call.
        cost_g, cost_h: ``seconds`` in units of the report's ``g_seconds`` and ``h_seconds``.
    """

    method: str
    rel_error: float
    cosine: float
    norm_ratio: float
    iterations: int
    residual: float
    seconds: float
    cost_g: float = math.nan
    cost_h: float = math.nan


@dataclass(frozen=True)
class CostUnits:
    """Median seconds of the two cost units on the user's loss, at the verified point.

    Attributes:
        g_seconds: one gradient ``grad_lam f(w, lam)`` (forward and backward), the unit DARTS
            and SAMA spend twice.
        h_seconds: one Hessian-vector product through an already built gradient graph (the
            marginal cost of a CG or Neumann iteration).
    """

    g_seconds: float
    h_seconds: float


class _Named(Protocol):
    @property
    def method(self) -> str: ...


RowT = TypeVar("RowT", bound=_Named)


def find_row(rows: list[RowT], method: str) -> RowT:
    """The row of ``method``; a ``KeyError`` listing the rows otherwise."""
    for r in rows:
        if r.method == method:
            return r
    raise KeyError(f"no row for {method!r}; rows: {[r.method for r in rows]}")


@dataclass(frozen=True)
class VerifyReport:
    """Rows of :func:`verify`, printable as a table."""

    reference: str
    rows: list[VerifyRow] = field(default_factory=list)
    units: CostUnits | None = None

    def row(self, method: str) -> VerifyRow:
        return find_row(self.rows, method)

    def __str__(self) -> str:
        width = max([14, *(len(r.method) + 2 for r in self.rows)])
        head = (
            f"{'method':<{width}}{'rel.error':>11}{'cosine':>10}{'|g|/|g*|':>11}"
            f"{'iters':>7}{'residual':>11}{'ms':>9}{'G':>8}{'H':>8}"
        )
        lines = [f"reference: {self.reference}"]
        if self.units is not None:
            lines.append(
                f"cost units: G = {self.units.g_seconds * 1e3:.3f} ms (one gradient in lam), "
                f"H = {self.units.h_seconds * 1e3:.3f} ms (one Hessian-vector product)"
            )
        lines += [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.method:<{width}}{r.rel_error:>11.2e}{r.cosine:>10.5f}{r.norm_ratio:>11.4g}"
                f"{r.iterations:>7d}{r.residual:>11.2e}{r.seconds * 1e3:>9.2f}"
                f"{r.cost_g:>8.1f}{r.cost_h:>8.1f}"
            )
        return "\n".join(lines)


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


def reference_vjp(
    inner: InnerLoss,
    w: Params,
    lam: Params,
    v: Params,
    *,
    dtype: torch.dtype | None = torch.float64,
    dense_limit: int = 3000,
    damping: float = 0.0,
    curvature: Curvature | None = None,
) -> tuple[Params, str]:
    """Reference ``v^T dw*/dlam``: dense solve up to ``dense_limit`` unknowns, else CG.

    The reference solves ``(H + damping I) x = v`` with ``H`` from ``curvature`` (default: the
    exact Hessian by double backward), then measures the residual ``||v - (H + damping I) x||
    / ||v||`` it achieved with one more product. Above :func:`reference_tolerance` it raises a
    ``ValueError`` rather than report errors against a wrong reference (CG stops early on an
    indefinite Hessian). The label names the solve and that residual.
    """
    _checks.int_at_least("verify reference_dense_limit", dense_limit, 0)
    _checks.non_negative("verify reference_damping", damping)
    curv: Curvature = DoubleBackward() if curvature is None else curvature
    cast = (lambda p: _tree.cast(p, dtype)) if dtype is not None else _tree.detach
    w64, lam64, v64 = cast(w), cast(lam), cast(v)
    n = _tree.numel(w)
    dense = n <= dense_limit
    method: Method = (
        exact(damping=damping, curvature=curv)
        if dense
        else cg(maxiter=max(1000, 2 * n), tol=1e-12, damping=damping, curvature=curv)
    )
    try:
        result = method(inner, w64, lam64, v64)
    except RuntimeError as err:
        raise RuntimeError(
            f"verify: the inner loss failed in {dtype} ({err}); make it dtype-generic "
            "(cast data to the parameters' dtype) or pass reference_dtype=None"
        ) from err
    except ValueError as err:
        if isinstance(err.__cause__, torch.linalg.LinAlgError):
            raise ValueError(
                f"verify: the reference Hessian is singular on {n} unknowns ({err.__cause__}); "
                "pass reference_damping > 0 to verify (the reference then solves "
                "(H + damping I) x = v; give the compared methods the same damping), or remove "
                "parameters the loss does not depend on"
            ) from err
        raise
    solution = result.info.solution
    assert solution is not None  # Implicit always reports its solution
    residual = _achieved_residual(inner, w64, lam64, v64, solution, damping, curv)
    solve = "dense solve" if dense else f"CG to 1e-12 ({result.info.iterations} iterations)"
    _check_reference(residual, reference_tolerance(v64), dense, solve, n, dense_limit)
    return result.vjp, f"{solve} in {dtype or 'input dtype'}, residual {residual:.1e}"


def reference_tolerance(v: Params) -> float:
    """Largest relative residual accepted of the reference: ``1e-8``, or ``sqrt(eps)`` of
    ``v``'s dtype when that is larger (a float32 reference cannot reach ``1e-8``)."""
    eps = max(torch.finfo(t.dtype).eps for t in v.values())
    return max(1e-8, math.sqrt(eps))


def _achieved_residual(
    inner: InnerLoss,
    w: Params,
    lam: Params,
    v: Params,
    x: Params,
    damping: float,
    curvature: Curvature,
) -> float:
    """``||v - (H + damping I) x|| / ||v||`` measured with one product (no recurrence)."""
    v_norm = float(_tree.norm(v))
    if v_norm == 0.0:
        return 0.0
    hx = curvature.matvec(Linearization(inner, w, lam))(_tree.detach(x))
    r = _tree.sub(v, _tree.axpy(damping, x, hx))
    return float(_tree.norm(_tree.detach(r))) / v_norm


def _check_reference(
    residual: float, tol: float, dense: bool, solve: str, n: int, dense_limit: int
) -> None:
    if residual <= tol:
        return
    if dense:
        fix = (
            "the Hessian is ill-conditioned: pass reference_damping > 0 to verify (the "
            "reference then solves (H + damping I) x = v; give the compared methods the same "
            "damping)"
        )
    else:
        fix = (
            "CG stops early when the Hessian is not positive definite. Pass "
            f"reference_dense_limit >= {n} to verify (now {dense_limit}) so a dense solve is "
            "used (n products, O(n^3) time), or reference_damping > 0 (the reference then "
            "solves (H + damping I) x = v; give the compared methods the same damping), or a "
            "positive semi-definite reference_curvature such as GaussNewton(...)"
        )
    raise ValueError(
        f"verify: the reference did not converge: relative residual {residual:.2e} after "
        f"{solve} on {n} unknowns, above {tol:.0e}; {fix}"
    )


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_units(
    inner: InnerLoss, w: Params, lam: Params, v: Params, *, repeats: int = 5
) -> CostUnits:
    """Time one gradient ``G`` and one Hessian-vector product ``H`` of ``inner`` at ``(w, lam)``.

    ``G`` is :func:`~ziggurat._products.grad_lam` (what the finite-difference mixed product
    calls twice); ``H`` is one product ``H v`` through a gradient graph built beforehand and not
    timed, as each iteration of CG or Neumann spends it. Both are medians of ``repeats`` calls.
    """
    _checks.int_at_least("measure_units repeats", repeats, 1)
    g_seconds = _median_seconds(lambda: grad_lam(inner, w, lam), repeats)
    lin = Linearization(inner, w, lam)
    u = _tree.detach(v)
    lin.hvp(u)  # builds the graph
    h_seconds = _median_seconds(lambda: lin.hvp(u), repeats)
    return CostUnits(g_seconds, h_seconds)


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
        w, lam, v: the point and the cotangent (``v`` shaped like ``w``), in the dtype the
            methods run in.
        methods: name -> method; defaults to :func:`default_methods`.
        context: optional per-call state (e.g. a SAMA preconditioner) passed to every method.
        reference_dtype: dtype of the reference; ``None`` keeps the inputs' dtype.
        reference_dense_limit: the reference is a dense solve up to this many unknowns (``n``
            products and ``O(n^3)`` time), a conjugate-gradient solve to ``1e-12`` above it.
        reference_damping: the reference solves ``(H + damping I) x = v``; use it for a
            singular or indefinite Hessian, and give the compared methods the same damping.
        reference_curvature: ``H`` of the reference (e.g. a :class:`GaussNewton`, positive
            semi-definite, so CG converges); default the exact Hessian by double backward.

    Raises:
        ValueError: when the reference's achieved relative residual
            ``||v - (H + damping I) x|| / ||v||`` is above ``1e-8`` (``sqrt(eps)`` below
            float64), typically CG stopped on an indefinite Hessian above the dense limit; the
            message names the options above. The report's ``reference`` gives the residual.
        repeats: timings are the median of this many calls; the cost units ``G`` and ``H``
            are medians of ``max(repeats, 5)`` calls, measured once before the methods run.
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
        times = []
        for _ in range(repeats):  # a stochastic method's row is its last call
            start = time.perf_counter()
            result = method(inner, w, lam, v, ctx)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
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
