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

    target = build(1)
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
    assert target.global_step == 1
    shutil.copy(good, tmp_path / "copy.pt")
    target.load(str(tmp_path / "copy.pt"))
    assert target.global_step == 3
