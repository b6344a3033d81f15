"""The result of an example: a table of metrics, baseline against the multilevel program."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One metric. ``higher_is_better`` sets the sign of ``gain``."""

    metric: str
    baseline: float
    ours: float
    higher_is_better: bool = True

    @property
    def gain(self) -> float:
        diff = self.ours - self.baseline
        return diff if self.higher_is_better else -diff


@dataclass
class Result:
    """What an example's ``run`` returns; ``str(result)`` is the printed table.

    ``rows`` compare the baseline with the multilevel program; ``notes`` are extra facts
    (a learned architecture, mean weights); ``extra`` keeps raw numbers for tests;
    ``arrays`` keeps what :mod:`ziggurat.examples.plots` draws (learned weights, curves).
    """

    name: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self, metric: str) -> Row:
        for r in self.rows:
            if r.metric == metric:
                return r
        raise KeyError(f"no metric {metric!r}; have {[r.metric for r in self.rows]}")

    def add(self, metric: str, baseline: float, ours: float, higher_is_better: bool = True) -> None:
        self.rows.append(Row(metric, float(baseline), float(ours), higher_is_better))

    def __str__(self) -> str:
        width = max([len("metric"), *(len(r.metric) for r in self.rows)])
        lines = [
            f"{self.name} ({self.seconds:.1f} s)",
            f"{'metric':<{width}}  {'baseline':>10}  {'ours':>10}  {'gain':>10}",
            f"{'-' * width}  {'-' * 10}  {'-' * 10}  {'-' * 10}",
        ]
        for r in self.rows:
            lines.append(
                f"{r.metric:<{width}}  {r.baseline:>10.4f}  {r.ours:>10.4f}  {r.gain:>+10.4f}"
            )
        lines.extend(self.notes)
        return "\n".join(lines)
