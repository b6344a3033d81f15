"""A level's scheduling clock: its step counters, the inner-loop boundary and the batches of
the open gradient-accumulation window.

``Problem.step`` and its depth-first recursion into the upper levels stay on the problem (they
are Betty's protocol); the clock only keeps the counts they read, and owns their checkpoint
entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class InnerLoopClock:
    """Counters of one level.

    Attributes:
        count: local steps taken in training mode.
        global_step: the engine's iteration at this level's last step.
        inner_loop_start: whether the next step starts an inner loop (every step since the
            last signal to the upper levels has been signalled).
        window: the batches of the current gradient-accumulation window.
        window_closed: whether the last step ended its window (an update was taken).
    """

    count: int = 0
    global_step: int = 0
    inner_loop_start: bool = True
    window: list[Any] = field(default_factory=list)
    window_closed: bool = True

    def add_batch(self, batch: Any) -> None:
        """Record a step's batch, starting a new window after a closed one."""
        if self.window_closed:
            self.window = []
        self.window.append(batch)

    def inner_loop_ends(self, unroll_steps: int, accumulation: int, warmup_steps: int) -> bool:
        """Whether the local step just taken ends an inner loop (the uppers step next)."""
        period = unroll_steps * accumulation
        return self.count % period == 0 and self.count > warmup_steps

    def state(self) -> dict[str, Any]:
        """The checkpoint entries (the window only while it is open: a closed window's batches
        are not needed again)."""
        return {
            "count": self.count,
            "global_step": self.global_step,
            "inner_loop_start": self.inner_loop_start,
            "window": [] if self.window_closed else list(self.window),
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`'s entries."""
        self.count = int(state["count"])
        self.global_step = int(state["global_step"])
        self.inner_loop_start = bool(state["inner_loop_start"])
        self.window = list(state["window"])
        self.window_closed = not state["window"]
