"""Betty API a program may call beyond the programming model: run-time re-wiring, rank and
process-group helpers, and problem helpers (each compared with what it must compute)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import exact
from ziggurat.problems import ImplicitProblem

D = torch.float64


class Vec(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())

    def forward(self) -> torch.Tensor:
        return self.value


def make(cls, name: str, value: torch.Tensor, lr: float = 0.05, **config):
    module = Vec(value)
    return cls(
        name=name,
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=lr),
        train_data_loader=[torch.zeros(1)],
        config=Config(**config),
    )


def names(problems) -> list[str]:
    return [p.name for p in problems]


# ---------------------------------------------------------------- set_dependency
class TwoLowers:
    """``up`` reads ``low1`` and ``low2``; ``low_i`` minimises ``1/2 |w|^2 - w . B_i lam``, so
    ``w_i* = B_i lam`` and the hypergradient through ``low_i`` is ``B_i^T (w_i - t_i)``."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        self.B = [torch.randn(4, 3, generator=g, dtype=D) for _ in range(2)]
        self.t = [torch.randn(4, generator=g, dtype=D) for _ in range(2)]
        self.grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        outer = self

        class Up(ImplicitProblem):
            def training_step(self, batch):
                w1, w2 = self.low1(), self.low2()
                return 0.5 * ((w1 - outer.t[0]).pow(2).sum() + (w2 - outer.t[1]).pow(2).sum())

            def grad_callback(self):
                w = [self.low1.module.value.detach(), self.low2.module.value.detach()]
                expected = [b.T @ (wi - t) for b, wi, t in zip(outer.B, w, outer.t, strict=True)]
                outer.grads.append((self.module.value.grad.clone(), torch.stack(expected)))

        def lower(index: int):
            class Low(ImplicitProblem):
                def training_step(self, batch):
                    w = self.module()
                    return 0.5 * w.pow(2).sum() - w @ outer.B[index] @ self.up()

            return Low

        self.up = make(Up, "up", torch.randn(3, generator=g, dtype=D))
        self.low1 = make(lower(0), "low1", torch.zeros(4, dtype=D), hypergradient=exact())
        self.low2 = make(lower(1), "low2", torch.zeros(4, dtype=D), hypergradient=exact())

    def deps(self, reads: str) -> dict:
        low = {"low1": self.low1, "low2": self.low2}[reads]
        return {"u2l": {self.up: [low]}, "l2u": {self.low1: [self.up], self.low2: [self.up]}}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_set_dependency_moves_the_hypergradient_to_the_new_path() -> None:
    prog = TwoLowers()
    problems = [prog.up, prog.low1, prog.low2]
    engine = Engine(problems, EngineConfig(train_iters=3, valid_step=0), prog.deps("low1"))
    engine.run()
    engine.set_dependency(prog.deps("low2"))
    assert [names(p) for p in prog.up.paths] == [["up", "low2", "up"]]
    engine.config.train_iters = 6
    engine.run()
    assert len(prog.grads) == 6
    for i, (got, expected) in enumerate(prog.grads):
        assert rel(got, expected[0 if i < 3 else 1]) < 1e-10


def chain():
    class Quad(ImplicitProblem):
        def training_step(self, batch):
            below = [c() for c in self.children] or [torch.zeros(2, dtype=D)]
            above = [p() for p in self.parents] or [torch.zeros(2, dtype=D)]
            return (self.module() - sum(below) - 0.5 * sum(above)).pow(2).sum()

    return [
        make(Quad, n, torch.full((2,), float(i), dtype=D))
        for i, n in enumerate(("up", "mid", "low"))
    ]


def test_set_dependency_rewires_parents_children_leaves_and_clears_readiness() -> None:
    up, mid, low = chain()
    engine = Engine(
        [up, mid, low],
        EngineConfig(train_iters=2, valid_step=0),
        {"u2l": {up: [low]}, "l2u": {low: [up]}},
    )
    assert names(engine.leaves) == ["mid", "low"]
    engine.run()
    assert up.count == 2 and mid.count == 2
    engine.set_dependency(
        {"u2l": {"up": ["mid"], "mid": ["low"]}, "l2u": {"low": ["mid"], "mid": ["up"]}}
    )
    assert names(engine.leaves) == ["low"]
    assert names(up.children) == ["mid"] and up.parents == []
    assert names(mid.children) == ["low"] and names(mid.parents) == ["up"]
    assert names(low.parents) == ["mid"] and low.children == []
    assert up.ready == {"mid": False} and mid.ready == {"low": False} and low.ready == {}
    assert [names(p) for p in up.paths] == [["up", "mid", "up"]]
    assert [names(p) for p in mid.paths] == [["mid", "low", "mid"]]
    engine.config.train_iters = 5
    engine.run()  # depth first: each iteration steps low, then mid, then up
    assert (low.count, mid.count, up.count) == (5, 5, 5)


@pytest.mark.parametrize(
    ("config", "busy_after", "free_after"),
    [
        ({"unroll_steps": 3}, 2, 3),
        ({"gradient_accumulation": 2}, 1, 2),
        ({"warmup_steps": 2}, 2, 3),
    ],
    ids=["unroll", "accumulation", "warmup"],
)
def test_set_dependency_is_refused_inside_an_inner_loop(config, busy_after, free_after) -> None:
    prog = TwoLowers()
    prog.low1 = make(type(prog.low1), "low1", torch.zeros(4, dtype=D), **config)
    problems = [prog.up, prog.low1, prog.low2]
    engine = Engine(problems, EngineConfig(train_iters=busy_after, valid_step=0), prog.deps("low1"))
    engine.run()
    with pytest.raises(RuntimeError, match=rf"'low1' \(local step {busy_after}\).*inner loop"):
        engine.set_dependency(prog.deps("low2"))
    assert [names(p) for p in prog.up.paths] == [["up", "low1", "up"]]  # unchanged
    engine.config.train_iters = free_after
    engine.run()
    engine.set_dependency(prog.deps("low2"))
    assert [names(p) for p in prog.up.paths] == [["up", "low2", "up"]]


def test_invalid_new_dependencies_change_nothing() -> None:
    up, mid, low = chain()
    deps = {"u2l": {up: [low]}, "l2u": {low: [up]}}
    engine = Engine([up, mid, low], EngineConfig(train_iters=0), deps)
    with pytest.raises(ValueError, match="cycle"):
        engine.set_dependency({"l2u": {"low": ["mid"], "mid": ["up"], "up": ["low"]}})
    with pytest.raises(ValueError, match=r"'ghost'.*not in `problems`"):
        engine.set_dependency({"l2u": {"low": ["ghost"]}})
    assert names(engine.leaves) == ["mid", "low"] and names(low.parents) == ["up"]
    assert [names(p) for p in up.paths] == [["up", "low", "up"]]


def test_a_checkpoint_loads_only_under_the_dependencies_it_was_saved_with(tmp_path) -> None:
    prog = TwoLowers()
    problems = [prog.up, prog.low1, prog.low2]
    engine = Engine(problems, EngineConfig(train_iters=2, valid_step=0), prog.deps("low1"))
    engine.run()
    path = str(tmp_path / "ckpt.pt")
    engine.save(path)
    engine.set_dependency({"u2l": {}, "l2u": {"low1": ["up"]}})
    with pytest.raises(
        ValueError, match=r"problem 'up'.*saved with lower levels \['low1', 'low2'\]"
    ):
        engine.load(path)
    engine.set_dependency(prog.deps("low1"))
    engine.load(path)
    assert engine.global_step == 2


# ---------------------------------------------------------------- rank and process group
def test_single_process_views_rank_and_cleanup() -> None:
    up, mid, low = chain()
    engine = Engine([up, mid, low], EngineConfig(train_iters=7, valid_step=3))
    assert engine.train_iters == 7 and engine.valid_step == 3
    assert engine.is_rank_zero() and up.is_rank_zero()
    assert Engine.__dict__["train_iters"].fset is None  # a view: change engine.config instead
    engine.config.train_iters = 9
    assert engine.train_iters == 9
    engine.cleanup()  # no process group: nothing to do


CLEANUP = """
import torch, torch.distributed as dist
from torch import nn
from ziggurat import Engine
from ziggurat.configs import EngineConfig
from ziggurat.problems import ImplicitProblem

class P(ImplicitProblem):
    def training_step(self, batch):
        return self.module(torch.ones(1, 2)).pow(2).sum()

def engine():
    m = nn.Linear(2, 1)
    p = P("p", module=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1), train_data_loader=[0])
    return Engine([p], EngineConfig(strategy="ddp", train_iters=2, valid_step=0)), p

e, p = engine()
e.run()
print(dist.is_initialized(), e.is_rank_zero(), p.is_rank_zero())
e.cleanup()
e.cleanup()
print(dist.is_initialized())
dist.init_process_group("gloo", init_method="file://INIT", rank=0, world_size=1)
e, _ = engine()
e.cleanup()
print(dist.is_initialized())
dist.destroy_process_group()
"""


def test_cleanup_destroys_only_a_process_group_the_engine_created(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent.parent / "src"),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "OMP_NUM_THREADS": "1",
    }
    script = CLEANUP.replace("INIT", str(tmp_path / "init"))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True", "False", "True"]
