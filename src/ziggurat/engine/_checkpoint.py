"""Checkpoints of a whole program, exact enough that a resumed run is bit-identical.

The engine assembles a file from pieces it does not own: each problem's entry
(``Problem.checkpoint_state``, whose keys are the format), the run's counters, its configs and
every generator's state (``ziggurat._rng``). Nothing here touches a problem's private state.
Files are written and read by :mod:`._checkpoint_files`.

Under data parallelism every rank computes the state (consolidating a ZeRO optimizer is a
collective) and rank 0 writes it. What differs between ranks -- the RNG states, the data loaders'
positions and epoch RNG, and a partly accumulated window's gradients and batches
(``Problem.rank_state``) -- is gathered from every rank into ``ranks``; on loading, each rank
restores its own entry, so a resumed run on the same world size is bit-identical on every rank.
On another world size each rank restores rank 0's entry (and a warning says the continuation is
not the same run). A file that is truncated, corrupt or from a different program is rejected
with ``ValueError`` before any state is changed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .. import _rng
from .._tree import to_device
from ..problems import Problem
from ..systems import Group
from ._checkpoint_files import checkpoint_path as checkpoint_path
from ._checkpoint_files import latest_checkpoint as latest_checkpoint
from ._checkpoint_files import read_checkpoint as read_checkpoint
from ._checkpoint_files import stale_temp_files as stale_temp_files
from ._checkpoint_files import write_atomic as write_atomic

log = logging.getLogger("ziggurat")

FORMAT = "ziggurat-checkpoint"
VERSION = 2
"""Version 2 added each problem's ``layout`` (optimizer and scheduler classes, group options)."""


def _rank_state(problems: Sequence[Problem]) -> dict[str, Any]:
    """The part of the state that differs between data-parallel ranks (moved to the CPU)."""
    local = {"rng": _rng.capture(), "problems": {p.name: p.rank_state() for p in problems}}
    return to_device(local, "cpu")


def engine_state(problems: Sequence[Problem], group: Group, run: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to continue the program exactly, as tensors and plain containers.

    ``run`` holds the engine's own counters and config. A collective under data parallelism
    (call it on every rank); rank 0's result is complete, with every rank's own RNG, loader and
    accumulation state under ``ranks``.
    """
    state = {
        "format": FORMAT,
        "version": VERSION,
        "engine": run,
        "rng": _rng.capture(),
        "problems": {p.name: p.checkpoint_state() for p in problems},
    }
    if group.world_size > 1:
        state["ranks"] = group.gather_object(_rank_state(problems))
    return state


def own_rank(state: dict[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """``state`` with its per-rank entries replaced by those saved from ``rank``."""
    ranks = state.get("ranks")
    if not ranks:
        return state
    if len(ranks) != world_size:
        log.warning(
            "checkpoint saved on %d ranks, loaded on %d: every rank restores rank 0's RNG and "
            "loader state, so the continuation differs from an uninterrupted run",
            len(ranks),
            world_size,
        )
        rank = 0
    local = ranks[rank]
    problems = {n: {**s, **local["problems"][n]} for n, s in state["problems"].items()}
    return {**state, "rng": local["rng"], "problems": problems}


def check_compatible(problems: Sequence[Problem], state: Any, path: str) -> None:
    """Raise ``ValueError`` unless ``state`` is a checkpoint of this program."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a ziggurat checkpoint")
    if state.get("version") != VERSION:
        raise ValueError(
            f"checkpoint {path!r} has format version {state.get('version')}, this ziggurat "
            f"reads version {VERSION} only; load it with the ziggurat release that wrote it "
            "(version 1 files lack the optimizer and scheduler classes that are now checked)"
        )
    saved, live = sorted(state["problems"]), sorted(p.name for p in problems)
    if saved != live:
        raise ValueError(
            f"checkpoint {path!r} is of a different program: problems {saved}, "
            f"this engine has {live}"
        )
    for problem in problems:
        where = f"checkpoint {path!r}, problem {problem.name!r}"
        problem.check_checkpoint_state(state["problems"][problem.name], where)


def _load_data(problems: Sequence[Problem], positions: dict[str, Any]) -> None:
    """Every level's data loaders first, or none: a loader without ``len`` that got shorter
    than its saved position is found only now, and then every loader and the RNG state are put
    back before the ``ValueError`` propagates, so the engine is left as it was."""
    rng = _rng.capture()
    before = {p.name: p.data_state() for p in problems}
    loaded: list[Problem] = []
    try:
        for problem in problems:
            problem.load_data_state(positions[problem.name])
            loaded.append(problem)
    except ValueError:
        for problem in loaded:
            problem.load_data_state(before[problem.name])
        _rng.restore(rng)
        raise


def load_engine_state(
    problems: Sequence[Problem], group: Group, state: dict[str, Any]
) -> dict[str, Any]:
    """Restore ``state`` (already checked) into ``problems``, the RNG states last; return the
    engine's own entry (its counters) for the engine to take.

    Each data-parallel rank takes its own RNG, loader and accumulation state (see
    :func:`own_rank`).
    """
    state = own_rank(state, group.rank, group.world_size)
    entries = state["problems"]
    _load_data(problems, {p.name: entries[p.name]["loaders"] for p in problems})
    for problem in problems:
        problem.load_checkpoint_state(entries[problem.name])
    _rng.restore(state["rng"])
    run: dict[str, Any] = state["engine"]
    return run
