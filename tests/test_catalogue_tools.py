"""Catalogue of misuse around the program: launching data parallelism, the HPO front end
(``ziggurat.hpo.HyperModel``) and the command line (``ziggurat demo`` / ``check``).

Each case asserts the exception type (or exit status) and the words of its message.
"""

from __future__ import annotations

import os
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
