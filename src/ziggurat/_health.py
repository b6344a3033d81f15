"""Numerical health checks that raise before harm, at the cost of at most one host sync.

A check is a boolean tensor that says something went wrong (a NaN loss, a non-finite gradient,
a solve that diverged) and a function that writes the error message. Where it is raised
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
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor

Message = Callable[[], str]


@dataclass(frozen=True)
class Check:
    """A kept check: ``bad`` (a boolean 0-dim tensor), its message, its error type, and notes
    that say where it was made (added to the error)."""

    bad: Tensor
    message: Message
    error: type[Exception]
    notes: tuple[str, ...] = ()


_SILENCED: list[Check] = []  # the sink of silenced(): never read
_sink: ContextVar[list[Check] | None] = ContextVar("ziggurat_health_sink", default=None)


def check(
    bad: Tensor | bool, message: Message, error: type[Exception] = FloatingPointError
) -> None:
    """Raise ``error(message())`` when ``bad`` is true, now or at the next
    :func:`raise_first` of the enclosing :func:`collecting` (see the module docstring)."""
    sink = _sink.get()
    if sink is _SILENCED:
        return
    if sink is None:
        if bool(bad):
            raise error(message())
        return
    sink.append(Check(torch.as_tensor(bad), message, error))


def not_finite(t: Tensor) -> Tensor:
    """The flag of a tensor with a NaN or an infinity (no sync)."""
    return ~torch.isfinite(t).all()


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
    flags = torch.stack([c.bad.reshape(()).to(device=checks[0].bad.device) for c in checks])
    if not bool(flags.any()):
        return
    failed = next(c for c, bad in zip(checks, flags.tolist(), strict=True) if bad)
    error = failed.error(failed.message())
    if sys.version_info >= (3, 11):
        for text in (*failed.notes, *([] if note is None else [note])):
            error.add_note(text)
    raise error
