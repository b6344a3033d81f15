"""Schedulers, early stopping and logging backends through Engine.run."""

from __future__ import annotations

import glob
import json
import logging
import re
import sqlite3
import struct
import sys

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as S

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem


class Batches:
    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)


class Lower(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        reg = torch.exp(self.upper.module.weight).sum() * self.module.weight.pow(2).sum()
        return {
            "loss": (self.module(x) - y).pow(2).mean() + reg,
            "abs_w": self.module.weight.abs().sum(),
        }


class Upper(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return (self.lower.module(x) - y).pow(2).mean()


def program(
    scheduler=None, train_iters=8, series=None, lower_config=None, upper_config=None, **options
):
    """Lower: ridge regression; upper: its log-decay. ``series`` feeds validation values."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    low, up = nn.Linear(3, 1), nn.Linear(1, 1, bias=False)
    nn.init.constant_(up.weight, -2.0)
    opt = torch.optim.SGD(low.parameters(), lr=0.1)
    sched = scheduler(opt) if scheduler else None
    lower = Lower(
        "lower",
        lower_config or Config(type="cg", cg_iterations=2),
        module=low,
        optimizer=opt,
        scheduler=sched,
        train_data_loader=Batches([(x[:4], y[:4])]),
    )
    upper = Upper(
        "upper",
        upper_config,
        module=up,
        optimizer=torch.optim.SGD(up.parameters(), lr=0.1),
        train_data_loader=Batches([(x[4:], y[4:])]),
    )
    values = iter(series or [])

    class E(Engine):
        def validation(self):
            return next(values, None) if series is not None else None

    config = EngineConfig(train_iters=train_iters, **{"valid_step": 0, **options})
    deps = {"u2l": {upper: [lower]}, "l2u": {lower: [upper]}}
    return E([upper, lower], config, deps), opt, sched


STEPPED = {
    "StepLR": lambda o: S.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[2, 5], gamma=0.5),
    "LambdaLR": lambda o: S.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda e: 0.9),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.8),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=10),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.2, total_iters=5),
    "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=4),
    "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=10, power=2.0),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.5, total_steps=8),
    "CyclicLR": lambda o: S.CyclicLR(o, 0.01, 0.2, step_size_up=2, cycle_momentum=False),
    "SequentialLR": lambda o: S.SequentialLR(
        o, [S.LinearLR(o, 0.5, total_iters=2), S.ExponentialLR(o, 0.7)], milestones=[3]
    ),
    "ChainedScheduler": lambda o: S.ChainedScheduler(
        [S.ExponentialLR(o, 0.9), S.StepLR(o, 3, 0.5)]
    ),
}


@pytest.mark.parametrize("name", sorted(STEPPED))
def test_schedulers_step_once_per_update_on_the_users_optimizer(name):
    engine, opt, sched = program(STEPPED[name])
    group = opt.param_groups[0]
    engine.run()
    assert engine.lower.optimizer is opt and engine.lower.scheduler is sched
    assert opt.param_groups[0] is group
    twin = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    twin_sched = STEPPED[name](twin)
    for _ in range(engine.lower.count):
        twin.step()
        twin_sched.step()
    assert engine.lower.count == 8
    assert opt.param_groups[0]["lr"] == pytest.approx(twin.param_groups[0]["lr"], rel=1e-12)


def test_with_gradient_accumulation_schedulers_count_updates_not_local_steps():
    """A documented difference from Betty, which steps the scheduler after every local step."""
    config = Config(type="cg", cg_iterations=2, gradient_accumulation=2)
    engine, opt, _ = program(lambda o: S.StepLR(o, step_size=1, gamma=0.5), lower_config=config)
    engine.run()
    assert engine.lower.count == 8
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)  # 4 updates


def plateau(o):
    return S.ReduceLROnPlateau(o, mode="min", factor=0.5, patience=1)


def test_reduce_on_plateau_reacts_to_the_validation_metric():
    flat = [{"loss": 1.0, "acc": 0.5}] * 5
    engine, opt, sched = program(plateau, train_iters=10, series=flat, valid_step=2)
    engine.run()
    assert engine.lower.scheduler is sched
    # best at the 1st validation; the 3rd and 5th exceed patience 1: two halvings
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)

    falling = [{"loss": 1.0 - 0.1 * i, "acc": 0.0} for i in range(5)]
    engine, opt, _ = program(plateau, train_iters=10, series=falling, valid_step=2)
    engine.run()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)

    rising_acc = [{"loss": 1.0, "acc": 0.1 * i} for i in range(5)]
    engine, opt, _ = program(
        lambda o: S.ReduceLROnPlateau(o, mode="max", factor=0.5, patience=1),
        train_iters=10,
        series=rising_acc,
        valid_step=2,
        plateau_metric="acc",
    )
    engine.run()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_reduce_on_plateau_needs_validation_and_its_metric():
    engine, _, _ = program(plateau, train_iters=4)
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        engine.run()
    engine, _, _ = program(plateau, train_iters=4, series=[{"acc": 1.0}], valid_step=2)
    with pytest.raises(KeyError, match="'loss' is not in the validation dict"):
        engine.run()


@pytest.mark.parametrize("mode", ["min", "max"])
def test_early_stopping_stops_at_the_expected_validation(mode):
    raw = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 2.0, 1.0]
    sign = 1.0 if mode == "min" else -1.0
    series = [{"metric": sign * v} for v in raw]
    engine, _, _ = program(
        train_iters=100,
        series=series,
        valid_step=3,
        early_stopping=True,
        early_stopping_mode=mode,
        early_stopping_metric="metric",
        early_stopping_tolerance=2,
    )
    engine.run()
    # best is the 3rd validation; two more without improvement stop after the 5th
    assert engine.stopped_early and len(engine.validation_history) == 5
    assert engine.global_step == 15


def test_early_stopping_missing_metric_is_a_clear_error():
    engine, _, _ = program(
        train_iters=10,
        series=[{"loss": 1.0}],
        valid_step=2,
        early_stopping=True,
        early_stopping_metric="acc",
    )
    with pytest.raises(KeyError, match="'acc' is not in the validation dict"):
        engine.run()


# ---------------------------------------------------------------------- logging
SERIES = [{"acc": 0.25}, {"acc": 0.5}]


def test_console_lines_and_progress_bar(caplog, capsys):
    caplog.set_level(logging.INFO, logger="ziggurat")
    engine, _, _ = program(
        train_iters=4,
        series=SERIES,
        valid_step=2,
        progress=True,
        lower_config=Config(type="cg", cg_iterations=2, log_step=2),
    )
    engine.run()
    lines = [r.getMessage() for r in caplog.records if r.name == "ziggurat"]
    assert any(m.startswith("[lower] [global step 2] loss:") and "abs_w" in m for m in lines)
    assert any(m.startswith("[validation] [global step 4] acc: 0.5") for m in lines)
    err = capsys.readouterr().err
    assert "4/4" in err and "lower=" in err and "upper=" in err


def test_defaults_print_console_lines_without_a_bar_off_a_terminal(caplog, capsys):
    """By default the console logger is on (a stderr handler on the ``ziggurat`` logger at
    INFO) and the bar is drawn only on a terminal; ``logger_type="none"`` adds nothing."""
    import ziggurat.logging._backends as backends

    caplog.set_level(logging.INFO, logger="ziggurat")
    handlers = list(backends.log.handlers)
    backends.log.handlers.clear()
    try:
        engine, _, _ = program(train_iters=4, series=SERIES, valid_step=2)
        assert engine.config.logger_type == "console" and engine.config.progress is None
        engine.run()
        added = [h for h in backends.log.handlers if isinstance(h, logging.StreamHandler)]
        assert len(added) == 1
    finally:
        backends.log.handlers[:] = handlers
    lines = [r.getMessage() for r in caplog.records if r.name == "ziggurat"]
    assert any(m.startswith("[validation] [global step 4] acc: 0.5") for m in lines)
    assert "4/4" not in capsys.readouterr().err  # stderr is not a terminal under pytest
    with pytest.raises(ValueError, match="checkpoint_step=3 needs checkpoint_dir"):
        EngineConfig(checkpoint_step=3)
    with pytest.raises(ValueError, match="progress must be True, False or None"):
        EngineConfig(progress=1)


NUMBER = r"-?[0-9.]+(e[-+][0-9]+)?"


@pytest.mark.parametrize("logger_type", ["none", "console"])
def test_none_and_console_print_the_step_lines_on_stderr(logger_type, capsys):
    """As in Betty, ``logger_type="none"`` prints each problem's loss lines at its
    ``log_step`` (and records nothing else); the hypergradient line is formatted as they are,
    ``key: value || ...`` with 6 significant digits."""
    import ziggurat.logging._backends as backends

    handlers, level = list(backends.log.handlers), backends.log.level
    backends.log.handlers.clear()  # as in a fresh process
    backends.log.setLevel(logging.NOTSET)
    try:
        engine, _, _ = program(
            train_iters=2,
            logger_type=logger_type,
            progress=False,
            lower_config=Config(type="cg", cg_iterations=2, log_step=1),
            upper_config=Config(log_step=1),
        )
        engine.run()
    finally:
        backends.log.handlers[:] = handlers
        backends.log.setLevel(level)
    lines = [line.split(" [INFO] ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    expected = []
    for step in (1, 2):
        expected += [
            rf"\[lower\] \[global step {step}\] loss: {NUMBER} \|\| abs_w: {NUMBER}",
            rf"\[upper\] \[global step {step}\] loss: {NUMBER}",
            rf"\[upper/hypergradient\] \[global step {step}\] methods: cg \|\| "
            rf"norm: {NUMBER} \|\| hop0_iterations: 2 \|\| hop0_residual: {NUMBER}",
        ]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), line
    norm = float(re.search(rf"norm: ({NUMBER})", lines[-1])[1])
    assert norm == float(f"{engine.upper.last_hypergradient_norm:.6g}") and norm > 0


def logged_program(tmp_path, logger_type, **extra):
    return program(
        train_iters=4,
        series=SERIES,
        valid_step=2,
        logger_type=logger_type,
        log_dir=str(tmp_path),
        run_name="run1",
        lower_config=Config(type="cg", cg_iterations=2, log_step=1),
        **extra,
    )[0]


def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="install ziggurat[tensorboard]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    engine = logged_program(tmp_path, "tensorboard")
    engine.run()
    engine.logger.log({"acc": 0.75}, tag="test")  # after the run: the backend opens again
    assert engine._run._logger is not None
    engine.cleanup()  # ... and is closed (flushed) here, or at exit
    assert engine._run._logger is None
    acc = EventAccumulator(str(tmp_path / "run1"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert [e.value for e in acc.Scalars("validation/acc")] == [0.25, 0.5]
    assert [(e.step, e.value) for e in acc.Scalars("test/acc")] == [(4, 0.75)]
    assert [e.step for e in acc.Scalars("lower/loss")] == [1, 2, 3, 4]
    assert acc.Scalars("lower/loss")[-1].value == pytest.approx(engine.lower.last_loss)
    assert [e.value for e in acc.Scalars("upper/hypergradient/hop0_iterations")] == [2.0] * 4
    assert "upper/hypergradient/hop0_residual" in tags
    norm = acc.Scalars("upper/hypergradient/norm")[-1].value
    assert norm == pytest.approx(engine.upper.last_hypergradient_norm, rel=1e-6) and norm > 0
    texts = acc.Tags()["tensors"]
    method = acc.Tensors("upper/hypergradient/hop0_method/text_summary")
    assert [(e.step, e.tensor_proto.string_val[0]) for e in method] == [(1, b"cg")]
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| problems/lower/cg_iterations | 2 |" in config and "config/text_summary" in texts


def wandb_history(path: str) -> tuple[list[dict], str | None, dict]:
    """History rows of an offline ``.wandb`` file (LevelDB-style log of protobuf records), the
    type of its last record (``"exit"`` once the run is complete) and the run's config."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    pos, buf, rows, last, config = 7, b"", [], None, {}
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:
            pos += left
            continue
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            last = record.WhichOneof("record_type")
            if last in ("config", "run"):  # the run record holds the config at init
                updates = record.config.update if last == "config" else record.run.config.update
                for i in updates:
                    config[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
            if last == "history":
                items = record.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
    return rows, last, config


def test_wandb_offline_run_read_back(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="install ziggurat[wandb]")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    engine = logged_program(tmp_path, "wandb")
    engine.run()
    # run.finish() may return before the service process has flushed the offline file;
    # teardown waits for it (as the exit hook does at the end of a script)
    wandb.teardown()
    runs = glob.glob(str(tmp_path / "run1" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    rows, last, config = wandb_history(runs[0])
    assert last == "exit"
    assert config["upper/hypergradient/hop0_method"] == "cg"
    assert config["problems"]["lower"]["cg_iterations"] == 2
    acc = [(r["validation/acc"], r["global_step"]) for r in rows if "validation/acc" in r]
    assert acc == [(0.25, 2), (0.5, 4)]
    losses = [r["lower/loss"] for r in rows if "lower/loss" in r]
    assert len(losses) == 4 and losses[-1] == pytest.approx(engine.lower.last_loss)
    norms = [r["upper/hypergradient/norm"] for r in rows if "upper/hypergradient/norm" in r]
    assert norms[-1] == pytest.approx(engine.upper.last_hypergradient_norm) and len(norms) == 4


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_mlflow_rows_in_sqlite(tmp_path):
    pytest.importorskip("mlflow", reason="install ziggurat[mlflow]")
    engine = logged_program(tmp_path, "mlflow")
    engine.run()
    db = sqlite3.connect(tmp_path / "mlflow.db")
    rows = db.execute("SELECT key, value, step FROM metrics ORDER BY key, step").fetchall()
    acc = [(v, s) for k, v, s in rows if k == "validation/acc"]
    assert acc == [(0.25, 2), (0.5, 4)]
    losses = [v for k, v, s in rows if k == "lower/loss"]
    assert len(losses) == 4 and losses[-1] == pytest.approx(engine.lower.last_loss)
    names = {r[0] for r in db.execute("SELECT name FROM runs")}
    assert names == {"run1"}
    tags = dict(db.execute("SELECT key, value FROM tags").fetchall())
    assert tags["upper/hypergradient/hop0_method"] == "cg"
    params = dict(db.execute("SELECT key, value FROM params").fetchall())
    assert params["problems/lower/cg_iterations"] == "2" and params["train_iters"] == "4"


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_mlflow_params_are_the_flattened_options(tmp_path):
    pytest.importorskip("mlflow", reason="install ziggurat[mlflow]")
    from ziggurat.logging._backends import MlflowLogger

    config = {"engine": {f"k{i}": i for i in range(150)}, "problems": {"a": {"x": 1.5}}}
    # sent in batches of 100, the most a tracking server accepts in one request
    logger = MlflowLogger(str(tmp_path), "big", config)
    logger.close()
    db = sqlite3.connect(tmp_path / "mlflow.db")
    params = dict(db.execute("SELECT key, value FROM params").fetchall())
    assert len(params) == 151 and params["engine/k149"] == "149"
    assert params["problems/a/x"] == "1.5"


@pytest.mark.parametrize("backend", ["tensorboard", "wandb", "mlflow"])
def test_missing_backend_names_the_extra(tmp_path, monkeypatch, backend):
    module = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
    monkeypatch.setitem(sys.modules, module[backend], None)
    if backend == "mlflow":
        monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
        monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    engine = logged_program(tmp_path, backend)
    with pytest.raises(ImportError, match=rf"ziggurat\[{backend}\]"):
        engine.run()


def test_hypergradient_values_are_built_only_when_something_reads_them(monkeypatch):
    from ziggurat.logging import MetricLogger

    class Recording(MetricLogger):
        def __init__(self) -> None:
            self.rows: list[tuple[str, dict, int]] = []

        def log(self, source, values, step):
            self.rows.append((source, dict(values), step))

    assert not MetricLogger().records and Recording().records
    engine, _, _ = program(train_iters=3)
    engine.run()  # logger "none", no log_step: the norm stays a tensor until read
    assert isinstance(engine.upper._hypergradient_norm, torch.Tensor)
    assert engine.upper.last_hypergradient_norm > 0
    recording = Recording()
    engine, _, _ = program(train_iters=3)
    monkeypatch.setattr(engine._run, "_logger", recording)
    monkeypatch.setattr(engine._run, "logger", lambda: recording)
    engine.run()
    norms = [v["norm"] for s, v, _ in recording.rows if s == "upper/hypergradient"]
    assert len(norms) == 3 and norms[-1] == engine.upper.last_hypergradient_norm
