"""Checkpoints of a whole program, exact enough that a resumed run is bit-identical.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers, so it loads
with ``torch.load(..., weights_only=True)``. It holds, per problem: module, optimizer and
scheduler state, the step counters (``count``, ``ready``, ``inner_loop_start``), partially
accumulated gradients, the data loaders' positions with the RNG states each epoch's order was
drawn from, hypergradient warm starts, and for unrolled levels their parameters and optimizer
state; and for the run: the engine's global step, validation history, configs (as dicts) and the
torch, CUDA, NumPy and Python RNG states.

Under data parallelism every rank computes the state (consolidating a ZeRO optimizer is a
collective) and rank 0 writes it. What differs between ranks -- the RNG states, the data loaders'
positions and epoch RNG, and a partly accumulated window's gradients and batches -- is gathered
from every rank into ``ranks``; on loading, each rank restores its own entry, so a resumed run
on the same world size is bit-identical on every rank. On another world size each rank restores
rank 0's entry (and a warning says the continuation is not the same run).

Writes are atomic: a temporary file in the same directory, flushed and fsynced, then
``os.replace`` onto the final name. A file that is truncated, corrupt or from a different program
is rejected with ``ValueError`` before any state is changed.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import TYPE_CHECKING, Any

import torch

from .. import _rng, _tree
from ..problems import IterativeProblem, Problem
from ..problems._data import to_device
from . import _sharding

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger("ziggurat")

FORMAT = "ziggurat-checkpoint"
VERSION = 2
"""Version 2 added each problem's ``layout`` (optimizer and scheduler classes, group options)."""
_NAME = re.compile(r"^step-(\d+)\.pt$")
_TEMP = re.compile(r"^\..+\.tmp$")  # what write_atomic's mkstemp names


# ---------------------------------------------------------------------- paths
def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step-{step:09d}.pt")


def latest_checkpoint(directory: str) -> str | None:
    """The complete checkpoint with the highest step in ``directory`` (temp files ignored)."""
    if not os.path.isdir(directory):
        return None
    steps = [int(m.group(1)) for f in os.listdir(directory) if (m := _NAME.match(f))]
    return checkpoint_path(directory, max(steps)) if steps else None


def stale_temp_files(directory: str) -> list[str]:
    """Names of the temporary files in ``directory`` that :func:`write_atomic` creates."""
    if not os.path.isdir(directory):
        return []
    return sorted(f for f in os.listdir(directory) if _TEMP.match(f))


# ---------------------------------------------------------------------- problems
def _grads(problem: Problem) -> dict[str, torch.Tensor]:
    return {
        k: p.grad.detach().clone()
        for k, p in problem.named_trainable_parameters().items()
        if p.grad is not None
    }


def _iterative_state(problem: IterativeProblem) -> dict[str, Any]:
    pending = problem._pending
    return {
        **problem.unrolled_state(),
        "pending": None if pending is None else _tree.detach(pending),
    }


RANK_KEYS = ("loaders", "grads", "window")
"""Per-problem entries that differ between data-parallel ranks."""


def rank_value(problem: Problem, key: str) -> Any:
    if key == "loaders":
        return [ld.state_dict() for ld in problem._loaders]
    if key == "grads":
        if isinstance(problem, IterativeProblem):
            return {}
        return _sharding.gather(_grads(problem)) if problem.sharded else _grads(problem)
    assert key == "window"
    return [] if problem._window_closed else list(problem._window)


def _module_and_optimizer(problem: Problem) -> dict[str, Any]:
    assert problem.module is not None and problem.optimizer is not None
    if problem.sharded:  # full tensors, so the file is the same as an unsharded run's
        return _sharding.full_state(problem.module, problem.optimizer)
    return {"module": problem.module.state_dict(), "optimizer": problem.optimizer.state_dict()}


def _scheduler_name(scheduler: Any) -> str | None:
    """The scheduler's class, with the classes it chains (``SequentialLR(LinearLR, StepLR)``)."""
    if scheduler is None:
        return None
    inner = getattr(scheduler, "_schedulers", None)
    name = type(scheduler).__name__
    if isinstance(inner, (list, tuple)) and inner:
        return f"{name}({', '.join(type(s).__name__ for s in inner)})"
    return name


def layout(problem: Problem) -> dict[str, Any]:
    """What a checkpoint's optimizer and scheduler state only fits: their classes and each
    param group's option names (a state of one optimizer loads into another silently)."""
    assert problem.optimizer is not None
    return {
        "optimizer": type(problem._own_optimizer()).__name__,
        "group_options": [
            sorted(k for k in g if k not in ("params", "initial_lr"))
            for g in problem.optimizer.param_groups
        ],
        "scheduler": _scheduler_name(problem.scheduler),
    }


def problem_state(problem: Problem) -> dict[str, Any]:
    """One problem's state; a collective for an FSDP2-sharded problem (every rank calls it)."""
    assert problem.module is not None and problem.optimizer is not None
    iterative = isinstance(problem, IterativeProblem)
    state = {
        "kind": type(problem).__name__,
        "layout": layout(problem),
        **_module_and_optimizer(problem),
        "scheduler": None if problem.scheduler is None else problem.scheduler.state_dict(),
        "scaler": None if problem.scaler is None else problem.scaler.state_dict(),
        "count": problem._count,
        "global_step": problem._global_step,
        "ready": dict(problem.ready),
        "inner_loop_start": problem._inner_loop_start,
        "last_grads": problem._last_grads,
        "cache": None if iterative else problem._cache,
        "warm_starts": [[list(k), v] for k, v in problem._warm_starts.items()],
        "config": problem.config.to_dict(),
        "iterative": _iterative_state(problem) if isinstance(problem, IterativeProblem) else None,
        **{key: rank_value(problem, key) for key in RANK_KEYS},
    }
    return _sharding.gather(state) if problem.sharded else state


def _load_problem(problem: Problem, state: dict[str, Any]) -> None:
    assert problem.module is not None and problem.optimizer is not None
    state = {
        k: v if k in ("module", "optimizer") else to_device(v, problem.device)
        for k, v in state.items()
    }
    if problem.sharded:
        _sharding.load_full_state(problem.module, problem.optimizer, state)
        state = _sharded_entries(problem, state)
    else:
        problem.module.load_state_dict(state["module"])
        problem.optimizer.load_state_dict(state["optimizer"])
    if problem.scheduler is not None:
        problem.scheduler.load_state_dict(state["scheduler"])
    if problem.scaler is not None and state["scaler"] is not None:
        problem.scaler.load_state_dict(state["scaler"])
    problem._count = int(state["count"])
    problem._global_step = int(state["global_step"])
    problem.ready = dict(state["ready"])
    problem._inner_loop_start = bool(state["inner_loop_start"])
    problem._window = list(state["window"])
    problem._window_closed = not state["window"]
    problem._last_grads = state["last_grads"]
    problem._cache = state["cache"]
    problem._warm_starts = {(k[0], int(k[1]), int(k[2])): v for k, v in state["warm_starts"]}
    params = problem.named_trainable_parameters()
    for k, p in params.items():
        p.grad = state["grads"][k].clone() if k in state["grads"] else None
    if isinstance(problem, IterativeProblem):
        it = state["iterative"]
        problem.load_unrolled_state(it)
        problem._pending = it["pending"]


def _sharded_entries(problem: Problem, state: dict[str, Any]) -> dict[str, Any]:
    """``state``'s full tensors of parameter-shaped entries cut into this rank's shards."""
    assert problem.module is not None
    params = problem.named_trainable_parameters()
    out = dict(state)
    out["grads"] = _sharding.scatter_like(state["grads"], params)
    if state["last_grads"] is not None:
        out["last_grads"] = _sharding.scatter_like(state["last_grads"], params)
    out["warm_starts"] = [[k, _sharding.scatter_like(v, params)] for k, v in state["warm_starts"]]
    if state["cache"] is not None:
        out["cache"] = _sharding.scatter_cache(problem, state["cache"])
    return out


# ---------------------------------------------------------------------- engine
def _rank_state(engine: Engine) -> dict[str, Any]:
    """The part of the state that differs between data-parallel ranks (moved to the CPU)."""
    local = {
        "rng": _rng.capture(),
        "problems": {
            p.name: {key: rank_value(p, key) for key in RANK_KEYS} for p in engine.problems
        },
    }
    return to_device(local, "cpu")


def engine_state(engine: Engine) -> dict[str, Any]:
    """Everything needed to continue ``engine`` exactly, as tensors and plain containers.

    A collective under data parallelism (call it on every rank); rank 0's result is complete,
    with every rank's own RNG, loader and accumulation state under ``ranks``.
    """
    group = engine.distributed
    state = {
        "format": FORMAT,
        "version": VERSION,
        "engine": {
            "global_step": engine.global_step,
            "validation_history": [dict(v) for v in engine.validation_history],
            "stopped_early": engine.stopped_early,
            "config": engine.config.to_dict(),
        },
        "rng": _rng.capture(),
        "problems": {p.name: problem_state(p) for p in engine.problems},
    }
    if group.world_size > 1:
        state["ranks"] = group.gather_object(_rank_state(engine))
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


def _shapes(tree: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tree.items() if isinstance(v, torch.Tensor)}


def _check_problem(path: str, problem: Problem, state: dict[str, Any]) -> None:
    assert problem.module is not None and problem.optimizer is not None
    where = f"checkpoint {path!r}, problem {problem.name!r}"
    if state["kind"] != type(problem).__name__:
        raise ValueError(f"{where}: saved as {state['kind']}, now {type(problem).__name__}")
    saved, live = _shapes(state["module"]), _shapes(problem.module.state_dict())
    if saved != live:
        diff = sorted(k for k in saved.keys() | live.keys() if saved.get(k) != live.get(k))
        raise ValueError(f"{where}: parameter names or shapes differ ({diff[:5]})")
    _check_layout(where, state["layout"], layout(problem))
    groups = [len(g["params"]) for g in state["optimizer"]["param_groups"]]
    if groups != [len(g["params"]) for g in problem.optimizer.param_groups]:
        raise ValueError(f"{where}: optimizer parameter groups differ")
    if len(state["loaders"]) != len(problem._loaders):
        raise ValueError(f"{where}: number of data loaders differs")
    saved_lowers, live_lowers = sorted(state["ready"]), sorted(c.name for c in problem.children)
    if saved_lowers != live_lowers:
        raise ValueError(
            f"{where}: saved with lower levels {saved_lowers}, this engine gives it "
            f"{live_lowers}; build the engine with the dependencies in force when it was saved "
            "(or call set_dependency with them before load)"
        )


def _check_layout(where: str, saved: dict[str, Any], live: dict[str, Any]) -> None:
    fix = "build the engine with the optimizer and scheduler the checkpoint was saved with"
    if saved["optimizer"] != live["optimizer"]:
        raise ValueError(
            f"{where}: saved with optimizer {saved['optimizer']}, this engine has "
            f"{live['optimizer']}; {fix}"
        )
    if saved["group_options"] != live["group_options"]:
        raise ValueError(
            f"{where}: the optimizer's param group options differ (saved "
            f"{saved['group_options']}, this engine has {live['group_options']}); {fix}"
        )
    if saved["scheduler"] != live["scheduler"]:
        raise ValueError(
            f"{where}: saved with scheduler {saved['scheduler']}, this engine has "
            f"{live['scheduler']}; {fix}"
        )


def check_compatible(engine: Engine, state: Any, path: str) -> None:
    """Raise ``ValueError`` unless ``state`` is a checkpoint of this program."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a ziggurat checkpoint")
    if state.get("version") != VERSION:
        raise ValueError(
            f"checkpoint {path!r} has format version {state.get('version')}, this ziggurat "
            f"reads version {VERSION} only; load it with the ziggurat release that wrote it "
            "(version 1 files lack the optimizer and scheduler classes that are now checked)"
        )
    saved, live = sorted(state["problems"]), sorted(engine.problem_names())
    if saved != live:
        raise ValueError(
            f"checkpoint {path!r} is of a different program: problems {saved}, "
            f"this engine has {live}"
        )
    for problem in engine.problems:
        _check_problem(path, problem, state["problems"][problem.name])


def load_engine_state(engine: Engine, state: dict[str, Any]) -> None:
    """Restore ``state`` (already checked) into ``engine``; the RNG states come last.

    Each data-parallel rank takes its own RNG, loader and accumulation state (see
    :func:`own_rank`).
    """
    state = own_rank(state, engine.distributed.rank, engine.distributed.world_size)
    run = state["engine"]
    engine.global_step = int(run["global_step"])
    engine.validation_history = [dict(v) for v in run["validation_history"]]
    engine.stopped_early = bool(run["stopped_early"])
    for problem in engine.problems:
        saved = state["problems"][problem.name]
        _load_problem(problem, saved)
        for loader, loader_state in zip(problem._loaders, saved["loaders"], strict=True):
            loader.load_state_dict(loader_state)
    _rng.restore(state["rng"])


# ---------------------------------------------------------------------- files
def write_atomic(state: dict[str, Any], path: str) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then rename onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(path: str) -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True``; a damaged file is a ``ValueError``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"checkpoint {path!r} is truncated or corrupt and cannot be loaded ({error})"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} is not a ziggurat checkpoint")
    return state
