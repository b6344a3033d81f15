"""Betty's logging names on ziggurat's backends.

``get_logger()`` is the ``ziggurat`` Python logger; ``logger(logger_type)`` returns an object
with console methods (``debug``/``info``/``warning``/``error``) and ``log(stats, tag, step)``,
which writes scalars to the chosen backend. ``Engine.logger`` and ``Problem.logger`` are such
objects bound to the engine's own backend (see :class:`BoundLogger`).

A missing backend package is an ``ImportError`` naming the extra to install, not a warning and
a silent fallback: a run that was meant to be recorded should not discover afterwards that it
was not.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from .._values import as_float
from . import _backends
from ._backends import MetricLogger

Record = Callable[[str, Mapping[str, float], int], None]
"""``record(source, values, step)``: what a bound logger hands its stats to."""


def get_logger() -> logging.Logger:
    """The ``ziggurat`` Python logger; INFO lines go to stderr unless logging is configured."""
    _backends.show_console()
    return _backends.log


def flatten_stats(stats: Mapping[str, Any]) -> dict[str, float]:
    """Scalars by name; a list or tuple ``v`` under ``key`` becomes ``key_0``, ``key_1``, ..."""
    out: dict[str, float] = {}
    for key, value in stats.items():
        if isinstance(value, (list, tuple)):
            out.update({f"{key}_{i}": as_float(v) for i, v in enumerate(value)})
        else:
            out[key] = as_float(value)
    return out


class LoggerBase:
    """Console messages, and ``log(stats, tag, step)`` that records nothing (``"none"``)."""

    def log(
        self, stats: Mapping[str, Any] | None, tag: str | None = None, step: int | None = None
    ) -> None:
        """Record ``stats`` (scalars, tensors, or lists of them) as ``tag/key`` at ``step``."""
        if stats:
            self._record(tag, flatten_stats(stats), step)

    def _record(self, tag: str | None, values: Mapping[str, float], step: int | None) -> None:
        """Where the flattened scalars go. Default: nowhere."""

    def close(self) -> None:
        """Flush and release the backend. Default: nothing."""

    @staticmethod
    def debug(msg: str, *args: Any, **kwargs: Any) -> None:
        get_logger().debug(msg, *args, **kwargs)

    @staticmethod
    def info(msg: str, *args: Any, **kwargs: Any) -> None:
        get_logger().info(msg, *args, **kwargs)

    @staticmethod
    def warning(msg: str, *args: Any, **kwargs: Any) -> None:
        get_logger().warning(msg, *args, **kwargs)

    @staticmethod
    def error(msg: str, *args: Any, **kwargs: Any) -> None:
        get_logger().error(msg, *args, **kwargs)


class _OnBackend(LoggerBase):
    def __init__(self, backend: MetricLogger) -> None:
        self.backend = backend

    def _record(self, tag: str | None, values: Mapping[str, float], step: int | None) -> None:
        self.backend.log(tag or "", values, 0 if step is None else step)

    def close(self) -> None:
        self.backend.close()


def _default_dir(comment: str) -> str:
    return os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}_{socket.gethostname()}{comment}")


class TensorBoardLogger(_OnBackend):
    """Scalars to TensorBoard event files in ``log_dir``
    (default ``runs/<time>_<host><comment>``)."""

    def __init__(self, log_dir: str | None = None, comment: str = "") -> None:
        super().__init__(_backends.TensorBoardLogger(log_dir or _default_dir(comment)))


class WandBLogger(_OnBackend):
    """Scalars to a Weights & Biases run (started here; project ``ziggurat``)."""

    def __init__(
        self,
        log_dir: str = "runs",
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        name = run_name or time.strftime("%Y%m%d-%H%M%S")
        directory = os.path.join(log_dir, name)
        super().__init__(_backends.WandbLogger(directory, name, config or {}))


class MlflowLogger(_OnBackend):
    """Scalars to an MLflow run (tracking URI as for ``EngineConfig(logger_type="mlflow")``)."""

    def __init__(
        self,
        log_dir: str = "runs",
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        name = run_name or time.strftime("%Y%m%d-%H%M%S")
        super().__init__(_backends.MlflowLogger(log_dir, name, config or {}))


_TYPES: dict[str, Callable[[], LoggerBase]] = {
    "none": LoggerBase,
    "console": LoggerBase,
    "tensorboard": TensorBoardLogger,
    "wandb": WandBLogger,
    "mlflow": MlflowLogger,
}


def logger(logger_type: str = "tensorboard") -> LoggerBase:
    """A logger of ``logger_type`` (``none``, ``console``, ``tensorboard``, ``wandb``,
    ``mlflow``) with its default location; ``ImportError`` when the package is missing."""
    try:
        factory = _TYPES[logger_type]
    except KeyError:
        raise ValueError(
            f"unknown logger_type {logger_type!r}; use one of {sorted(_TYPES)}"
        ) from None
    return factory()


class BoundLogger(LoggerBase):
    """A logger that hands its stats to an engine: a console line and the engine's backend.

    ``tag`` defaults to ``"log"`` and ``step`` to ``default_step()`` (the global step).
    """

    def __init__(self, record: Record, default_step: Callable[[], int]) -> None:
        self._sink = record
        self._default_step = default_step

    def _record(self, tag: str | None, values: Mapping[str, float], step: int | None) -> None:
        self._sink(tag or "log", values, self._default_step() if step is None else step)
