"""Checkpoint and resume: bit-exact continuation, in a new process and after SIGKILL."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from systems_program import build, tensors
from ziggurat.engine import _checkpoint

HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE)])}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_in_new_process_is_bit_exact(tmp_path):
    n = 12
    whole = build(n)
    whole.run()
    expected = tensors(whole)

    half = build(n // 2)
    half.run()
    half.save(str(tmp_path / "half.pt"))
    assert not torch.equal(tensors(half)["lower.module.weight"], expected["lower.module.weight"])
    script = [sys.executable, str(HERE / "systems_program.py"), "resume"]
    args = [str(tmp_path / "half.pt"), str(tmp_path / "end.pt"), str(n)]
    subprocess.run(script + args, env=ENV, check=True, timeout=120)

    resumed = build(n)
    resumed.load(str(tmp_path / "end.pt"))
    assert resumed.global_step == n
    assert resumed.lower.count == n and resumed.upper.count == n // 2
    got = tensors(resumed)
    assert any(".opt." in k and "exp_avg_sq" in k for k in got)
    assert_same(got, expected)
    assert resumed.lower.scheduler.last_epoch == whole.lower.scheduler.last_epoch
    assert (
        resumed.lower.optimizer.param_groups[0]["lr"] == whole.lower.optimizer.param_groups[0]["lr"]
    )


def test_sigkill_resumes_from_last_complete_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "systems_program.py"), "forever", str(ckpt)], env=ENV
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = [f for f in os.listdir(ckpt)] if ckpt.exists() else []
            if sum(f.endswith(".pt") and not f.startswith(".") for f in done) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    names = [f for f in os.listdir(ckpt) if not f.startswith(".")]
    assert names and all(re.fullmatch(r"step-\d{9}\.pt", f) for f in names), names
    for f in names:  # nothing partial under a final name
        _checkpoint.read_checkpoint(str(ckpt / f))
    latest = _checkpoint.latest_checkpoint(str(ckpt))
    assert latest is not None
    step = int(re.search(r"(\d+)", os.path.basename(latest)).group(1))
    assert step >= 9 and step % 3 == 0

    target = step + 4
    resumed = build(target, checkpoint_dir=str(ckpt), resume=True)
    resumed.run()
    whole = build(target)
    whole.run()
    assert resumed.global_step == target
    assert_same(tensors(resumed), tensors(whole))


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    engine = build(2)
    engine.run()
    target = tmp_path / "step-000000002.pt"

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        engine.save(str(target))
    assert os.listdir(tmp_path) == []


def test_damaged_or_foreign_checkpoint_is_rejected_without_changes(tmp_path):
    engine = build(3)
    engine.run()
    good = tmp_path / "good.pt"
    engine.save(str(good))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])

    target = build(2)  # 2 iterations: the upper level steps once (unroll_steps=2)
    target.run()
    before = tensors(target)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        target.load(str(truncated))

    other = build(1)
    other.lower.module.weight = torch.nn.Parameter(torch.zeros(1, 5))
    other.save(str(tmp_path / "shape.pt"))
    with pytest.raises(ValueError, match="names or shapes differ"):
        target.load(str(tmp_path / "shape.pt"))

    state = torch.load(good, weights_only=True)
    state["problems"]["meta"] = state["problems"].pop("upper")
    torch.save(state, tmp_path / "names.pt")
    with pytest.raises(ValueError, match="different program"):
        target.load(str(tmp_path / "names.pt"))
    assert_same(tensors(target), before)
    assert target.global_step == 2
    shutil.copy(good, tmp_path / "copy.pt")
    target.load(str(tmp_path / "copy.pt"))
    assert target.global_step == 3


def _swap_lower(engine, optimizer=None, scheduler=None):
    """``engine`` with its lower level's optimizer (and scheduler) replaced before training."""
    lower = engine.lower
    if optimizer is not None:
        lower.optimizer = optimizer(lower.module.parameters())
    lower.scheduler = scheduler(lower.optimizer) if scheduler is not None else None
    return engine


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda e: _swap_lower(
                e,
                lambda ps: torch.optim.SGD(ps, lr=0.05),
                lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.7),
            ),
            r"problem 'lower': saved with optimizer Adam, this engine has SGD",
        ),
        (
            lambda e: _swap_lower(
                e,
                lambda ps: torch.optim.AdamW(ps, lr=0.05),
                lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.7),
            ),
            r"saved with optimizer Adam, this engine has AdamW",
        ),
        (
            lambda e: _swap_lower(
                e, None, lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)
            ),
            r"problem 'lower': saved with scheduler StepLR, this engine has ExponentialLR",
        ),
        (
            lambda e: _swap_lower(e, None, None),
            r"saved with scheduler StepLR, this engine has None",
        ),
        (
            lambda e: _swap_lower(
                e,
                None,
                lambda o: torch.optim.lr_scheduler.ChainedScheduler(
                    [torch.optim.lr_scheduler.StepLR(o, 3, 0.7)]
                ),
            ),
            r"saved with scheduler StepLR, this engine has ChainedScheduler\(StepLR\)",
        ),
    ],
    ids=["sgd", "adamw", "scheduler", "no-scheduler", "chained"],
)
def test_checkpoint_of_another_optimizer_or_scheduler_is_rejected_without_changes(
    tmp_path, change, match
):
    saved = build(3)
    saved.run()
    saved.save(str(tmp_path / "c.pt"))
    target = change(build(3))
    before = tensors(target)
    lr = target.lower.optimizer.param_groups[0]["lr"]
    with pytest.raises(ValueError, match=match):
        target.load(str(tmp_path / "c.pt"))
    assert_same(tensors(target), before)
    assert target.lower.optimizer.param_groups[0]["lr"] == lr
    assert target.global_step == 0


def test_checkpoint_with_other_param_group_options_is_rejected(tmp_path):
    saved = build(3)
    saved.run()
    path = tmp_path / "c.pt"
    saved.save(str(path))
    state = torch.load(path, weights_only=True)
    state["problems"]["lower"]["layout"]["group_options"][0].remove("amsgrad")
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"'lower': the optimizer's param group options differ"):
        build(3).load(str(path))


def test_checkpoint_of_an_older_format_version_names_both_versions(tmp_path):
    saved = build(1)
    saved.save(str(tmp_path / "c.pt"))
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    state["version"] = 1
    for problem in state["problems"].values():
        del problem["layout"]
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(
        ValueError,
        match=rf"format version 1, this ziggurat reads version "
        rf"{_checkpoint.VERSION} only",
    ):
        build(1).load(str(tmp_path / "old.pt"))


def test_resume_removes_temp_files_of_an_interrupted_save(tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    build(3, checkpoint_dir=str(ckpt), checkpoint_step=3).run()
    stale = [ckpt / ".tmpab12cd.tmp", ckpt / ".x.tmp"]
    for f in stale:
        f.write_bytes(b"PK\x03\x04partial")
    kept = [ckpt / "notes.tmp", ckpt / ".hidden"]  # not names write_atomic makes
    for f in kept:
        f.write_text("mine")
    resumed = build(4, checkpoint_dir=str(ckpt), resume=True)
    with caplog.at_level("INFO", logger="ziggurat"):
        resumed.run()
    assert resumed.global_step == 4
    assert not any(f.exists() for f in stale)
    assert all(f.exists() for f in kept)
    for f in stale:
        assert f"removed {f}, left by an interrupted checkpoint save" in caplog.text
    assert sorted(os.listdir(ckpt)) == [".hidden", "notes.tmp", "step-000000003.pt"]


def test_an_unrolled_level_resumes_bit_exactly(tmp_path) -> None:
    """An ``IterativeProblem`` (3 unrolled SGD-momentum steps per upper step, clipped): 12
    iterations in one go equal 6, a checkpoint at the inner loop's boundary, and 6 more in a new
    engine -- its parameters, momentum buffers and step count, and the upper level's state."""
    from _distributed_programs import build as build_program
    from _distributed_programs import tensors as program_tensors

    whole = build_program("unrolled", 0, 1, "default", 12)
    whole.run()
    half = build_program("unrolled", 0, 1, "default", 6)
    half.run()
    path = str(tmp_path / "unrolled.pt")
    half.save(path)
    resumed = build_program("unrolled", 0, 1, "default", 12)
    resumed.load(path)
    assert resumed.lower.unrolled_state()["opt_step"] == 6
    resumed.run()
    expected, got = program_tensors(whole), program_tensors(resumed)
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    a, b = whole.lower.unrolled_state(), resumed.lower.unrolled_state()
    assert a["opt_step"] == b["opt_step"] == 12
    for k, t in a["params"].items():
        assert torch.equal(t, b["params"][k]), k
    for name, tree in a["opt_buffers"].items():
        assert tree and all(torch.equal(t, b["opt_buffers"][name][k]) for k, t in tree.items())
