"""Catalogue of misuse around the program: launching data parallelism, the HPO front end
(``ziggurat.hpo.HyperModel``) and the command line (``ziggurat demo`` / ``check`` / ``bench``).

Each case asserts the exception type (or exit status) and the words of its message.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from ziggurat import Engine
from ziggurat.configs import EngineConfig
from ziggurat.hpo import HyperModel
from ziggurat.problems import ImplicitProblem

HERE = Path(__file__).parent
SRC = str(HERE.parent / "src")


class Fit(ImplicitProblem):
    def training_step(self, batch):
        return self.module(torch.ones(1, 2)).pow(2).sum()


def fit() -> Fit:
    module = nn.Linear(2, 1)
    return Fit(
        "fit",
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        train_data_loader=[0],
    )


# ------------------------------------------------------------------------ launching a world
@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "600", True])
def test_process_group_timeout_is_validated(value) -> None:
    with pytest.raises(
        ValueError, match=r"EngineConfig process_group_timeout must be a finite number > 0"
    ):
        EngineConfig(process_group_timeout=value)


@pytest.mark.parametrize("strategy", ["ddp", "zero", "fsdp"])
def test_data_parallelism_under_plain_python_names_torchrun(monkeypatch, strategy) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        ValueError,
        match=rf"strategy='{strategy}' runs one process per rank, started by a launcher, but "
        r"the environment lacks \['RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'\].*"
        r"`torchrun --nproc_per_node=N your_script\.py`",
    ):
        Engine([fit()], EngineConfig(strategy=strategy, logger_type="none"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ALONE = """
import time, torch
from torch import nn
from ziggurat import Engine
from ziggurat.configs import EngineConfig
from ziggurat.hpo import HyperModel
from ziggurat.problems import ImplicitProblem
class Fit(ImplicitProblem):
    def training_step(self, batch):
        return self.module(torch.ones(1, 2)).sum()
module = nn.Linear(2, 1)
fit = Fit("fit", module=module, optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
          train_data_loader=[0])
start = time.monotonic()
try:
    Engine([fit], EngineConfig(strategy="ddp", process_group_timeout=2, logger_type="none"))
except RuntimeError as error:
    print(f"after {time.monotonic() - start:.1f} s: {error}")
    raise SystemExit(3)
"""


def test_a_rank_whose_peer_never_starts_fails_within_the_timeout_with_a_message() -> None:
    """A world of two where only rank 0 starts: it stops after process_group_timeout=2 s
    (torch's rendezvous rounds up by a second) instead of torch's default 30 minutes."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", ALONE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr
    waited = float(done.stdout.split()[1])
    assert 2.0 <= waited < 6.0, done.stdout
    assert time.monotonic() - start < 60
    assert (
        f"strategy='ddp': rank 0 of 2 could not form the process group at 127.0.0.1:{port} "
        "within process_group_timeout=2 s" in done.stdout
    )
    assert "torchrun --nproc_per_node=N your_script.py" in done.stdout


# ---------------------------------------------------------------------------- the HPO front end
def _model() -> HyperModel:
    torch.manual_seed(0)

    def ridge(params, hyper):
        return hyper["decay"].exp() * sum(p.pow(2).sum() for p in params.values())

    return HyperModel(
        nn.Linear(3, 1).double(),
        hyper={"decay": torch.tensor(-2.0, dtype=torch.float64)},
        loss=nn.functional.mse_loss,
        regularizer=ridge,
    )


XY = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (
            lambda m: m.fit(XY, XY, outer_steps=1, inner_steps=1, progress=False, method="cg"),
            r"fit method must be a hypergradient method object such as "
            r"ziggurat.hypergradient.cg\(50, 1e-10\) \(from_name\('cg'\) builds one",
        ),
        (
            lambda m: m.hypergradient(XY, XY, method="cg"),
            r"hypergradient method must be a hypergradient method object",
        ),
        (
            lambda m: m.fit(XY, XY, progress=False, inner_optimizer=None),
            r"fit inner_optimizer must be callable \(tensors -> optimizer\), got None",
        ),
        (
            lambda m: m.fit(XY, XY, progress=False, inner_optimizer=lambda ps: "sgd"),
            r"fit inner_optimizer must return a torch.optim.Optimizer, got str",
        ),
        (
            lambda m: m.fit(
                XY,
                XY,
                progress=False,
                hyper_optimizer=lambda hs: torch.optim.SGD([torch.zeros(1, requires_grad=True)]),
            ),
            r"fit hyper_optimizer returned an optimizer over other tensors than HyperModel.hyper "
            r"\(it holds 1 tensor\(s\), 0 of the 1 given\)",
        ),
        (
            lambda m: m.fit(
                XY,
                XY,
                progress=False,
                inner_optimizer=lambda ps: torch.optim.SGD(list(ps)[:1], lr=0.1),
            ),
            r"fit inner_optimizer returned an optimizer over other tensors than the module's "
            r"\(it holds 1 tensor\(s\), 1 of the 2 given\)",
        ),
        (lambda m: m.fit(XY, XY, inner_steps=0), r"fit inner_steps must be an integer >= 1, got 0"),
        (lambda m: m.fit(XY, XY, progress="yes"), r"fit progress must be True, False or None"),
        (lambda m: m.fit(XY[0], XY), r"fit train must be a pair \(inputs, targets\) of tensors"),
        (
            lambda m: m.hypergradient(XY, (XY[0], XY[1][:5])),
            r"fit val inputs and targets must have the same number of rows, got 8 and 5",
        ),
    ],
    ids=[
        "method-string",
        "hypergradient-method-string",
        "no-inner-optimizer",
        "inner-not-optimizer",
        "hyper-optimizer-elsewhere",
        "inner-optimizer-subset",
        "inner-steps",
        "progress",
        "train-not-pair",
        "val-rows",
    ],
)
def test_hpo_misuse_is_refused_before_any_training(call, words) -> None:
    model = _model()
    before = {k: t.detach().clone() for k, t in model.module.state_dict().items()}
    with pytest.raises(ValueError, match=words):
        call(model)
    assert all(torch.equal(model.module.state_dict()[k], t) for k, t in before.items())
    assert float(model.hyper["decay"].detach()) == -2.0


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"hyper": {"d": torch.tensor(1)}}, r"HyperModel hyper\['d'\] must be a floating-point"),
        ({"loss": "mse"}, r"HyperModel loss must be callable, got 'mse'"),
        ({"regularizer": None}, r"HyperModel needs a regularizer or a transform \(or both\)"),
        ({"transform": 3}, r"HyperModel transform must be callable, got 3"),
    ],
    ids=["integer-hyper", "loss", "no-way-in", "transform"],
)
def test_hpo_models_that_cannot_work_are_refused_at_construction(kwargs, words) -> None:
    options = {
        "hyper": {"decay": torch.tensor(0.0)},
        "loss": nn.functional.mse_loss,
        "regularizer": lambda p, h: h["decay"],
        **kwargs,
    }
    with pytest.raises(ValueError, match=words):
        HyperModel(nn.Linear(3, 1), **options)


def test_a_module_without_trainable_parameters_is_refused_by_hpo() -> None:
    with pytest.raises(ValueError, match=r"HyperModel module has no trainable parameters"):
        HyperModel(
            nn.Linear(3, 1).requires_grad_(False),
            hyper={"decay": torch.tensor(0.0)},
            loss=nn.functional.mse_loss,
            regularizer=lambda p, h: h["decay"],
        )


# ------------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["demo", "bogus"], r"ziggurat demo: error: unknown example 'bogus'; choose one of rew"),
        (
            ["demo", "reweight", "--method", "bogus"],
            r"ziggurat demo: error: example 'reweight' has no method 'bogus'; choose one of cg",
        ),
        (["demo", "nas", "--imbalance", "3"], r"--imbalance applies only to the reweight exa"),
        (["demo", "reweight", "--shots", "5"], r"--shots applies only to the fewshot example"),
        (["demo", "--steps", "0"], r"argument --steps: expected a positive integer, got 0"),
        (["demo", "--imbalance", "0.5"], r"argument --imbalance: expected a number >= 1, got"),
        (["demo", "fewshot", "--shots", "3"], r"argument --shots: invalid choice: 3"),
        (["check", "--seed", "x"], r"ziggurat check: error: argument --seed: invalid int value"),
        (["frobnicate"], r"ziggurat: error: argument COMMAND: invalid choice: 'frobnicate'"),
    ],
    ids=[
        "unknown-example",
        "unknown-method",
        "imbalance",
        "shots",
        "steps",
        "ratio",
        "shots-choice",
        "seed",
        "command",
    ],
)
def test_cli_misuse_is_one_line_and_exit_status_two(argv, words, capsys) -> None:
    from ziggurat.cli import main

    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert re.search(words, err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_bench_outside_a_checkout_or_with_a_python_without_betty_is_refused(
    tmp_path, monkeypatch, capsys
) -> None:
    from ziggurat.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["bench"]) == 2
    assert "ziggurat bench: error: needs to run from the root of a source checkout" in (
        capsys.readouterr().err
    )
    monkeypatch.chdir(HERE.parent)
    assert main(["bench", "--betty", str(tmp_path / "no-python")]) == 2
    assert "is not an executable; pass the python of a virtual environment with betty" in (
        capsys.readouterr().err
    )
