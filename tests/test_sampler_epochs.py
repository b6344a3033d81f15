"""Loaders with a ``DistributedSampler`` get ``set_epoch`` at every epoch, also on resume."""

from __future__ import annotations

import torch

from systems_program import build, tensors


def test_resume_in_a_later_epoch_keeps_the_sampler_order(tmp_path) -> None:
    """14 rows in batches of 4: a new epoch every 4 lower steps, so the save at step 7 falls in
    epoch 1 (the lower level steps once per iteration). A sampler left at its default epoch
    after loading would replay epoch 0's order and the runs would differ."""
    whole = build(13, sampler=True)
    whole.run()
    half = build(7, sampler=True)
    half.run()
    path = str(tmp_path / "half.pt")
    half.save(path)
    resumed = build(13, sampler=True)
    resumed.load(path)
    assert resumed.lower._loaders[0].epoch >= 1
    resumed.run()
    expected, got = tensors(whole), tensors(resumed)
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k


def test_each_epoch_reaches_the_sampler() -> None:
    engine = build(13, sampler=True)
    seen: list[int] = []
    sampler = engine.lower._loaders[0].loader.sampler
    original = sampler.set_epoch
    sampler.set_epoch = lambda e: (seen.append(e), original(e))[1]
    engine.run()
    assert seen == [0, 1, 2, 3]
