"""Services around the engine's loop: metric logging, the progress bar, periodic checkpoints,
resuming, and metric-driven schedulers."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..logging import MetricLogger, Progress, make_logger
from ..problems import Problem
from ..problems._schedulers import steps_on_metric
from . import _checkpoint

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger("ziggurat")


class RunServices:
    """Owned by one engine; created empty, the backends open on first use."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._logger: MetricLogger | None = None
        self._progress: Progress | None = None
        self._described: dict[str, list[str]] = {}  # methods last sent to the backend
        self.run_name = engine.config.run_name or time.strftime("%Y%m%d-%H%M%S")

    def logger(self) -> MetricLogger:
        """The metrics backend; under data parallelism only rank 0 writes (others: none).

        Opened by ``Engine.run`` and closed when it returns. Values logged outside a run
        (``engine.logger.log`` after ``run``) open it again; it is then closed by the next
        run's end, by ``Engine.cleanup`` or at interpreter exit, so nothing stays unflushed.
        """
        if self._logger is None:
            cfg = self.engine.config
            main = self.engine.distributed.is_main
            kind = cfg.logger_type if main else "none"
            config = {
                **cfg.to_dict(),
                "problems": {p.name: p.config.to_dict() for p in self.engine.problems},
            }
            self._logger = make_logger(kind, cfg.log_dir, self.run_name, config)
            self._described = {}
            atexit.register(self.close_logger)
        return self._logger

    def close_logger(self) -> None:
        """Flush and close the backend if it is open (it reopens on the next use)."""
        atexit.unregister(self.close_logger)
        if self._logger is not None:
            logger, self._logger = self._logger, None
            logger.close()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Open the logger and progress bar for one ``Engine.run``; close both afterwards."""
        cfg = self.engine.config
        self.logger()
        if _wants_progress(cfg.progress) and self.engine.distributed.is_main:
            self._progress = Progress(cfg.train_iters, self.engine.global_step)
        try:
            yield
        finally:
            if self._progress is not None:
                self._progress.close()
                self._progress = None
            self.close_logger()

    def after_step(self) -> None:
        engine = self.engine
        if self._progress is not None:
            self._progress.update({p.name: p.last_loss for p in engine.problems})
        every, directory = engine.config.checkpoint_step, engine.config.checkpoint_dir
        if directory and every > 0 and engine.global_step % every == 0:
            engine.save(_checkpoint.checkpoint_path(directory, engine.global_step))

    def resume(self) -> None:
        """Continue from the latest checkpoint in ``checkpoint_dir``, if there is one."""
        directory = self.engine.config.checkpoint_dir
        if not directory:
            raise ValueError("EngineConfig resume=True needs checkpoint_dir")
        if self.engine.distributed.is_main:
            remove_stale_temp_files(directory)
        # rank 0 picks, so every rank loads the same file
        path = self.engine.distributed.broadcast_object(_checkpoint.latest_checkpoint(directory))
        if path is None:
            log.info("resume: no checkpoint in %s; starting from scratch", directory)
            return
        self.engine.load(path)
        log.info("resumed from %s at global step %d", path, self.engine.global_step)

    def log_hypergradient(self, problem: Problem) -> None:
        every = problem.config.log_step
        console = every > 0 and problem.count % every == 0 and self.engine.distributed.is_main
        if not console and not self.logger().records:
            return  # nothing would read the values: leave the norm on the device
        values: dict[str, float] = {"norm": problem.last_hypergradient_norm}
        methods = []
        for i, info in enumerate(problem.last_hop_info):
            values[f"hop{i}_iterations"] = float(info.iterations)
            if not math.isnan(info.residual):
                values[f"hop{i}_residual"] = float(info.residual)
            methods.append(info.method)
        step = problem.count if problem.config.log_local_step else self.engine.global_step
        if console:
            log.info(
                "[%s/hypergradient] [global step %d] methods: %s || %s",
                problem.name,
                step,
                ",".join(methods),
                values,
            )
        source = f"{problem.name}/hypergradient"
        self.logger().log(source, values, step)
        if self._described.get(problem.name) != methods:
            self._described[problem.name] = methods
            text = {f"hop{i}_method": m for i, m in enumerate(methods)}
            self.logger().describe(source, text, step)


def remove_stale_temp_files(directory: str) -> None:
    """Delete the temporary files (``.*.tmp``) a save interrupted by a crash left behind.

    Only a resumed run calls it: a run writing checkpoints into ``directory`` at the same time
    would be another run of the same program, which resuming from that directory excludes.
    """
    for name in _checkpoint.stale_temp_files(directory):
        path = os.path.join(directory, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            log.info("resume: removed %s, left by an interrupted checkpoint save", path)


def _wants_progress(setting: bool | None) -> bool:
    """``EngineConfig.progress``: ``None`` means a bar when tqdm is there and stderr is a tty."""
    if setting is not None:
        return setting
    return importlib.util.find_spec("tqdm") is not None and sys.stderr.isatty()


def check_plateau_schedulers(engine: Engine) -> None:
    """``ReduceLROnPlateau`` steps on validation metrics, so validation must run."""
    plateau = [p.name for p in engine.problems if steps_on_metric(p.scheduler)]
    if plateau and engine.config.valid_step <= 0:
        raise ValueError(
            f"problems {plateau} use ReduceLROnPlateau, which steps on a validation metric, "
            "but EngineConfig valid_step disables validation; set valid_step > 0"
        )


def check_early_stopping(engine: Engine, validates: bool) -> None:
    """Early stopping reads validation results, so validation must run and return them.

    ``validates``: whether ``engine`` overrides ``Engine.validation``.
    """
    cfg = engine.config
    if not cfg.early_stopping:
        return
    if cfg.valid_step <= 0:
        raise ValueError(
            f"EngineConfig early_stopping=True stops on the validation metric "
            f"{cfg.early_stopping_metric!r}, but valid_step={cfg.valid_step} disables "
            "validation; set valid_step > 0, or early_stopping=False"
        )
    if not validates:
        raise ValueError(
            f"EngineConfig early_stopping=True stops on the validation metric "
            f"{cfg.early_stopping_metric!r}, but {type(engine).__name__} does not override "
            "validation(); define validation() returning a dict with that metric, or set "
            "early_stopping=False"
        )


def plateau_metric(engine: Engine) -> str:
    return engine.config.plateau_metric or engine.config.early_stopping_metric


def step_plateau_schedulers(engine: Engine, values: dict[str, float]) -> None:
    """Step every ``ReduceLROnPlateau`` with the configured validation metric."""
    plateau = [p for p in engine.problems if steps_on_metric(p.scheduler)]
    if not plateau:
        return
    metric = plateau_metric(engine)
    if metric not in values:
        raise KeyError(
            f"ReduceLROnPlateau metric {metric!r} is not in the validation dict (keys "
            f"{sorted(values)}); return it from validation() or set EngineConfig plateau_metric"
        )
    for problem in plateau:
        problem.scheduler.step(values[metric])
