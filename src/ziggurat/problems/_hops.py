"""What a level remembers between the hops that go through it."""

from __future__ import annotations

from typing import Any

from .. import _tree
from .._types import Params
from ..hypergradient import HopContext, HopInfo, Method

HopKey = tuple[str, int, int]
"""(upper problem, path index, hop index): identifies one hop, e.g. for warm starts."""


class HopMemory:
    """Per-hop warm starts and method states, and the gradients of the level's last update
    for hops that read them (SAMA's Adam preconditioner).

    Attributes:
        warm_starts: the last solution of each hop whose method warm-starts.
        states: the state of each hop whose method is stateful (``auto``'s decision).
        last_grads: the gradients of the last update, or ``None`` when nothing reads them.
    """

    def __init__(self) -> None:
        self.warm_starts: dict[HopKey, Params] = {}
        self.states: dict[HopKey, Any] = {}
        self.last_grads: Params | None = None
        # the checks of problems/_connection already made (hop keys, and "own"); not saved
        self.verified: set[object] = set()

    def context(
        self, key: HopKey, preconditioner: Params | None = None, first_order_only: bool = False
    ) -> HopContext:
        return HopContext(
            warm_start=self.warm_starts.get(key),
            preconditioner=preconditioner,
            state=self.states.get(key),
            first_order_only=first_order_only,
        )

    def remember(self, key: HopKey, method: Method, info: HopInfo) -> None:
        """Keep a hop's solution when the method warm-starts from it, and its state when the
        method is stateful."""
        if method.warm_starts and info.solution is not None:
            self.warm_starts[key] = _tree.detach(info.solution)
        if method.stateful:
            self.states[key] = info.state

    def forget(self) -> None:
        """Drop what the hops remembered (the program was re-wired)."""
        self.warm_starts, self.states = {}, {}

    def state(self) -> dict[str, Any]:
        return {
            "last_grads": self.last_grads,
            "warm_starts": [[list(k), v] for k, v in self.warm_starts.items()],
            "method_states": [[list(k), v] for k, v in self.states.items()],
        }

    def load(self, state: dict[str, Any]) -> None:
        self.last_grads = state["last_grads"]
        self.warm_starts = {(k[0], int(k[1]), int(k[2])): v for k, v in state["warm_starts"]}
        # absent from checkpoints written before stateful methods existed (format 2 as first
        # released): no hop had state then
        saved = state.get("method_states") or []
        self.states = {(k[0], int(k[1]), int(k[2])): v for k, v in saved}
