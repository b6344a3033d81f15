"""Metric loggers: one ``log(source, values, step)`` signature, one class per backend.

Every backend also writes a line to the ``ziggurat`` Python logger (the console), so
``logger_type`` only chooses where scalars are *additionally* recorded. Scalars are tagged
``<source>/<key>``, where ``source`` is a problem name, ``validation`` or
``<problem>/hypergradient`` (an empty source tags ``<key>`` alone). Text facts that hold for
a stretch of the run (the hypergradient method of each hop) go through :meth:`describe`: a
TensorBoard text summary, a W&B config entry, an MLflow tag. Optional backends are imported
lazily; a missing package is an ``ImportError`` naming the extra to install.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from .._extras import MissingExtraError, missing

log = logging.getLogger("ziggurat")


class MetricLogger:
    """Records nothing beyond the console lines (``logger_type="none"`` or ``"console"``, and
    every rank but rank 0); the base of the others."""

    def log(self, source: str, values: Mapping[str, float], step: int) -> None:
        """Record scalars of ``source`` at ``step``. Default: nothing beyond the console."""

    def describe(self, source: str, values: Mapping[str, str], step: int) -> None:
        """Record text facts of ``source`` from ``step`` on. Default: nothing."""

    def close(self) -> None:
        """Flush and release the backend. Default: nothing."""

    @property
    def records(self) -> bool:
        """Whether :meth:`log` records anything, i.e. a subclass overrides it.

        Callers may skip building values (and the host syncs that reading them costs) when
        nothing records them and the console line is not due.
        """
        return type(self).log is not MetricLogger.log


def _missing(backend: str, module: str) -> MissingExtraError:
    return missing(f"EngineConfig(logger_type={backend!r})", module)


def _tags(source: str, values: Mapping[str, float]) -> dict[str, float]:
    prefix = f"{source}/" if source else ""
    return {f"{prefix}{k}": float(v) for k, v in values.items()}


def _text_tags(source: str, values: Mapping[str, str]) -> dict[str, str]:
    prefix = f"{source}/" if source else ""
    return {f"{prefix}{k}": str(v) for k, v in values.items()}


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested option dicts as one level of ``a/b`` keys (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


class TensorBoardLogger(MetricLogger):
    """Scalars to TensorBoard event files in ``log_dir/run_name``."""

    def __init__(self, directory: str, config: Mapping[str, Any] | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise _missing("tensorboard", "torch.utils.tensorboard") from error
        self.writer = SummaryWriter(log_dir=directory)
        if config:
            rows = "\n".join(f"| {k} | {v} |" for k, v in flat_config(config).items())
            self.writer.add_text("config", "| option | value |\n|---|---|\n" + rows, 0)

    def log(self, source: str, values: Mapping[str, float], step: int) -> None:
        for tag, value in _tags(source, values).items():
            self.writer.add_scalar(tag, value, step)

    def describe(self, source: str, values: Mapping[str, str], step: int) -> None:
        for tag, value in _text_tags(source, values).items():
            self.writer.add_text(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger(MetricLogger):
    """Scalars to a Weights & Biases run (``WANDB_MODE=offline`` works without a network).

    ``close`` finishes the run; W&B's service process may write the last records of the run
    directory after that, and ``wandb.teardown()`` (called by W&B at interpreter exit) waits
    for it. Call it before reading the offline files in the same process.
    """

    def __init__(self, directory: str, run_name: str, config: Mapping[str, Any]) -> None:
        try:
            import wandb
        except ImportError as error:
            raise _missing("wandb", "wandb") from error
        os.makedirs(directory, exist_ok=True)
        self.run = wandb.init(
            project="ziggurat", name=run_name, dir=directory, config=dict(config), reinit=True
        )
        self.run.define_metric("*", step_metric="global_step")

    def log(self, source: str, values: Mapping[str, float], step: int) -> None:
        self.run.log({**_tags(source, values), "global_step": step})

    def describe(self, source: str, values: Mapping[str, str], step: int) -> None:
        self.run.config.update(_text_tags(source, values), allow_val_change=True)

    def close(self) -> None:
        self.run.finish()


class MlflowLogger(MetricLogger):
    """Scalars to an MLflow run; the default tracking URI is ``sqlite:///<log_dir>/mlflow.db``."""

    def __init__(self, directory: str, run_name: str, config: Mapping[str, Any]) -> None:
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise _missing("mlflow", "mlflow") from error
        os.makedirs(directory, exist_ok=True)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (
            "sqlite:///" + os.path.abspath(os.path.join(directory, "mlflow.db"))
        )
        self._metric = Metric
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name("ziggurat")
        experiment = found.experiment_id if found else self.client.create_experiment("ziggurat")
        self.run_id = self.client.create_run(experiment, run_name=run_name).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in flat_config(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, source: str, values: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in _tags(source, values).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def describe(self, source: str, values: Mapping[str, str], step: int) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(k, v[:5000]) for k, v in _text_tags(source, values).items()]
        self.client.log_batch(self.run_id, tags=tags)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def show_console() -> None:
    """Show ``ziggurat`` INFO lines on stderr unless the application configured logging."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(levelname)s] %(message)s"))
        log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def make_logger(
    logger_type: str, log_dir: str, run_name: str, config: Mapping[str, Any]
) -> MetricLogger:
    """The logger for ``EngineConfig.logger_type``; ``config`` is recorded where supported.

    Every type shows the console lines (:func:`show_console`): ``"none"`` and ``"console"``
    record nothing else, as Betty's ``"none"`` printed its lines and recorded nothing.
    """
    show_console()
    if logger_type in ("none", "console"):
        return MetricLogger()
    directory = os.path.join(log_dir, run_name)
    if logger_type == "tensorboard":
        return TensorBoardLogger(directory, config)
    if logger_type == "wandb":
        return WandbLogger(directory, run_name, config)
    if logger_type == "mlflow":
        return MlflowLogger(log_dir, run_name, config)
    raise ValueError(
        f"unknown logger_type {logger_type!r}; use none, console, tensorboard, wandb or mlflow"
    )
