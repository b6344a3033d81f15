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

from _modules import Vec
from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import exact
from ziggurat.problems import ImplicitProblem

D = torch.float64


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
    for step in range(1, busy_after + 1):  # run() refuses a run in which 'up' never steps
        engine.global_step = step
        engine.train_step()
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


# ---------------------------------------------------------------- problem helpers
class Fit(ImplicitProblem):
    """``1/2 |w - x|^2`` on each batch ``x``."""

    def training_step(self, batch):
        return {"loss": 0.5 * (self.module() - batch).pow(2).sum(), "size": float(batch.numel())}


def fit(cls=Fit, optimizer=torch.optim.SGD, lr: float = 1.0, **config):
    module = Vec(torch.zeros(2, dtype=D))
    x = [torch.tensor([1.0, 2.0], dtype=D), torch.tensor([-3.0, 4.0], dtype=D)]
    return cls(
        name="fit",
        module=module,
        optimizer=optimizer(module.parameters(), lr=lr),
        train_data_loader=x,
        config=Config(**config),
    ), x


def test_read_only_views_of_the_options() -> None:
    p, _ = fit(
        gradient_accumulation=3,
        gradient_clipping=0.5,
        warmup_steps=2,
        log_step=7,
        log_local_step=True,
        precision="bf16",
    )
    assert (p.gas, p.gradient_clipping, p.warmup_steps, p.log_step) == (3, 0.5, 2, 7)
    assert p.log_local_step and p.precision == "bf16" and p.dtype == torch.bfloat16
    assert fit()[0].dtype == torch.float32
    with pytest.raises(AttributeError):
        p.gas = 1  # type: ignore[misc]


def test_get_loss_divides_by_accumulation_and_reports_the_unscaled_loss() -> None:
    p, x = fit(gradient_accumulation=4)
    Engine([p], EngineConfig(train_iters=0))
    scaled, stats = p.get_loss(x[0])
    assert float(scaled.detach()) == pytest.approx(0.5 * 5.0 / 4)
    assert stats == {"loss": pytest.approx(2.5), "size": 2.0}
    with pytest.raises(FloatingPointError, match="problem 'fit'"):
        p.get_loss(torch.tensor([float("nan"), 0.0], dtype=D))


@pytest.mark.parametrize("kind", ["implicit", "iterative"])
def test_zero_grad_discards_the_open_accumulation_window(kind: str) -> None:
    from ziggurat.problems import IterativeProblem

    class FitIt(IterativeProblem):
        def training_step(self, batch):
            return 0.5 * (self.forward() - batch).pow(2).sum()

    p, x = fit(Fit if kind == "implicit" else FitIt, gradient_accumulation=2)
    engine = Engine([p], EngineConfig(train_iters=1, valid_step=0))
    engine.run()
    p.zero_grad()
    engine.config.train_iters = 2
    engine.run()
    # the update averages the window's gradients; only the second batch's is left: (w - x2) / 2
    assert torch.allclose(p.module.value.detach(), x[1] / 2)


def test_clip_grad_bounds_the_global_norm_and_reports_it() -> None:
    p, _ = fit(gradient_clipping=1.0)
    Engine([p], EngineConfig(train_iters=0))
    p.module.value.grad = torch.tensor([3.0, 4.0], dtype=D)
    assert float(p.clip_grad()) == pytest.approx(5.0)
    assert torch.allclose(p.module.value.grad, torch.tensor([0.6, 0.8], dtype=D))
    off, _ = fit()
    off.module.value.grad = torch.tensor([3.0, 4.0], dtype=D)
    assert off.clip_grad() is None and float(off.module.value.grad.norm()) == 5.0


def test_optimizer_state_and_group_for_a_parameter() -> None:
    p, _ = fit(optimizer=torch.optim.Adam, lr=0.1)
    engine = Engine([p], EngineConfig(train_iters=1, valid_step=0))
    param = p.module.value
    assert p.get_opt_state_for_param(param) == {}  # no step yet
    assert p.get_opt_param_group_for_param(param)["lr"] == 0.1
    engine.run()
    assert p.get_opt_state_for_param(param) is p.optimizer.state[param]
    with pytest.raises(ValueError, match="not a parameter of this problem's optimizer"):
        p.get_opt_state_for_param(torch.zeros(2))


def test_optimizer_state_of_an_unrolled_level_is_the_differentiable_optimizers() -> None:
    from ziggurat.problems import IterativeProblem

    class FitIt(IterativeProblem):
        def training_step(self, batch):
            return 0.5 * (self.forward() - batch).pow(2).sum()

    p, x = fit(FitIt, optimizer=torch.optim.Adam, lr=0.1)
    Engine([p], EngineConfig(train_iters=1, valid_step=0)).run()
    state = p.get_opt_state_for_param(p.module.value)
    assert state["step"] == 1
    assert torch.allclose(state["exp_avg"], 0.1 * (0 - x[0]))  # (1 - beta1) g, g = w0 - x
    assert torch.allclose(state["exp_avg_sq"], 0.001 * x[0] ** 2)
    assert p.get_opt_state_for_param(p.params["value"])["step"] == 1


def test_meta_trainable_parameters_are_the_trainable_ones_and_overrides_are_refused() -> None:
    p, _ = fit()
    assert p.meta_trainable_parameters() == p.trainable_parameters()

    class Narrow(Fit):
        def meta_trainable_parameters(self):
            return []

    narrow, _ = fit(Narrow)
    with pytest.raises(TypeError, match=r"'fit' overrides meta_trainable_parameters\(\)"):
        Engine([narrow])


def test_param_groups_must_be_the_optimizers_groups() -> None:
    class Groups(Fit):
        def param_groups(self):
            return [{"params": [self.module.value], "lr": 0.5}]

    built_elsewhere, _ = fit(Groups, lr=1.0)  # per-group lr 0.5 would be lost
    with pytest.raises(ValueError, match=r"'fit' defines param_groups\(\).*never rebuilds it"):
        Engine([built_elsewhere])

    class FromGroups(Groups):
        def configure_optimizer(self):
            return torch.optim.SGD(self.param_groups(), lr=1.0)

    module = Vec(torch.zeros(2, dtype=D))
    ok = FromGroups(name="fit", module=module, train_data_loader=[torch.zeros(2, dtype=D)])
    Engine([ok])
    assert ok.optimizer.param_groups[0]["lr"] == 0.5
