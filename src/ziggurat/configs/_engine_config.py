"""Engine-wide options (Betty's ``EngineConfig``), validated where they enter."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .. import _checks
from ._fields import assign, check_flags

STRATEGIES = ("default", "cpu", "gpu", "ddp", "zero", "fsdp")
STRATEGY_ALIASES = {"distributed": "ddp"}
LOGGERS = ("none", "console", "tensorboard", "wandb", "mlflow")
BACKENDS = ("gloo", "nccl", "mpi", "ucc")
"""The ``torch.distributed`` backends; ``backend`` may also map devices to them
(``"cpu:gloo,cuda:nccl"``), as ``init_process_group`` accepts."""


@dataclass
class EngineConfig:
    """Options of the whole run.

    ``train_iters`` counts steps of the lowest problems (global steps). ``valid_step`` is the
    period of ``Engine.validation()`` in global steps; ``0`` or a negative value disables it.
    ``plateau_metric`` is the validation-dict key fed to ``ReduceLROnPlateau`` schedulers after
    each validation (default: ``early_stopping_metric``).
    ``logger_type``: ``"console"`` (the default) prints INFO lines at each problem's
    ``log_step`` and after each validation; ``"none"`` (Betty's name) does the same;
    ``"tensorboard"``, ``"wandb"`` and ``"mlflow"`` also write the scalars to that backend.
    The lines go to the ``ziggurat`` Python logger (to stderr unless the application set up
    logging; ``logging.getLogger("ziggurat").setLevel(logging.WARNING)`` silences them, and
    ``Config(log_step=0)`` stops a problem's). ``progress``: ``True`` draws a
    tqdm bar (step, rate, latest losses), ``False`` does not, ``None`` (the default) draws it
    when tqdm is installed and stderr is a terminal.
    ``check_finite`` (a ziggurat option, default ``True``): every update first checks that the
    window's losses, gradients and hypergradients are finite and its solves converged, and
    raises before any parameter or optimizer state changes; on a GPU that is one host sync per
    update. ``False`` skips the checks (no sync; a NaN then shows at the next logging step).
    ``checkpoint_step=N`` writes ``checkpoint_dir/step-<global step>.pt`` every ``N`` iterations;
    ``resume=True`` continues from the highest step there (the console says what it loaded, or
    why it found nothing); ``keep_last=K`` deletes all but the ``K`` newest ``step-*.pt`` files
    after each save (``None`` keeps all). A run that writes to ``checkpoint_dir`` creates it and
    holds a lock file in it from its start, so a second run writing there is refused.
    ``process_group_timeout`` (seconds, default 600, torch's default for NCCL): how long a rank
    waits for the others when the engine creates the process group (a rank that never started
    is an error naming torchrun after this long, not a silent 30-minute hang) and in every
    collective after it; other ranks wait for rank 0's validation at a collective, so raise it
    above the longest validation.
    Legacy keywords: ``distributed=True`` means ``strategy="ddp"``.
    """

    train_iters: int = 50000
    valid_step: int = 500
    logger_type: str = "console"
    log_dir: str = "runs"
    run_name: str | None = None
    roll_back: bool = False
    strategy: str = "default"
    backend: str | None = None
    early_stopping: bool = False
    early_stopping_mode: str = "min"
    early_stopping_tolerance: int = 5
    early_stopping_metric: str = "loss"
    plateau_metric: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_step: int = 0
    resume: bool = False
    progress: bool | None = None
    check_finite: bool = True
    process_group_timeout: float = 600.0
    keep_last: int | None = None

    def __init__(self, **kwargs: Any) -> None:
        if "distributed" in kwargs:
            distributed = kwargs.pop("distributed")
            _checks.boolean("EngineConfig distributed", distributed)
            if distributed:
                kwargs.setdefault("strategy", "ddp")
        for key in ("log_dir", "checkpoint_dir"):  # a pathlib.Path is a path too
            if isinstance(kwargs.get(key), os.PathLike):
                kwargs[key] = os.fspath(kwargs[key])
        assign(self, kwargs)
        self.strategy = STRATEGY_ALIASES.get(self.strategy, self.strategy)
        self.validate()

    def validate(self) -> None:
        if self.strategy == "accelerate":
            raise ValueError(
                "EngineConfig strategy='accelerate' is not supported (in Betty 0.2.1 it raised "
                "AttributeError before training): launch with torchrun and use strategy='ddp', "
                "'zero' or 'fsdp'; mixed precision is Config(precision='bf16' or 'fp16')"
            )
        check_flags(self)
        _checks.text("EngineConfig log_dir", self.log_dir)
        _checks.text("EngineConfig early_stopping_metric", self.early_stopping_metric)
        for key in ("run_name", "plateau_metric", "checkpoint_dir"):
            _checks.text(f"EngineConfig {key}", getattr(self, key), optional=True)
        _check_backend(self.backend)
        _checks.int_at_least("EngineConfig train_iters", self.train_iters, 0)
        if isinstance(self.valid_step, bool) or not isinstance(self.valid_step, int):
            raise ValueError(f"EngineConfig valid_step must be an integer, got {self.valid_step!r}")
        _checks.one_of("EngineConfig logger_type", self.logger_type, LOGGERS)
        _checks.one_of("EngineConfig strategy", self.strategy, STRATEGIES)
        _checks.one_of("EngineConfig early_stopping_mode", self.early_stopping_mode, ("min", "max"))
        _checks.int_at_least(
            "EngineConfig early_stopping_tolerance", self.early_stopping_tolerance, 1
        )
        _checks.int_at_least("EngineConfig checkpoint_step", self.checkpoint_step, 0)
        _checks.positive("EngineConfig process_group_timeout", self.process_group_timeout)
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ValueError(
                f"EngineConfig progress must be True, False or None, got {self.progress!r}"
            )
        if self.checkpoint_step > 0 and not self.checkpoint_dir:
            raise ValueError(
                f"EngineConfig checkpoint_step={self.checkpoint_step} needs checkpoint_dir (where "
                "to write the checkpoints)"
            )
        if self.resume and not self.checkpoint_dir:
            raise ValueError(
                "EngineConfig resume=True needs checkpoint_dir (where to look for the latest "
                "checkpoint)"
            )
        if self.keep_last is not None:
            _checks.int_at_least("EngineConfig keep_last", self.keep_last, 1)
            if self.checkpoint_step <= 0:
                raise ValueError(
                    f"EngineConfig keep_last={self.keep_last} prunes periodic checkpoints, but "
                    "checkpoint_step=0 writes none; set checkpoint_step > 0 (and "
                    "checkpoint_dir), or leave keep_last=None"
                )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _check_backend(backend: object) -> None:
    if backend is None:
        return
    parts = backend.split(",") if isinstance(backend, str) else [None]
    names = [p.split(":")[-1].strip() if isinstance(p, str) else p for p in parts]
    if not all(n in BACKENDS for n in names):
        raise ValueError(
            f"EngineConfig backend must be None (the default for the device) or a "
            f"torch.distributed backend {list(BACKENDS)} (or 'cpu:gloo,cuda:nccl'), "
            f"got {backend!r}"
        )
