"""Where an error from user code was raised: a note on the exception naming the level, the
hook and the global step.

An exception raised inside ``training_step``, a ``configure_*`` hook, a callback or
``Engine.validation()`` keeps its type and traceback; :class:`user_code` only adds a note
(``BaseException.add_note``, Python >= 3.11; on 3.10 the exception is left as it is), which the
traceback prints after the message::

    ZeroDivisionError: division by zero
    ziggurat: raised in problem 'lower', training_step(), at global step 3
"""

from __future__ import annotations

import sys
from types import TracebackType


class user_code:  # noqa: N801 - used as a context manager, like contextlib's lower-case names
    """``with user_code("problem 'lower'", "training_step", step):`` around a call of user code.

    Args:
        owner: who runs the code (``"problem 'lower'"``, ``"Engine"``).
        hook: the method called, without parentheses.
        step: the global step, or ``None`` while the engine is being built.
    """

    __slots__ = ("hook", "owner", "step")

    def __init__(self, owner: str, hook: str, step: int | None = None) -> None:
        self.owner, self.hook, self.step = owner, hook, step

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:  # the exception propagates
        if isinstance(error, Exception):
            add_note(error, self.describe())

    def describe(self) -> str:
        when = "while the engine was built" if self.step is None else f"at global step {self.step}"
        return f"ziggurat: raised in {self.owner}, {self.hook}(), {when}"


def add_note(error: BaseException, note: str) -> None:
    """Add ``note`` to ``error`` once (a hook running inside another adds its own)."""
    if sys.version_info < (3, 11):
        return
    if note not in getattr(error, "__notes__", ()):
        error.add_note(note)
