"""Checkpoint files: their names, atomic writes and checked reads.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers, so it loads
with ``torch.load(..., weights_only=True)``. Writes are atomic: a temporary file in the same
directory, flushed and fsynced, then ``os.replace`` onto the final name, so a crash never leaves
a partial file under a checkpoint's name.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

import torch

_NAME = re.compile(r"^step-(\d+)\.pt$")
_TEMP = re.compile(r"^\..+\.tmp$")  # what write_atomic's mkstemp names


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step-{step:09d}.pt")


def checkpoints(directory: str) -> list[tuple[int, str]]:
    """Every complete checkpoint in ``directory`` (``step-*.pt``; temp files ignored) as
    ``(step, path)``, lowest step first."""
    if not os.path.isdir(directory):
        return []
    found = [(int(m.group(1)), f) for f in os.listdir(directory) if (m := _NAME.match(f))]
    return [(step, os.path.join(directory, f)) for step, f in sorted(found)]


def latest_checkpoint(directory: str) -> str | None:
    """The complete checkpoint with the highest step in ``directory`` (temp files ignored)."""
    found = checkpoints(directory)
    return found[-1][1] if found else None


def stale_temp_files(directory: str) -> list[str]:
    """Names of the temporary files in ``directory`` that :func:`write_atomic` creates."""
    if not os.path.isdir(directory):
        return []
    return sorted(f for f in os.listdir(directory) if _TEMP.match(f))


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
