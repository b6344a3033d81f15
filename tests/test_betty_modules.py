"""Modules Betty programs import: ``logging``, ``utils``, ``hypergradient.jvp_fn_mapping``,
and ``problems.HigherIterativeProblem`` (``IterativeProblem`` under Betty's name)."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from torch import nn

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem


def scalars(directory) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


# ---------------------------------------------------------------- logging
def test_get_logger_and_console_methods(caplog) -> None:
    from ziggurat.logging import LoggerBase, get_logger, logger

    assert get_logger() is logging.getLogger("ziggurat")
    quiet = logger("none")
    assert type(quiet) is LoggerBase
    quiet.log({"loss": 1.0}, tag="p", step=1)  # records nothing, and does not fail
    with caplog.at_level(logging.INFO, logger="ziggurat"):
        quiet.info("hello %d", 3)
        quiet.warning("careful")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "hello 3"),
        ("WARNING", "careful"),
    ]
    with pytest.raises(ValueError, match=r"unknown logger_type 'csv'"):
        logger("csv")


def test_tensorboard_logger_expands_lists_and_tensors(tmp_path, monkeypatch) -> None:
    pytest.importorskip("tensorboard", reason="install ziggurat[tensorboard]")
    from ziggurat.logging import TensorBoardLogger, logger

    monkeypatch.chdir(tmp_path)
    default = logger("tensorboard")  # Betty's default location, under ./runs
    assert isinstance(default, TensorBoardLogger)
    default.close()
    board = TensorBoardLogger(log_dir=str(tmp_path / "tb"))
    board.log({"loss": torch.tensor(0.5), "acc": [0.25, torch.tensor(0.75)]}, tag="p", step=3)
    board.log({"plain": 2.0}, step=4)
    board.close()
    assert scalars(tmp_path / "tb") == {
        "p/loss": [(3, 0.5)],
        "p/acc_0": [(3, 0.25)],
        "p/acc_1": [(3, 0.75)],
        "plain": [(4, 2.0)],
    }
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_a_missing_backend_raises_instead_of_falling_back(monkeypatch) -> None:
    from ziggurat.logging import logger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"ziggurat\[tensorboard\]"):
        logger("tensorboard")


class Learner(ImplicitProblem):
    def training_step(self, batch):
        self.logger.info("step %d", self.count)
        return self.module(torch.ones(1, 1)).pow(2).sum()


def test_engine_and_problem_loggers_write_the_runs_console_and_backend(tmp_path, caplog) -> None:
    pytest.importorskip("tensorboard", reason="install ziggurat[tensorboard]")

    class Logs(Engine):
        def validation(self):
            self.logger.log({"custom": [1.0, 2.0]}, tag="extra")
            self.logger.log({"at": 5.0}, tag="extra", step=100)
            return {"acc": 0.5}

    module = nn.Linear(1, 1)
    learner = Learner(
        "learner", module=module, optimizer=torch.optim.SGD(module.parameters(), lr=0.1)
    )
    learner.train_data_loader = [0]
    config = EngineConfig(
        train_iters=2, valid_step=2, logger_type="tensorboard", log_dir=str(tmp_path), run_name="r"
    )
    with caplog.at_level(logging.INFO, logger="ziggurat"):
        Logs([learner], config).run()
    messages = [r.getMessage() for r in caplog.records]
    assert "step 1" in messages and "step 2" in messages
    assert "[extra] [global step 2] custom_0: 1 || custom_1: 2" in messages
    got = scalars(tmp_path / "r")
    assert got["extra/custom_1"] == [(2, 2.0)] and got["extra/at"] == [(100, 5.0)]
    assert got["validation/acc"] == [(2, 0.5)]


# ---------------------------------------------------------------- utils
def test_utils_helpers() -> None:
    from ziggurat.utils import log_from_loss_dict, neg_with_none, to_vec

    text = log_from_loss_dict({"loss": 0.5, "acc": [1, 2], "t": torch.tensor([1.0, 3.0])})
    assert text == "loss: 0.5 || acc_0: 1 || acc_1: 2 || t: 2"
    vec = to_vec([torch.ones(2, 2), torch.arange(3.0)], alpha=2.0)
    assert torch.equal(vec, torch.tensor([2.0, 2, 2, 2, 0, 2, 4]))
    a = torch.ones(2)
    neg = neg_with_none([a, None])
    assert neg[1] is None and torch.equal(neg[0], -a)


# ---------------------------------------------------------------- hypergradient table
def test_jvp_fn_mapping_maps_config_types_to_presets_and_refuses_insertions() -> None:
    from ziggurat.configs._problem_config import METHOD_TYPES
    from ziggurat.hypergradient import cg, darts, jvp_fn_mapping

    assert tuple(jvp_fn_mapping) == METHOD_TYPES
    assert jvp_fn_mapping["cg"] is cg and jvp_fn_mapping["darts"] is darts
    assert jvp_fn_mapping["cg"](5) == Config(type="cg", cg_iterations=5).method()
    with pytest.raises(KeyError, match=r"'reinforce' is not a Config\(type=...\) method"):
        jvp_fn_mapping["reinforce"]
    with pytest.raises(TypeError, match=r"read-only.*Config\(hypergradient=method\)"):
        jvp_fn_mapping["mine"] = lambda vector, curr, prev, sync: vector  # type: ignore[index]


# ---------------------------------------------------------------- HigherIterativeProblem
def test_higher_iterative_problem_is_an_iterative_problem() -> None:
    """Betty's name for an unrolled level whose loss calls ``self.module(x)``; its results
    are in ``test_unrolled_module_calls.py``."""
    from ziggurat.problems import HigherIterativeProblem, IterativeProblem

    class Child(HigherIterativeProblem):
        def training_step(self, batch):
            return self.module(batch).sum()

    module = nn.Linear(1, 1)
    child = Child(name="inner", module=module, optimizer=torch.optim.SGD(module.parameters(), 0.1))
    assert isinstance(child, IterativeProblem) and not child.params_live_in_module
