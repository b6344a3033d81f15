"""A run's checkpoint directory: created, checked and locked when the run starts, pruned after
each periodic save, released when the run ends.

Two runs writing one directory would overwrite each other's ``step-*.pt`` files, and a resumed
run deletes the temporary files of interrupted saves, which would be the other run's saves in
progress. So a run that writes to a directory (periodic checkpoints, or ``resume=True``) holds a
lock file in it, :data:`LOCK`, naming its process (pid, host, start time). A second run is
refused, naming the first; a lock left by a process that is no longer running on this host (a
run killed with SIGKILL) is taken over with a warning. Under data parallelism only rank 0 calls
any of this.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from typing import Any

from . import _checkpoint_files

log = logging.getLogger("ziggurat")

LOCK = ".ziggurat.lock"
"""The lock file's name (a dot file: not a checkpoint name, nor a temporary file's)."""


def _owner() -> dict[str, Any]:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": started}


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read(path: str) -> dict[str, Any] | None:
    """The lock's owner, or ``None`` when the file is gone or not a lock ziggurat wrote."""
    try:
        with open(path) as f:
            owner = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    ok = isinstance(owner, dict) and isinstance(owner.get("pid"), int)
    return owner if ok else {}


class CheckpointDirectory:
    """``EngineConfig.checkpoint_dir`` for one run.

    Args:
        directory: the checkpoint directory.
        keep_last: after each periodic save, keep the ``keep_last`` checkpoints with the
            highest steps (the one just written always among them); ``None`` keeps all.
    """

    def __init__(self, directory: str, keep_last: int | None) -> None:
        self.directory, self.keep_last = directory, keep_last
        self.lock = os.path.join(directory, LOCK)
        self.existed = False
        self._held = False

    def open(self) -> None:
        """Create the directory, check it is writable and take its lock.

        Raises:
            ValueError: it is not a directory, cannot be written, or another run holds it.
        """
        self.existed = os.path.isdir(self.directory)
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"EngineConfig checkpoint_dir={self.directory!r} cannot be created ({error}); "
                "give a directory this process can create"
            ) from error
        self._take()

    def _take(self) -> None:
        for _ in range(2):  # a second attempt after removing a stale lock
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale()
                continue
            except OSError as error:
                raise ValueError(
                    f"EngineConfig checkpoint_dir={self.directory!r} is not writable ({error}); "
                    "checkpoints could not be saved there. Give a writable directory"
                ) from error
            with os.fdopen(fd, "w") as f:
                json.dump(_owner(), f)
            self._held = True
            return
        raise self._in_use(_read(self.lock))

    def _clear_stale(self) -> None:
        """Remove the lock of a process that is no longer running on this host."""
        owner = _read(self.lock)
        if owner is None:
            return  # released meanwhile: try again
        here = owner.get("host") == socket.gethostname()
        if not owner or not here or _running(owner["pid"]):
            raise self._in_use(owner)
        log.warning(
            "checkpoint_dir %s: taking over the lock of process %d (started %s), which is no "
            "longer running; its checkpoints are kept",
            self.directory,
            owner["pid"],
            owner.get("started", "at an unknown time"),
        )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock)

    def _in_use(self, owner: dict[str, Any] | None) -> ValueError:
        if owner:
            who = (
                f"process {owner['pid']} on host {owner.get('host')!r}, started "
                f"{owner.get('started', 'at an unknown time')}"
            )
        else:
            who = "a process whose lock file cannot be read"
        return ValueError(
            f"EngineConfig checkpoint_dir={self.directory!r} is in use by another run ({who}): "
            "two runs writing one directory would overwrite and delete each other's "
            "checkpoints. Give this run its own checkpoint_dir, or stop the other run; if it is "
            f"no longer running, delete {self.lock}"
        )

    def close(self) -> None:
        """Release the lock, if this run holds it."""
        if self._held:
            self._held = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock)

    def prune(self, written: str) -> list[str]:
        """Delete the ``step-*.pt`` files beyond the newest ``keep_last`` (never ``written``,
        never a file of another name); return the paths deleted."""
        if self.keep_last is None:
            return []
        newest = os.path.abspath(written)
        others = [
            p
            for _, p in _checkpoint_files.checkpoints(self.directory)
            if os.path.abspath(p) != newest
        ]
        doomed = others[: max(0, len(others) - (self.keep_last - 1))]
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return doomed

    def warn_earlier_checkpoints(self) -> None:
        """A run that does not resume, writing beside earlier checkpoints, says so."""
        found = _checkpoint_files.checkpoints(self.directory)
        if found:
            log.warning(
                "checkpoint_dir %s already holds %d checkpoint(s), the latest %s, and "
                "resume=False: this run starts from scratch and writes beside them (a later "
                "resume=True takes the highest step); pass resume=True to continue, or give "
                "another checkpoint_dir",
                self.directory,
                len(found),
                os.path.basename(found[-1][1]),
            )

    def describe_empty(self) -> str:
        """Why :func:`_checkpoint_files.latest_checkpoint` found nothing, for the resume line."""
        if not self.existed:
            return "the directory did not exist (it is created now)"
        names = sorted(n for n in os.listdir(self.directory) if n != LOCK)
        if not names:
            return "the directory is empty"
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        return f"the directory holds no step-*.pt file (it holds {shown})"
