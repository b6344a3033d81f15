"""What a level may ask of the program that runs it, declared here, below the engine.

Problems are a lower layer than the engine: they depend on :class:`Runtime`, an interface of
their own layer, and ``ziggurat.Engine`` implements it (dependency inversion). At run time the
object is the engine; a problem only reaches the members listed here. :class:`Level` is the
part of a problem that the rest of the program (other levels, the runtime, the hypergradient
seam) reads, so that those modules need not import the ``Problem`` class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .._types import Params
from ..hypergradient import HopInfo
from ..logging import LoggerBase
from ..systems import Group


class Level(Protocol):
    """A level as others see it: its name, its trainable tensors and what stands in for its
    module's parameters while a loss is evaluated."""

    @property
    def name(self) -> str: ...

    def named_trainable_parameters(self) -> Params: ...

    def trainable_parameters(self) -> list[Tensor]: ...

    def module_substitution(self) -> tuple[nn.Module, Params] | None: ...


@dataclass(frozen=True)
class HypergradientRecord:
    """One upper step's hypergradient diagnostics, handed to :meth:`Runtime.log_hypergradient`.

    ``norm`` stays a tensor until a logger reads it (no host sync for a step nobody logs);
    ``console`` says whether the level's ``log_step`` asks for a console line at this step.
    """

    source: str
    step: int
    console: bool
    norm: Tensor | float
    hops: Sequence[HopInfo]


@dataclass(frozen=True)
class DecisionRecord:
    """A decision of a method that chooses itself (``auto``), handed to
    :meth:`Runtime.log_decision` when it is made.

    ``decision`` is a :class:`ziggurat.hypergradient.Decision`: its ``summary()``,
    ``table()`` and ``scalars()`` are what the logs show.
    """

    source: str
    hop: str
    step: int
    decision: Any


class Runtime(Protocol):
    """The program a level runs in (``ziggurat.Engine``)."""

    @property
    def device(self) -> torch.device:
        """Where modules and batches live unless a problem says otherwise."""
        ...

    @property
    def distributed(self) -> Group:
        """The process group: averages, broadcasts and the data-parallel method wrapper."""
        ...

    @property
    def problems(self) -> Sequence[Level]:
        """Every level of the program."""
        ...

    @property
    def has_unrolled(self) -> bool:
        """Whether some level keeps a graph that several backward passes traverse."""
        ...

    @property
    def roll_back(self) -> bool:
        """Whether levels with upper levels redo their last step after the uppers step."""
        ...

    @property
    def check_finite(self) -> bool:
        """Whether levels check their losses, gradients and solves before each update."""
        ...

    @property
    def logger(self) -> LoggerBase:
        """Console lines and metric records of this run."""
        ...

    def problem_by_name(self, name: str) -> Any:
        """The level called ``name``, or ``None``."""
        ...

    def problem_names(self) -> list[str]:
        """Every level's name."""
        ...

    def is_rank_zero(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        ...

    def log_metrics(self, source: str, values: Mapping[str, Any], step: int) -> None:
        """A console line and the backend's record of ``values``."""
        ...

    def log_hypergradient(self, record: HypergradientRecord) -> None:
        """Record an upper step's hypergradient diagnostics."""
        ...

    def log_decision(self, record: DecisionRecord) -> None:
        """Record a method's decision on the console and in every metrics backend."""
        ...


def resolve(runtime: Runtime | None, name: str, owner: str) -> Any:
    """Betty's name-based access: the level ``name`` as ``owner.<name>``.

    Called from ``__getattr__`` (so only when normal lookup failed); raises
    ``AttributeError`` naming the known levels, or saying that none are known yet.
    """
    if name.startswith("_"):
        raise AttributeError(name)
    if runtime is None:
        raise AttributeError(
            f"{owner} has no attribute {name!r} (other problems are reachable by name once an "
            "Engine holds this problem)"
        )
    found = runtime.problem_by_name(name)
    if found is None:
        raise AttributeError(
            f"{owner} has no attribute or problem named {name!r}; known problems: "
            f"{sorted(runtime.problem_names())}"
        )
    return found
