"""Numerical health checks that raise before harm, at the cost of at most one host sync.

A check is a set of 0-dim tensors that must stay below a bound in magnitude (finite, by
default: a NaN loss, a non-finite gradient norm and a diverged residual all fail it) and a
function that writes the error message. Where it is raised
depends on the context the code runs in:

* by default (the core called directly) at once: reading the flag is one host sync, and the
  error comes from the line that found the problem;
* inside :func:`collecting`, the check is kept in a list, and :func:`raise_first` reads every
  kept flag with one host sync, at the point where the result would do harm (the engine does
  this once per optimizer update, before the optimizer steps);
* inside :func:`silenced`, nothing is checked and no sync happens
  (``EngineConfig(check_finite=False)``).

Messages are functions, so their text (and any diagnosis in it, e.g. an estimate of the
largest eigenvalue) is computed only when a check fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor

Message = Callable[[], str]


@dataclass(frozen=True)
class Check:
    """A kept check: ``values`` must all be below ``bound`` in magnitude (``inf``: finite; a
    NaN never passes), else ``error(message())`` with ``notes`` (where it was made)."""

    values: tuple[Tensor, ...]
    bound: float
    message: Message
    error: type[Exception]
    notes: tuple[str, ...] = ()

    def passed(self) -> Tensor:
        """A boolean 0-dim tensor (no sync)."""
        return _below(list(self.values), self.bound)


_SILENCED: list[Check] = []  # the sink of silenced(): never read
_sink: ContextVar[list[Check] | None] = ContextVar("ziggurat_health_sink", default=None)


def check(
    values: Tensor | Sequence[Tensor],
    message: Message,
    *,
    bound: float = math.inf,
    error: type[Exception] = FloatingPointError,
) -> None:
    """Require every 0-dim tensor of ``values`` (detached) to be below ``bound`` in magnitude
    (by default: finite). ``error(message())`` is raised now, or at the next
    :func:`raise_first` of the enclosing :func:`collecting` (see the module docstring); the
    values are only read then."""
    sink = _sink.get()
    if sink is _SILENCED:
        return
    kept = Check((values,) if isinstance(values, Tensor) else tuple(values), bound, message, error)
    if not kept.values:
        return
    if sink is None:
        if not bool(kept.passed()):
            raise error(message())
        return
    sink.append(kept)


@contextlib.contextmanager
def collecting(sink: list[Check]) -> Iterator[list[Check]]:
    """Within the block, checks are appended to ``sink`` instead of raised."""
    token = _sink.set(sink)
    try:
        yield sink
    finally:
        _sink.reset(token)


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Within the block, checks are skipped."""
    token = _sink.set(_SILENCED)
    try:
        yield
    finally:
        _sink.reset(token)


def _all_pass(checks: list[Check]) -> Tensor:
    """Whether every check passes, as one boolean tensor: the values of the checks that share
    a bound are compared in one stacked tensor (no sync)."""
    by_bound: dict[float, list[Tensor]] = {}
    for c in checks:
        by_bound.setdefault(c.bound, []).extend(c.values)
    results = [_below(values, bound) for bound, values in by_bound.items()]
    return results[0] if len(results) == 1 else torch.stack(results).all()


def _below(values: list[Tensor], bound: float) -> Tensor:
    """Whether every (detached, 0-dim) value is below ``bound`` in magnitude."""
    first = values[0].dtype
    if any(v.dtype != first for v in values):
        dtype = functools.reduce(torch.promote_types, (v.dtype for v in values))
        values = [v.to(dtype) for v in values]
    stacked = torch.stack(values)
    if bound == math.inf:
        return torch.isfinite(stacked).all()
    return (stacked.abs() < bound).all()


def annotate(kept: list[Check], start: int, note: str) -> None:
    """Add ``note`` to the checks kept since ``len(kept) == start``."""
    kept[start:] = [dataclasses.replace(c, notes=(*c.notes, note)) for c in kept[start:]]


def raise_first(kept: list[Check], note: str | None = None) -> None:
    """Raise the first failed check of ``kept`` (one host sync for all of them), with its
    notes and ``note`` added to the error (Python >= 3.11); then forget them all."""
    if not kept:
        return
    checks = list(kept)
    kept.clear()
    if bool(_all_pass(checks)):
        return
    failed = next(c for c in checks if not bool(c.passed()))
    error = failed.error(failed.message())
    if sys.version_info >= (3, 11):
        for text in (*failed.notes, *([] if note is None else [note])):
            error.add_note(text)
    raise error
