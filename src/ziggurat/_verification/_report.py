"""The reports of ``verify`` and ``verify_estimator``: one row per method, printed as a table.

Both tables share one layout: a left-aligned method column as wide as the longest name, then
right-aligned figures, each column a fixed width. :func:`format_table` draws it for both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


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
class Column(Generic[RowT]):
    """A right-aligned column: ``header`` above ``cell(row)``, both padded to ``width``."""

    header: str
    width: int
    cell: Callable[[RowT], str]


def format_table(first: str, rows: Sequence[RowT], columns: Sequence[Column[RowT]]) -> list[str]:
    """The header line, a rule and one line per row.

    The method column, headed ``first``, is at least 14 characters and two more than the
    longest method name, so names never touch the first figure.
    """
    width = max([14, *(len(r.method) + 2 for r in rows)])
    head = f"{first:<{width}}" + "".join(f"{c.header:>{c.width}}" for c in columns)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.method:<{width}}" + "".join(f"{c.cell(r):>{c.width}}" for c in columns))
    return lines


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


_VERIFY_COLUMNS: tuple[Column[VerifyRow], ...] = (
    Column("rel.error", 11, lambda r: f"{r.rel_error:.2e}"),
    Column("cosine", 10, lambda r: f"{r.cosine:.5f}"),
    Column("|g|/|g*|", 11, lambda r: f"{r.norm_ratio:.4g}"),
    Column("iters", 7, lambda r: f"{r.iterations:d}"),
    Column("residual", 11, lambda r: f"{r.residual:.2e}"),
    Column("ms", 9, lambda r: f"{r.seconds * 1e3:.2f}"),
    Column("G", 8, lambda r: f"{r.cost_g:.1f}"),
    Column("H", 8, lambda r: f"{r.cost_h:.1f}"),
)


@dataclass(frozen=True)
class VerifyReport:
    """Rows of :func:`~ziggurat.verify`, printable as a table."""

    reference: str
    rows: list[VerifyRow] = field(default_factory=list)
    units: CostUnits | None = None

    def row(self, method: str) -> VerifyRow:
        """The row of ``method``; a ``KeyError`` listing the rows otherwise."""
        return find_row(self.rows, method)

    def __str__(self) -> str:
        lines = [f"reference: {self.reference}"]
        if self.units is not None:
            lines.append(
                f"cost units: G = {self.units.g_seconds * 1e3:.3f} ms (one gradient in lam), "
                f"H = {self.units.h_seconds * 1e3:.3f} ms (one Hessian-vector product)"
            )
        lines += format_table("method", self.rows, _VERIFY_COLUMNS)
        return "\n".join(lines)


@dataclass(frozen=True)
class EstimatorRow:
    """One estimator's figures over ``estimates`` independent calls.

    Attributes:
        rel_error_mean: ``||mean - g*|| / ||g*||`` for the mean of the calls.
        rel_std_error: ``sqrt(sum_i se_i^2) / ||g*||``, the size ``rel_error_mean`` has for an
            unbiased estimator (``se_i``: standard error of coordinate ``i`` of the mean).
        max_z: ``max_i |mean_i - g*_i| / se_i``.
        covered: whether every coordinate lies within its interval at the report's level.
        rel_error_one: mean over calls of ``||g_s - g*|| / ||g*||``, what one call gives.
        seconds: median wall time of one call.
    """

    method: str
    rel_error_mean: float
    rel_std_error: float
    max_z: float
    covered: bool
    rel_error_one: float
    seconds: float


def _estimator_columns(level: float) -> tuple[Column[EstimatorRow], ...]:
    return (
        Column("err(mean)", 11, lambda r: f"{r.rel_error_mean:.2e}"),
        Column("std.err", 10, lambda r: f"{r.rel_std_error:.2e}"),
        Column("max|z|", 8, lambda r: f"{r.max_z:.2f}"),
        Column(f"in {level:.0%} CI", 11, lambda r: "yes" if r.covered else "no"),
        Column("err(one)", 10, lambda r: f"{r.rel_error_one:.3f}"),
        Column("ms", 8, lambda r: f"{r.seconds * 1e3:.3f}"),
    )


@dataclass(frozen=True)
class EstimatorReport:
    """Rows of :func:`~ziggurat.verify_estimator`, printable as a table."""

    estimates: int
    level: float
    rows: list[EstimatorRow] = field(default_factory=list)

    def row(self, method: str) -> EstimatorRow:
        """The row of ``method``; a ``KeyError`` listing the rows otherwise."""
        return find_row(self.rows, method)

    def __str__(self) -> str:
        ci = f"in {self.level:.0%} CI"
        lines = [
            f"{self.estimates} independent calls per estimator. err(mean): relative error of "
            "their mean;",
            "std.err: its expected size if unbiased; max|z|: largest |mean - truth| / standard "
            "error;",
            f"{ci}: every coordinate in its joint {self.level:.0%} interval (Bonferroni); "
            "err(one): mean error of one call",
        ]
        lines += format_table("estimator", self.rows, _estimator_columns(self.level))
        return "\n".join(lines)
