"""The worked examples beat their baselines at a short size; ``ziggurat demo`` end to end."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ziggurat.examples import hpo, load, maml, nas, reweight, three_level
from ziggurat.examples.data import digits, read_idx, symmetric_noise

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_read_idx_round_trip(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2, 3, 4) + data.tobytes())
    np.testing.assert_array_equal(read_idx(path), data)


def test_symmetric_noise_always_changes_the_label() -> None:
    y = np.arange(1000) % 10
    noisy, flip = symmetric_noise(y, 0.4, 10, seed=0)
    assert 0.35 < flip.mean() < 0.45
    assert (noisy[flip] != y[flip]).all() and (noisy[~flip] == y[~flip]).all()


def test_hpo_lowers_validation_loss_below_the_grid_search() -> None:
    result = hpo.run(steps=15, progress=False)
    row = result.row("validation loss")
    assert row.gain > 0.01, str(result)
    assert result.row("test accuracy").ours > 0.93


def test_meta_weight_net_beats_plain_training_under_label_noise() -> None:
    result = reweight.run(steps=400, progress=False, images=digits(0))
    assert result.row("clean test accuracy").gain > 0.02, str(result)
    assert result.extra["weight_marked"] < result.extra["weight_other"] - 0.1


def test_maml_beats_random_init_and_joint_pretraining() -> None:
    result = maml.run(steps=300, progress=False)
    assert result.row("meta-test MSE vs random init").gain > 0.5, str(result)
    assert result.row("meta-test MSE vs joint pretraining").gain > 0.3, str(result)


@pytest.mark.slow
def test_imaml_beats_random_init() -> None:
    result = maml.run(steps=300, method="imaml", progress=False)
    assert result.row("meta-test MSE vs random init").gain > 0.1, str(result)


def test_learning_by_ignoring_beats_uniform_pretraining() -> None:
    result = three_level.run(steps=200, progress=False)
    assert result.row("target test accuracy").gain > 0.05, str(result)
    assert result.extra["weight_marked"] < result.extra["weight_other"] - 0.2


def test_derived_cell_never_keeps_zero() -> None:
    alpha = torch.zeros(3, len(nas.OPS))
    alpha[:, nas.OPS.index("zero")] = 5.0  # zero is the strongest everywhere
    alpha[0, nas.OPS.index("skip")] = 1.0
    alpha[1, nas.OPS.index("conv_3x3")] = 2.0
    alpha[2, nas.OPS.index("avg_pool_3x3")] = 0.5
    assert nas.derive(alpha) == ["skip", "conv_3x3", "avg_pool_3x3"]
    gen = torch.Generator().manual_seed(0)
    assert all("zero" not in nas.random_cell(gen) for _ in range(50))


def test_darts_search_beats_random_cells() -> None:
    result = nas.run(steps=150, progress=False, images=digits(0))
    assert result.row("test accuracy vs random cells (mean)").gain > 0.03, str(result)
    assert result.extra["conv_edges"] >= 2, str(result)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["first_order", "darts_xi"])
def test_other_darts_rules_beat_random_cells(method: str) -> None:
    result = nas.run(steps=150, method=method, progress=False, images=digits(0))
    assert result.row("test accuracy vs random cells (mean)").gain > 0.03, str(result)


def test_unknown_example_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="choose one of reweight"):
        load("nope")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "ZIGGURAT_FASHION_MNIST": ""}
    return subprocess.run(
        [sys.executable, "-m", "ziggurat.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_demo_reweight_prints_its_table() -> None:
    proc = _cli("demo", "reweight", "--steps", "20", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "clean test accuracy" in proc.stdout and "baseline" in proc.stdout
    assert "using sklearn digits" in proc.stdout  # the fall-back is announced


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("demo", "nope"), "choose one of reweight"),
        (("demo", "hpo", "--method", "x"), "choose one of cg"),
        (("demo", "nas", "--method", "cg"), "choose one of darts"),
        (("demo", "--steps", "0"), "positive integer"),
    ],
)
def test_demo_bad_input_is_one_line(args: tuple[str, ...], needle: str) -> None:
    proc = _cli(*args)
    assert proc.returncode != 0
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    # the error is one line (argparse's own errors come after its usage summary)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ziggurat demo: error:") and needle in last
