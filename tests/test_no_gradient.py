"""A level that gets no gradient takes no optimizer step (as ``torch.optim`` skips a parameter
whose ``.grad`` is ``None``): with ``first_order`` below it and a loss that does not read its
own parameters, an upper level stays where it is, optimizer state included; zeros would still
move it through Adam's momentum and weight decay."""

from __future__ import annotations

import torch

from test_host_syncs import METHODS, program


def test_first_order_upper_level_takes_no_step() -> None:
    engine = program(METHODS["first_order"], True, iters=6)
    before = {k: t.clone() for k, t in engine.upper.module.state_dict().items()}
    calls = []
    engine.upper.param_callback = lambda: calls.append(1)  # type: ignore[method-assign]
    engine.run()
    after = engine.upper.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert engine.upper.optimizer.state == {} and calls == []
    assert engine.upper.count == 6  # it still stepped: loss, checks, logging
    assert engine.upper.last_hop_info == []  # no hop was taken through first_order


def test_with_a_hypergradient_the_upper_level_moves() -> None:
    engine = program(METHODS["darts"], True, iters=6)
    before = {k: t.clone() for k, t in engine.upper.module.state_dict().items()}
    engine.run()
    moved = [
        float((engine.upper.module.state_dict()[k] - t).abs().max()) for k, t in before.items()
    ]
    assert min(moved) > 1e-4
