"""Services around the engine's loop: metric logging, the progress bar, periodic checkpoints
(the directory, its lock and retention), resuming, and metric-driven schedulers."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from .._schedulers import steps_on_metric
from ..configs import EngineConfig
from ..logging import MetricLogger, Progress, make_logger
from ..problems import DecisionRecord, HypergradientRecord, Problem
from ..systems import Group
from ..utils import log_from_loss_dict
from . import _checkpoint_files
from ._checkpoint_dir import CheckpointDirectory

log = logging.getLogger("ziggurat")


class RunServices:
    """Owned by one engine; created empty, the backends open on first use.

    Args:
        config: the engine's options.
        group: its process group (only rank 0 writes).
        problems: the program's levels.
        global_step: reads the engine's iteration.
        save, load: the engine's checkpoint writer and reader (``Engine.save`` / ``load``).
    """

    def __init__(
        self,
        config: EngineConfig,
        group: Group,
        problems: Sequence[Problem],
        global_step: Callable[[], int],
        save: Callable[[str], None],
        load: Callable[[str], None],
    ) -> None:
        self.config, self.group, self.problems = config, group, problems
        self.global_step, self.save, self.load = global_step, save, load
        self._logger: MetricLogger | None = None
        self._progress: Progress | None = None
        self._described: dict[str, list[str]] = {}  # methods last sent to the backend
        self.run_name = config.run_name or time.strftime("%Y%m%d-%H%M%S")
        self._checkpoints: CheckpointDirectory | None = None  # held while a run writes there

    def logger(self) -> MetricLogger:
        """The metrics backend; under data parallelism only rank 0 writes (others: none).

        Opened by ``Engine.run`` and closed when it returns. Values logged outside a run
        (``engine.logger.log`` after ``run``) open it again; it is then closed by the next
        run's end, by ``Engine.cleanup`` or at interpreter exit, so nothing stays unflushed.
        """
        if self._logger is None:
            cfg = self.config
            config = {
                **cfg.to_dict(),
                "problems": {p.name: p.config.to_dict() for p in self.problems},
            }
            self._logger = (
                make_logger(cfg.logger_type, cfg.log_dir, self.run_name, config)
                if self.group.is_main
                else MetricLogger()  # no backend, and no console handler added on this rank
            )
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
        """One ``Engine.run``: open the logger (so the console shows what follows), take the
        checkpoint directory, resume if asked, open the progress bar; release all afterwards."""
        cfg = self.config
        self.logger()
        try:
            self._open_checkpoints()
            if cfg.resume:
                self.resume()
            if _wants_progress(cfg.progress) and self.group.is_main:
                self._progress = Progress(cfg.train_iters, self.global_step())
            yield
        finally:
            if self._progress is not None:
                self._progress.close()
                self._progress = None
            if self._checkpoints is not None:
                self._checkpoints.close()
                self._checkpoints = None
            self.close_logger()

    def _open_checkpoints(self) -> None:
        """Create, check and lock ``checkpoint_dir`` when this run writes there (periodic
        checkpoints or ``resume=True``): on rank 0, which tells every rank whether it failed."""
        cfg = self.config
        if not cfg.checkpoint_dir or not (cfg.checkpoint_step > 0 or cfg.resume):
            return
        error: ValueError | None = None
        if self.group.is_main:
            checkpoints = CheckpointDirectory(cfg.checkpoint_dir, cfg.keep_last)
            try:
                checkpoints.open()
                self._checkpoints = checkpoints
            except ValueError as caught:
                error = caught
            if error is None and not cfg.resume:
                checkpoints.warn_earlier_checkpoints()
        failed = self.group.broadcast_object(None if error is None else str(error))
        if error is not None:
            raise error
        if failed is not None:
            raise ValueError(f"rank 0: {failed}")

    def after_step(self) -> None:
        step = self.global_step()
        if self._progress is not None:
            self._progress.update({p.name: p.last_loss for p in self.problems})
        every, directory = self.config.checkpoint_step, self.config.checkpoint_dir
        if directory and every > 0 and step % every == 0:
            path = _checkpoint_files.checkpoint_path(directory, step)
            self.save(path)
            if self._checkpoints is not None:  # rank 0
                self._checkpoints.prune(path)

    def resume(self) -> None:
        """Continue from the latest checkpoint in ``checkpoint_dir``, if there is one; say on
        the console (rank 0) what was loaded, or that nothing was and why."""
        found = None
        if self.group.is_main:
            checkpoints = self._checkpoints
            assert checkpoints is not None  # taken by session() before resuming
            remove_stale_temp_files(checkpoints.directory)
            found = _checkpoint_files.latest_checkpoint(checkpoints.directory)
            if found is None:
                log.warning(
                    "resume: no checkpoint in %s (%s); starting from scratch at global step 0",
                    checkpoints.directory,
                    checkpoints.describe_empty(),
                )
        # rank 0 picks, so every rank loads the same file
        path = self.group.broadcast_object(found)
        if path is None:
            return
        self.load(path)
        if self.group.is_main:
            log.info("resume: loaded %s, continuing at global step %d", path, self.global_step())

    def log_hypergradient(self, record: HypergradientRecord) -> None:
        console = record.console and self.group.is_main
        if not console and not self.logger().records:
            return  # nothing would read the values: leave the norm on the device
        norm = record.norm
        values: dict[str, float] = {"norm": float(norm)}
        methods = []
        for i, info in enumerate(record.hops):
            values[f"hop{i}_iterations"] = float(info.iterations)
            if not math.isnan(info.residual):
                values[f"hop{i}_residual"] = float(info.residual)
            methods.append(info.method)
        if console:
            log.info(
                "[%s/hypergradient] [global step %d] methods: %s || %s",
                record.source,
                record.step,
                ",".join(methods),
                log_from_loss_dict(values),
            )
        source = f"{record.source}/hypergradient"
        self.logger().log(source, values, record.step)
        if self._described.get(record.source) != methods:
            self._described[record.source] = methods
            text = {f"hop{i}_method": m for i, m in enumerate(methods)}
            self.logger().describe(source, text, record.step)

    def log_decision(self, record: DecisionRecord) -> None:
        if not self.group.is_main:
            return
        decision = record.decision
        log.info(
            "[%s/auto] [global step %d] hop %s: %s",
            record.source,
            record.step,
            record.hop,
            decision.table().replace("\n", "\n    "),
        )
        source = f"{record.source}/auto/{record.hop}"
        self.logger().log(source, decision.scalars(), record.step)
        text = {"decision": decision.table(), "chosen": decision.chosen.label}
        self.logger().describe(source, text, record.step)


def remove_stale_temp_files(directory: str) -> None:
    """Delete the temporary files (``.*.tmp``) a save interrupted by a crash left behind.

    Only a resumed run calls it: a run writing checkpoints into ``directory`` at the same time
    would be another run of the same program, which resuming from that directory excludes.
    """
    for name in _checkpoint_files.stale_temp_files(directory):
        path = os.path.join(directory, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            log.info("resume: removed %s, left by an interrupted checkpoint save", path)


def _wants_progress(setting: bool | None) -> bool:
    """``EngineConfig.progress``: ``None`` means a bar when tqdm is there and stderr is a tty."""
    if setting is not None:
        return setting
    return importlib.util.find_spec("tqdm") is not None and sys.stderr.isatty()


def check_plateau_schedulers(config: EngineConfig, problems: Sequence[Problem]) -> None:
    """``ReduceLROnPlateau`` steps on validation metrics, so validation must run."""
    plateau = [p.name for p in problems if steps_on_metric(p.scheduler)]
    if plateau and config.valid_step <= 0:
        raise ValueError(
            f"problems {plateau} use ReduceLROnPlateau, which steps on a validation metric, "
            "but EngineConfig valid_step disables validation; set valid_step > 0"
        )


def check_early_stopping(cfg: EngineConfig, engine_class: str, validates: bool) -> None:
    """Early stopping reads validation results, so validation must run and return them.

    ``validates``: whether the engine class ``engine_class`` overrides ``Engine.validation``.
    """
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
            f"{cfg.early_stopping_metric!r}, but {engine_class} does not override "
            "validation(); define validation() returning a dict with that metric, or set "
            "early_stopping=False"
        )


def step_plateau_schedulers(
    config: EngineConfig, problems: Sequence[Problem], values: Mapping[str, float]
) -> None:
    """Step every ``ReduceLROnPlateau`` with the configured validation metric."""
    plateau = [p for p in problems if steps_on_metric(p.scheduler)]
    if not plateau:
        return
    metric = config.plateau_metric or config.early_stopping_metric
    if metric not in values:
        raise KeyError(
            f"ReduceLROnPlateau metric {metric!r} is not in the validation dict (keys "
            f"{sorted(values)}); return it from validation() or set EngineConfig plateau_metric"
        )
    for problem in plateau:
        problem.scheduler.step(values[metric])
