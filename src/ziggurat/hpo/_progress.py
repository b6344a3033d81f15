"""How :meth:`HyperModel.fit <ziggurat.hpo.HyperModel.fit>` reports its steps.

Unlike the engine's bar (:class:`ziggurat.logging.Progress`), which needs tqdm, this one falls
back to a printed line when tqdm is missing, since ``fit`` reports by default.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from .._extras import MissingExtraError
from ._history import History


def progress_steps(n: int, progress: bool | None, history: History) -> Iterator[int]:
    """``range(n)``, reporting the last validation loss after each step as ``progress`` asks.

    ``True``: a tqdm bar, and an ``ImportError`` naming the extra when tqdm is missing. ``None``:
    the bar when tqdm is installed, else one line on stderr every ``max(1, n // 10)`` steps.
    ``False``: nothing. Resolved before the first step, so a missing tqdm fails before training.
    """
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"fit progress must be True, False or None, got {progress!r}")
    if progress is False:
        return iter(range(n))
    bar = _tqdm(required=progress is True)
    if bar is None:
        return _printed_steps(n, history)
    return _bar_steps(bar, n, history)


def _tqdm(*, required: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        if required:
            raise MissingExtraError(
                "HyperModel.fit(progress=True) needs tqdm: pip install 'ziggurat[progress]' "
                "(or pass progress=None for a plain line every few steps, False for none)"
            ) from None
        return None
    return tqdm


def _bar_steps(tqdm: Any, n: int, history: History) -> Iterator[int]:
    with tqdm(total=n, desc="hpo", unit="step") as bar:
        for i in range(n):
            yield i
            bar.set_postfix(val_loss=f"{history.val_loss[-1]:.4g}")
            bar.update(1)


def _printed_steps(n: int, history: History) -> Iterator[int]:
    every = max(1, n // 10)
    for i in range(n):
        yield i
        if (i + 1) % every == 0 or i + 1 == n:
            print(f"hpo step {i + 1}/{n}: val_loss {history.val_loss[-1]:.4g}", file=sys.stderr)
