"""Scheduling with recording fake problems (no autograd): unroll counts, warm-up, accumulation,
several lowers, several uppers and roll-back order."""

from __future__ import annotations

import torch
from torch import nn

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem


class Fake(ImplicitProblem):
    """Records (name, global step, kind) instead of computing anything."""

    def __init__(self, name: str, log: list, **config) -> None:
        module = nn.Linear(1, 1)
        super().__init__(
            name=name,
            module=module,
            config=Config(**config),
            optimizer=torch.optim.SGD(module.parameters(), lr=0.0),
            train_data_loader=[0],
        )
        self.log = log
        self.inner_starts = 0

    def training_step(self, batch):  # pragma: no cover - never called by the fakes
        raise AssertionError

    def on_inner_loop_start(self) -> None:
        self.inner_starts += 1

    def one_step_descent(self, batch=None, fresh=False) -> None:
        self.cur_batch = batch
        self.log.append((self.name, self._global_step, "redo" if fresh else "step"))

    def cache_states(self):
        self.log.append((self.name, self._global_step, "cache"))
        return {}

    def recover_states(self, cache) -> None:
        self.log.append((self.name, self._global_step, "restore"))


def steps_of(log, name, kind="step"):
    return [g for n, g, k in log if n == name and k == kind]


def run(problems, deps, iters, roll_back=False):
    Engine(
        problems=problems,
        dependencies=deps,
        config=EngineConfig(train_iters=iters, valid_step=0, roll_back=roll_back),
    ).run()


def test_unroll_steps_set_the_upper_period() -> None:
    log: list = []
    up, low = Fake("up", log), Fake("low", log, unroll_steps=3)
    run([up, low], {"u2l": {up: [low]}, "l2u": {low: [up]}}, 9)
    assert steps_of(log, "low") == list(range(1, 10))
    assert steps_of(log, "up") == [3, 6, 9]
    assert low.inner_starts == 3  # each inner loop starts after an upper step
    # the upper steps right after the lower step that completed the inner loop
    assert log.index(("up", 3, "step")) == log.index(("low", 3, "step")) + 1


def test_warmup_delays_the_first_upper_step() -> None:
    log: list = []
    up, low = Fake("up", log), Fake("low", log, unroll_steps=2, warmup_steps=5)
    run([up, low], {"u2l": {up: [low]}, "l2u": {low: [up]}}, 10)
    assert steps_of(log, "up") == [6, 8, 10]


def test_gradient_accumulation_multiplies_the_period() -> None:
    log: list = []
    up, low = Fake("up", log), Fake("low", log, unroll_steps=2, gradient_accumulation=2)
    run([up, low], {"u2l": {up: [low]}, "l2u": {low: [up]}}, 12)
    assert steps_of(log, "up") == [4, 8, 12]


def test_upper_with_two_lowers_waits_for_both() -> None:
    log: list = []
    up = Fake("up", log)
    fast, slow = Fake("fast", log, unroll_steps=2), Fake("slow", log, unroll_steps=3)
    run([up, fast, slow], {"u2l": {up: [fast, slow]}, "l2u": {fast: [up], slow: [up]}}, 12)
    # ready flags: fast at 2,4,6,..; slow at 3,6,9,12 -> the upper steps when both are set
    assert steps_of(log, "up") == [3, 6, 9, 12]


def test_lower_with_two_uppers_notifies_them_in_order() -> None:
    log: list = []
    a, b, low = Fake("a", log), Fake("b", log), Fake("low", log, unroll_steps=2)
    run([a, b, low], {"u2l": {a: [low], b: [low]}, "l2u": {low: [a, b]}}, 4)
    uppers = [(n, g) for n, g, k in log if n in ("a", "b")]
    assert uppers == [("a", 2), ("b", 2), ("a", 4), ("b", 4)]


def test_three_level_chain_steps_depth_first() -> None:
    log: list = []
    top, mid, low = (
        Fake("top", log),
        Fake("mid", log, unroll_steps=2),
        Fake("low", log, unroll_steps=2),
    )
    run([top, mid, low], {"u2l": {top: [mid], mid: [low]}, "l2u": {low: [mid], mid: [top]}}, 8)
    assert steps_of(log, "mid") == [2, 4, 6, 8]
    assert steps_of(log, "top") == [4, 8]
    assert [n for n, g, _ in log if g == 4] == ["low", "mid", "top"]


def test_roll_back_caches_restores_and_redoes_after_the_upper_step() -> None:
    log: list = []
    up, low = Fake("up", log), Fake("low", log, unroll_steps=2)
    run([up, low], {"u2l": {up: [low]}, "l2u": {low: [up]}}, 4, roll_back=True)
    first = [(n, k) for n, g, k in log if g <= 2]
    assert first == [
        ("low", "cache"),
        ("low", "step"),
        ("low", "step"),
        ("up", "step"),
        ("low", "restore"),
        ("low", "redo"),
    ]
    assert ("up", "cache") not in [(n, k) for n, _, k in log]  # top levels never roll back


def test_eval_mode_does_not_count_or_trigger_uppers() -> None:
    log: list = []
    up, low = Fake("up", log), Fake("low", log)
    engine = Engine(
        problems=[up, low],
        dependencies={"u2l": {up: [low]}, "l2u": {low: [up]}},
        config=EngineConfig(train_iters=0, valid_step=0),
    )
    engine.eval()
    low.step(1)
    assert low.count == 0 and steps_of(log, "up") == []
    engine.train()
    low.step(2)
    assert low.count == 1 and steps_of(log, "up") == [2]


def test_problem_outside_dependencies_trains_independently() -> None:
    log: list = []
    up, low, alone = Fake("up", log), Fake("low", log), Fake("alone", log)
    run([up, low, alone], {"u2l": {up: [low]}, "l2u": {low: [up]}}, 3)
    assert steps_of(log, "alone") == [1, 2, 3]
