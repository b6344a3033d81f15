"""Betty's public ``Problem`` API: the members provided behave as Betty's, the others are an
``AttributeError`` saying what to use, and the README's differences list names every one."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from _modules import Vec
from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem, IterativeProblem, Problem
from ziggurat.problems._betty_graph import NOT_PROVIDED
from ziggurat.problems._betty_helpers import _DEFAULT_HOOKS

D = torch.float64
README = Path(__file__).resolve().parents[1] / "README.md"

BETTY_PROBLEM_NAMES = frozenset(
    [
        "accelerator",
        "add_child",
        "add_env",
        "add_logger",
        "add_parent",
        "add_paths",
        "backward",
        "cache_states",
        "cfg",
        "check_ready",
        "children",
        "clear_dependencies",
        "clip_grad",
        "config",
        "configure_device",
        "configure_distributed_training",
        "configure_roll_back",
        "count",
        "cur_batch",
        "device",
        "dtype",
        "env",
        "epoch_callback_exec",
        "epoch_counter",
        "eval",
        "forward",
        "gas",
        "get_batch",
        "get_batch_single_loader",
        "get_loss",
        "get_opt_param_group_for_param",
        "get_opt_state_for_param",
        "gradient_accumulation_boundary",
        "gradient_clipping",
        "initial_dynamic_scale",
        "initialize",
        "is_implemented",
        "is_rank_zero",
        "leaf",
        "load_state_dict",
        "log",
        "log_local_step",
        "log_step",
        "logger",
        "meta_trainable_parameters",
        "module",
        "name",
        "one_step_descent",
        "optimizer",
        "optimizer_step",
        "parameters",
        "parents",
        "patch_data_loader",
        "patch_everything",
        "patch_module",
        "patch_optimizer",
        "patch_scheduler",
        "paths",
        "precision",
        "ready",
        "recover_states",
        "scale_factor",
        "scaler",
        "scheduler",
        "set_grads",
        "set_module",
        "set_optimizer",
        "set_scheduler",
        "set_train_data_loader",
        "state_dict",
        "step",
        "step_after_roll_back",
        "step_normal",
        "synchronize_params",
        "train",
        "train_data_iterator",
        "train_data_loader",
        "trainable_parameters",
        "training_step",
        "training_step_exec",
        "warmup_steps",
        "zero_grad",
    ]
)
"""The public members of Betty 0.2.1's ``Problem`` (its methods, properties and the attributes
it sets on itself), as read from ``betty/problems/problem.py``."""


class Quadratic(ImplicitProblem):
    def training_step(self, batch):
        return (self.module() - batch).pow(2).sum()


def make(cls=Quadratic, name: str = "p", lr: float = 0.1, loader=None, **config) -> Problem:
    module = Vec(torch.zeros(2, dtype=D))
    return cls(
        name=name,
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=lr),
        train_data_loader=loader if loader is not None else [torch.ones(2, dtype=D)],
        config=Config(**config),
    )


# --------------------------------------------- Betty's test/test_problem.py, in our words
class Outer(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return nn.functional.binary_cross_entropy_with_logits(self.inner(x)[0], y)


class Inner(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        logits, w = self.module(x)
        fit = nn.functional.binary_cross_entropy_with_logits(logits, y)
        return fit + 0.5 * (self.outer() * w**2).sum()


class Logistic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(5))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x @ self.w, self.w


class Strength(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(5))

    def forward(self) -> torch.Tensor:
        return self.w


def outer_and_inner() -> tuple[Problem, Problem]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, generator=g)
    y = (x.sum(1) > 0).float()
    inner_mod, outer_mod = Logistic(), Strength()
    outer = Outer(
        name="outer",
        module=outer_mod,
        optimizer=torch.optim.SGD(outer_mod.parameters(), lr=0.1, momentum=0.9),
        train_data_loader=[(x[10:], y[10:])],
    )
    inner = Inner(
        name="inner",
        module=inner_mod,
        optimizer=torch.optim.SGD(inner_mod.parameters(), lr=0.1),
        train_data_loader=[(x[:10], y[:10])],
        config=Config(unroll_steps=10),
    )
    return outer, inner


def test_add_child_makes_a_lower_level() -> None:
    outer, inner = outer_and_inner()
    outer.add_child(inner)
    assert inner in outer.children
    assert outer.ready == {"inner": False} and not outer.check_ready()
    with pytest.raises(ValueError, match="'outer' already has 'inner' as a lower level"):
        outer.add_child(inner)


def test_add_parent_makes_an_upper_level() -> None:
    outer, inner = outer_and_inner()
    inner.add_parent(outer)
    assert outer in inner.parents
    with pytest.raises(ValueError, match="'inner' already has 'outer' as an upper level"):
        inner.add_parent(outer)


def test_the_engine_wires_through_add_child_add_parent_and_add_paths() -> None:
    calls: list[tuple[str, str]] = []

    class Recording(Outer):
        def add_child(self, problem):
            calls.append(("child", problem.name))
            super().add_child(problem)

        def add_paths(self, paths):
            calls.append(("paths", str([[p.name for p in path] for path in paths])))
            super().add_paths(paths)

    outer, inner = outer_and_inner()
    outer = Recording(
        name="outer",
        module=outer.module,
        optimizer=outer.optimizer,
        train_data_loader=outer.train_data_loader,
    )
    Engine(
        [outer, inner],
        EngineConfig(train_iters=10, valid_step=0),
        {"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
    ).run()
    assert calls == [("child", "inner"), ("paths", "[['outer', 'inner', 'outer']]")]
    assert inner.parents == [outer] and outer.count == 1
    with pytest.raises(ValueError, match=r"starts and ends at the problem.*\['inner', 'outer'\]"):
        outer.add_paths([[inner, outer]])


# --------------------------------------------------------------- provided members
def test_log_writes_a_console_line_at_the_global_or_local_step(caplog) -> None:
    caplog.set_level(logging.INFO, logger="ziggurat")
    p = make()
    Engine([p], EngineConfig(train_iters=3, valid_step=0)).run()
    p.log({"acc": torch.tensor(0.5), "parts": [1.0, 2.5]}, 7)
    p.log({"acc": 0.25})  # no global step: the local one
    local = make(name="q", log_local_step=True)
    Engine([local], EngineConfig(train_iters=2, valid_step=0)).run()
    local.log({"acc": 1.0}, 9)
    lines = [r.getMessage() for r in caplog.records if r.name == "ziggurat"]
    assert lines == [
        "[p] [global step 7] acc: 0.5 || parts_0: 1 || parts_1: 2.5",
        "[p] [global step 3] acc: 0.25",
        "[q] [global step 2] acc: 1",
    ]


def test_is_implemented_answers_as_betty_for_hooks_and_other_names() -> None:
    class WithHooks(Quadratic):
        def grad_callback(self):
            pass

        def configure_scheduler(self):
            return None

    plain, hooked = make(), make(WithHooks, name="h")
    assert set(dir(Problem)) >= _DEFAULT_HOOKS
    for hook in _DEFAULT_HOOKS:
        assert not plain.is_implemented(hook), hook
    assert hooked.is_implemented("grad_callback") and hooked.is_implemented("configure_scheduler")
    assert not hooked.is_implemented("param_callback")
    plain.param_callback = lambda: None  # an instance's own callable counts too
    assert plain.is_implemented("param_callback")
    assert plain.is_implemented("training_step") and plain.is_implemented("forward")
    assert not plain.is_implemented("validation") and not plain.is_implemented("gas")
    Engine([plain, hooked], EngineConfig(train_iters=1, valid_step=0))
    assert plain.is_implemented("h")  # another problem, callable by name


def test_training_step_exec_returns_the_raw_output_under_autocast() -> None:
    class Metrics(ImplicitProblem):
        def training_step(self, batch):
            out = self.module() @ batch
            return {"loss": out.sum(), "dtype": out.dtype}

    p = make(Metrics, loader=[torch.ones(2, 3, dtype=torch.float32)], precision="bf16")
    p.module.float()
    Engine([p], EngineConfig(train_iters=1, valid_step=0))
    out = p.training_step_exec(torch.ones(2, 3))
    assert out["dtype"] == torch.bfloat16 and out["loss"].dtype == torch.bfloat16


def test_training_step_exec_reads_an_unrolled_level_through_its_module() -> None:
    class Unrolled(IterativeProblem):
        def training_step(self, batch):
            return (self.module() - batch).pow(2).sum()

    p = make(Unrolled, lr=0.25)
    Engine([p], EngineConfig(train_iters=1, valid_step=0)).run()
    loss = p.training_step_exec(torch.ones(2, dtype=D))
    (g,) = torch.autograd.grad(loss, [p.params["value"]])
    torch.testing.assert_close(g, torch.full((2,), -1.0, dtype=D))  # 2 (0.5 - 1)


def test_counters_and_config_views() -> None:
    loader = [torch.ones(2, dtype=D)] * 3
    p = make(loader=loader, gradient_accumulation=2, initial_dynamic_scale=8.0, scale_factor=3.0)
    env = object()
    p.add_env(env)
    p.add_env(object())  # kept: Betty sets it only once
    assert p.env is env
    engine = Engine([p], EngineConfig(train_iters=7, valid_step=0))
    boundaries = []
    for _ in range(7):
        engine.train_step()
        boundaries.append(p.gradient_accumulation_boundary())
    assert boundaries == [False, True, False, True, False, True, False]
    assert p.epoch_counter == [2]
    assert (p.initial_dynamic_scale, p.scale_factor) == (8.0, 3.0)


def test_setters_before_the_engine_replace_the_components() -> None:
    p = make(name="p")
    module = Vec(torch.full((2,), 3.0, dtype=D))
    p.set_module(module)
    p.set_optimizer(torch.optim.SGD(module.parameters(), lr=0.5))
    p.set_train_data_loader([torch.full((2,), 5.0, dtype=D)])
    p.set_scheduler(torch.optim.lr_scheduler.StepLR(p.optimizer, step_size=1, gamma=0.5))
    Engine([p], EngineConfig(train_iters=2, valid_step=0)).run()
    # w <- w - 0.5 * 2 (w - 5) = 5 at lr 0.5; then lr 0.25: w <- w - 0.5 (w - 5) = 5
    assert p.module is module
    torch.testing.assert_close(module.value.detach(), torch.full((2,), 5.0, dtype=D))
    assert p.optimizer.param_groups[0]["lr"] == 0.125


def test_setters_on_a_running_program() -> None:
    a, b = torch.full((2,), 1.0, dtype=D), torch.full((2,), 2.0, dtype=D)

    class Pair(Quadratic):
        def training_step(self, batch):
            return (self.module() - batch[1]).pow(2).sum()

    p = make(Pair, loader=(["x"] * 5, [a] * 5))
    engine = Engine([p], EngineConfig(train_iters=2, valid_step=0))
    engine.run()
    p.set_train_data_loader([b], idx=1)
    assert p.train_data_loader[0] == ["x"] * 5 and p.train_data_loader[1] == [b]
    assert p.get_batch() == ("x", b)
    with pytest.raises(IndexError, match="loader index 2 out of range for 2 loader"):
        p.set_train_data_loader([b], idx=2)
    other = torch.optim.SGD(p.module.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="scheduler of another optimizer; build it on problem"):
        p.set_scheduler(torch.optim.lr_scheduler.StepLR(other, step_size=1))
    p.set_scheduler(torch.optim.lr_scheduler.StepLR(p.optimizer, step_size=1, gamma=0.5))
    engine.train_step()
    assert p.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(RuntimeError, match=r"set_module\(\) after the engine.*load_state_dict"):
        p.set_module(Vec(torch.zeros(2, dtype=D)))
    with pytest.raises(RuntimeError, match=r"set_optimizer\(\) after the engine.*param_groups"):
        p.set_optimizer(torch.optim.SGD(p.module.parameters(), lr=1.0))

    class Unrolled(IterativeProblem):
        training_step = Quadratic.training_step

    u = make(Unrolled)
    Engine([u], EngineConfig(train_iters=1, valid_step=0))
    with pytest.raises(ValueError, match="IterativeProblem does not take a scheduler"):
        u.set_scheduler(torch.optim.lr_scheduler.StepLR(u.optimizer, step_size=1))


# ------------------------------------------------------------ members not provided
@pytest.mark.parametrize("name", sorted(NOT_PROVIDED))
def test_members_not_provided_say_what_to_use(name: str) -> None:
    p = make()
    assert not hasattr(p, name)
    with pytest.raises(AttributeError, match=rf"'p': Betty's Problem.{name} is not provided: "):
        getattr(p, name)


def test_a_problem_named_like_a_member_not_provided_is_still_reachable() -> None:
    p, other = make(), make(name="backward")
    Engine([p, other], EngineConfig(train_iters=1, valid_step=0))
    assert p.backward is other


def _public_names() -> set[str]:
    p = make()
    return {n for n in dir(p) if not n.startswith("_")}


def _differences() -> str:
    text = README.read_text()
    start = text.index("### Differences from Betty 0.2.1")
    return text[start : text.index("\n## ", start)]


def test_the_readme_lists_every_member_of_betty_that_is_not_provided() -> None:
    missing = BETTY_PROBLEM_NAMES - _public_names()
    assert missing == set(NOT_PROVIDED)
    bullet = re.search(
        r"^- \*\*`Problem` members not provided\*\*(.*?)(?=^- |\Z)", _differences(), re.M | re.S
    )
    assert bullet is not None
    assert set(re.findall(r"`([a-z_]+)`", bullet.group(1))) == missing
    setters = re.search(
        r"^- \*\*`Problem` setters:\*\*(.*?)(?=^- |\Z)", _differences(), re.M | re.S
    )
    assert setters is not None
    assert {"set_module", "set_optimizer", "set_scheduler", "set_train_data_loader"} <= set(
        re.findall(r"`(\w+)", setters.group(1))
    )
