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

from ziggurat.datasets import digits, fashion_mnist_dir, read_idx
from ziggurat.examples import fewshot, hpo, load, maml, nas, reweight, three_level, transformer
from ziggurat.examples.data import rotated_classes, symmetric_noise

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


def test_imaml_short_run_beats_random_init() -> None:
    """The short version CI runs (100 meta-steps; measured gain 0.17 of an MSE of 4.14)."""
    result = maml.run(steps=100, method="imaml", progress=False)
    assert result.row("meta-test MSE vs random init").gain > 0.1, str(result)


@pytest.mark.slow
def test_imaml_beats_random_init() -> None:
    result = maml.run(steps=300, method="imaml", progress=False)
    assert result.row("meta-test MSE vs random init").gain > 0.1, str(result)


def test_rotated_classes_are_quarter_turns_of_shared_images() -> None:
    x = np.arange(6 * 9, dtype=np.float32).reshape(6, 9)
    y = np.array([0, 0, 1, 1, 2, 2])
    pool = rotated_classes(x, y, (2, 0), per_class=2, seed=0)
    assert pool.shape == (8, 2, 9)
    first = pool[0].reshape(2, 3, 3)
    assert {tuple(r) for r in pool[0]} == {tuple(x[4]), tuple(x[5])}  # base 2 comes first
    for r in range(4):
        np.testing.assert_array_equal(pool[r].reshape(2, 3, 3), np.rot90(first, r, axes=(1, 2)))
    assert {tuple(r) for r in pool[4]} == {tuple(x[0]), tuple(x[1])}


def test_fewshot_pools_share_no_image_and_tasks_are_balanced() -> None:
    train, test = fewshot.class_pools(digits(0), seed=0)
    assert train.shape[0] == 4 * len(fewshot.TRAIN_BASES) and test.shape[0] == 12
    seen = {tuple(row.tolist()) for row in train.reshape(-1, train.shape[-1])}
    assert not seen & {tuple(row.tolist()) for row in test.reshape(-1, test.shape[-1])}
    tasks = fewshot.Tasks(test, shots=5, seed=0)
    tasks.new_task()
    (xs, ys), (xq, yq) = tasks.support, tasks.query
    assert xs.shape == (25, 64) and xq.shape == (5 * fewshot.QUERY, 64)
    assert (ys.bincount() == 5).all() and (yq.bincount() == fewshot.QUERY).all()
    assert not {tuple(r.tolist()) for r in xs} & {tuple(r.tolist()) for r in xq}


@pytest.mark.parametrize(
    ("shots", "random_margin", "joint_margin"), [(5, 0.25, 0.15), (1, 0.15, 0.08)]
)
def test_fewshot_maml_beats_random_init_and_joint_pretraining(
    shots: int, random_margin: float, joint_margin: float
) -> None:
    result = fewshot.run(steps=500, shots=shots, progress=False, images=digits(0))
    assert result.row("meta-test accuracy vs random init").gain > random_margin, str(result)
    assert result.row("meta-test accuracy vs joint pretraining").gain > joint_margin, str(result)


def test_fewshot_imaml_beats_random_init_and_joint_pretraining_at_five_shots() -> None:
    result = fewshot.run(steps=500, method="imaml", progress=False, images=digits(0))
    assert result.row("meta-test accuracy vs random init").gain > 0.1, str(result)
    assert result.row("meta-test accuracy vs joint pretraining").gain > 0.03, str(result)


@pytest.mark.slow
def test_fewshot_imaml_one_shot_beats_random_init() -> None:
    result = fewshot.run(steps=500, method="imaml", shots=1, progress=False, images=digits(0))
    assert result.row("meta-test accuracy vs random init").gain > 0.04, str(result)


@pytest.mark.slow
@pytest.mark.skipif(fashion_mnist_dir() is None, reason="needs Fashion-MNIST")
def test_fewshot_maml_five_shot_beats_joint_pretraining_on_fashion_mnist() -> None:
    result = fewshot.run(steps=2000, progress=False)
    assert result.row("meta-test accuracy vs joint pretraining").gain > 0.05, str(result)


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


def test_transformer_exact_hypergradient_beats_uniform_weights_and_darts() -> None:
    """Seed 0, 800 classifier steps (about 22 s for both runs on one thread). Measured: cg's
    weights retrain to 0.683 clean test accuracy against 0.547 with uniform weights and 0.601
    with darts' weights; their AUC at telling flipped labels apart is 0.83 against 0.68."""
    ours = transformer.run(progress=False)
    darts = transformer.run(method="darts", progress=False)
    accuracy = ours.row("clean test accuracy")
    assert accuracy.gain > 0.05, str(ours)
    assert accuracy.ours > darts.row("clean test accuracy").ours + 0.05, f"{ours}\n{darts}"
    assert ours.extra["auc"] > darts.extra["auc"] + 0.1, f"{ours}\n{darts}"
    assert ours.extra["weight_noisy"] < ours.extra["weight_clean"] - 0.1


@pytest.mark.slow
def test_transformer_exact_hypergradient_wins_at_other_seeds() -> None:
    """Measured (accuracy: uniform, cg, darts; AUC: cg, darts): seed 1 0.521 0.609 0.508,
    0.85 0.60; seed 2 0.583 0.662 0.534, 0.80 0.54; seed 3 0.546 0.564 0.529, 0.81 0.59;
    seed 4 0.523 0.560 0.560, 0.81 0.54. At every seed cg's weights beat uniform weights and
    flag the flipped labels far better than darts'; their retrained accuracy beats darts' by
    0.066 on average (seed 4 is a tie, which moves with the last bits of darts' step)."""
    gaps = []
    for seed in (1, 2, 3, 4):
        ours = transformer.run(seed=seed, progress=False)
        darts = transformer.run(method="darts", seed=seed, progress=False)
        accuracy = ours.row("clean test accuracy")
        assert accuracy.gain > 0.01, str(ours)
        assert ours.extra["auc"] > darts.extra["auc"] + 0.15, f"{ours}\n{darts}"
        gaps.append(accuracy.ours - darts.row("clean test accuracy").ours)
    assert sum(gaps) / len(gaps) > 0.03, gaps


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


def test_installed_console_script_runs_the_default_demo() -> None:
    """``ziggurat demo`` with no NAME, through the console script that ``pip install`` puts
    next to this interpreter (skipped when the package is not installed there)."""
    script = Path(sys.executable).with_name("ziggurat")
    if not script.is_file():
        pytest.skip("the ziggurat console script is not installed beside this interpreter")
    env = {**os.environ, "ZIGGURAT_FASHION_MNIST": ""}
    proc = subprocess.run(
        [str(script), "demo", "--steps", "20", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "reweight: Meta-Weight-Net (cg)" in proc.stdout  # the default example and method
    assert "clean test accuracy" in proc.stdout


def test_demo_transformer_prints_its_table() -> None:
    proc = _cli("demo", "transformer", "--steps", "40", "--method", "cg_fd", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "transformer: reweighting noisy labels (cg_fd), digits" in proc.stdout
    assert "noisy-label AUC of the weights" in proc.stdout


def test_demo_fewshot_takes_shots() -> None:
    proc = _cli("demo", "fewshot", "--shots", "1", "--steps", "5", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (
        "5-way 1-shot" in proc.stdout and "meta-test accuracy vs joint pretraining" in proc.stdout
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("demo", "nope"), "choose one of reweight"),
        (("demo", "hpo", "--method", "x"), "choose one of cg"),
        (("demo", "nas", "--method", "cg"), "choose one of darts"),
        (("demo", "--steps", "0"), "positive integer"),
        (("demo", "maml", "--shots", "1"), "only to the fewshot example"),
        (("demo", "fewshot", "--shots", "3"), "invalid choice"),
        (("demo", "transformer", "--steps", "10"), "transformer steps must be >= 40"),
    ],
)
def test_demo_bad_input_is_one_line(args: tuple[str, ...], needle: str) -> None:
    proc = _cli(*args)
    assert proc.returncode != 0
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    # the error is one line (argparse's own errors come after its usage summary)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ziggurat demo: error:") and needle in last
