"""The Betty-compatible surface: bad input, tutorial style, legacy keywords, data handling."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from torch import nn

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import cg
from ziggurat.problems import ImplicitProblem, Problem


def make(cls, name, loader=None, **config):
    module = nn.Linear(2, 1)
    return cls(
        name=name,
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        train_data_loader=[torch.ones(3, 2)] if loader is None else loader,
        config=Config(**config),
    )


class Lower(ImplicitProblem):
    def training_step(self, batch):
        return (self.module(batch) - self.upper(batch)).pow(2).mean()


class Upper(ImplicitProblem):
    def training_step(self, batch):
        return self.lower(batch).pow(2).mean()


def pair(**lower_config):
    up, low = make(Upper, "upper"), make(Lower, "lower", **lower_config)
    return up, low, {"u2l": {up: [low]}, "l2u": {low: [up]}}


# ---------------------------------------------------------------- dependency errors
def test_cycle_is_named() -> None:
    a, b, c = make(Upper, "a"), make(Upper, "b"), make(Upper, "c")
    with pytest.raises(
        ValueError, match=r"cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"
    ):
        Engine(problems=[a, b, c], dependencies={"l2u": {a: [b], b: [c], c: [a]}})


def test_unknown_name_in_u2l_lists_known_problems() -> None:
    up, low, _ = pair()
    with pytest.raises(ValueError, match=r"'ghost'.*not in `problems`.*\['lower', 'upper'\]"):
        Engine(problems=[up, low], dependencies={"u2l": {"upper": ["ghost"]}, "l2u": {low: [up]}})


def test_problem_in_dependencies_but_not_in_problems() -> None:
    up, _, deps = pair()
    with pytest.raises(ValueError, match=r"'lower'.*not in `problems`.*add it"):
        Engine(problems=[up], dependencies=deps)


def test_duplicate_names() -> None:
    a, b = make(Upper, "same"), make(Lower, "same")
    with pytest.raises(ValueError, match=r"duplicate problem names \['same'\]"):
        Engine(problems=[a, b])


def test_u2l_edge_without_path_back() -> None:
    up, low = make(Upper, "upper"), make(Lower, "lower")
    with pytest.raises(ValueError, match=r"u2l edge upper -> lower has no l2u path.*add l2u"):
        Engine(problems=[up, low], dependencies={"u2l": {up: [low]}})


def test_unknown_dependency_key() -> None:
    up, low, _ = pair()
    with pytest.raises(ValueError, match=r"unknown keys \['l2l'\]"):
        Engine(problems=[up, low], dependencies={"l2l": {}})


# ---------------------------------------------------------------- runtime errors
def test_non_scalar_loss_names_the_problem() -> None:
    class Bad(ImplicitProblem):
        def training_step(self, batch):
            return self.module(batch)

    bad = make(Bad, "bad")
    with pytest.raises(ValueError, match=r"problem 'bad'.*shape \(3, 1\).*return a scalar"):
        Engine(problems=[bad], config=EngineConfig(train_iters=1)).run()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_loss_names_problem_and_step(value: float) -> None:
    class Blows(ImplicitProblem):
        def training_step(self, batch):
            loss = self.module(batch).pow(2).mean()
            return loss * value if self.count == 3 else loss

    p = make(Blows, "blows")
    with pytest.raises(
        FloatingPointError, match=r"problem 'blows'.*(nan|inf) at global step 3, local step 3"
    ):
        Engine(problems=[p], config=EngineConfig(train_iters=5)).run()


def test_missing_training_step() -> None:
    p = make(ImplicitProblem, "plain")
    with pytest.raises(NotImplementedError, match=r"'plain'.*must define training_step"):
        Engine(problems=[p], config=EngineConfig(train_iters=1))  # at construction


def test_missing_module_and_optimizer() -> None:
    with pytest.raises(
        ValueError, match=r"'nomod' has no module: pass module= or define configure_module"
    ):
        Engine(problems=[Lower(name="nomod", config=Config(), train_data_loader=[1])])
    with pytest.raises(ValueError, match=r"'noopt' has no optimizer: pass optimizer="):
        Engine(problems=[Lower(name="noopt", module=nn.Linear(1, 1), train_data_loader=[1])])


def test_empty_data_loader() -> None:
    p = make(Lower, "lower", loader=[])
    up = make(Upper, "upper")
    with pytest.raises(ValueError, match=r"problem 'lower': its train_data_loader is empty"):
        Engine(
            problems=[up, p],
            dependencies={"u2l": {up: [p]}, "l2u": {p: [up]}},
            config=EngineConfig(train_iters=1),
        ).run()


def test_unknown_problem_name_inside_training_step() -> None:
    class Typo(ImplicitProblem):
        def training_step(self, batch):
            return self.uper(batch).pow(2).mean()

    p = make(Typo, "typo")
    with pytest.raises(
        AttributeError, match=r"no attribute or problem named 'uper'; known problems: \['typo'\]"
    ):
        Engine(problems=[p], config=EngineConfig(train_iters=1)).run()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Config(type="cgg"), r"Config type must be one of .*'cg'.*got 'cgg'"),
        (lambda: Config(unroll_steps=0), r"Config unroll_steps must be an integer >= 1, got 0"),
        (lambda: Config(neumann_alpha=-1.0), r"Config neumann_alpha must be a finite number > 0"),
        (lambda: Config(precision="fp8"), r"Config precision must be one of"),
        (lambda: Config(cg_alpha=0), r"Config cg_alpha"),
        (lambda: EngineConfig(strategy="mpi"), r"EngineConfig strategy must be one of"),
        (lambda: EngineConfig(early_stopping_mode="up"), r"early_stopping_mode must be one of"),
        (lambda: EngineConfig(train_iters=-1), r"train_iters must be an integer >= 0"),
        # a string or an int is truthy: these would turn features on
        (lambda: Config(first_order="no"), r"Config first_order must be True or False, got 'no'"),
        (lambda: Config(retain_graph=1), r"Config retain_graph must be True or False, got 1"),
        (lambda: Config(log_local_step="yes"), r"Config log_local_step must be True or False"),
        (lambda: Config(cg_warm_start="no"), r"Config cg_warm_start must be True or False"),
        (lambda: Config(allow_unused=None), r"Config allow_unused must be True or False"),
        (lambda: Config(fp16="no"), r"Config fp16 must be True or False, got 'no'"),
        (lambda: Config(steps=2.5), r"Config unroll_steps must be an integer >= 1, got 2.5"),
        (lambda: Config(gradient_clipping=True), r"gradient_clipping must be a finite number >= 0"),
        (lambda: Config(darts_alpha=True), r"darts_alpha must be a finite number > 0, got True"),
        (lambda: EngineConfig(early_stopping="false"), r"early_stopping must be True or False"),
        (lambda: EngineConfig(resume="no"), r"EngineConfig resume must be True or False"),
        (lambda: EngineConfig(roll_back="False"), r"EngineConfig roll_back must be True or False"),
        (lambda: EngineConfig(distributed="no"), r"EngineConfig distributed must be True or"),
        (lambda: EngineConfig(backend="foo"), r"backend must be None .*'gloo', 'nccl'.*'foo'"),
        (lambda: EngineConfig(backend="cpu:gloo,cuda:nccl2"), r"EngineConfig backend must be"),
        (lambda: EngineConfig(backend=1), r"EngineConfig backend must be"),
        (lambda: EngineConfig(early_stopping_metric=None), r"early_stopping_metric must be a str"),
        (lambda: EngineConfig(log_dir=None), r"EngineConfig log_dir must be a string, got None"),
        (lambda: EngineConfig(run_name=3), r"run_name must be a string or None, got 3"),
        (lambda: EngineConfig(plateau_metric=3), r"plateau_metric must be a string or None"),
        (lambda: EngineConfig(checkpoint_dir=5), r"checkpoint_dir must be a string or None"),
    ],
)
def test_bad_option_values(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_good_text_and_backend_options_are_kept(tmp_path) -> None:
    assert EngineConfig(backend="gloo").backend == "gloo"
    assert EngineConfig(backend="cpu:gloo,cuda:nccl").backend == "cpu:gloo,cuda:nccl"
    assert EngineConfig(checkpoint_dir=tmp_path).checkpoint_dir == str(tmp_path)
    assert EngineConfig(log_dir=tmp_path, run_name=None).log_dir == str(tmp_path)
    assert Config(fp16=True, steps=3).unroll_steps == 3


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: Config(darts_multitask=True),
            r"darts_multitask=True is not supported.*darts_alpha",
        ),
        (
            lambda: Config(type="sama", sama_multitask=True),
            r"sama_multitask=True is not supported.*sama_adam_alpha",
        ),
        (lambda: Config(type="reinforce"), r"type='reinforce' is not a best-response method"),
        (lambda: EngineConfig(strategy="accelerate"), r"'accelerate' is not supported.*torchrun"),
    ],
    ids=["darts_multitask", "sama_multitask", "reinforce", "accelerate"],
)
def test_betty_options_that_would_be_ignored_are_refused(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()
    assert not Config().darts_multitask and not Config(darts_multitask=False).sama_multitask


def test_unknown_option_names_the_valid_ones() -> None:
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['unrol_steps'\]"):
        Config(unrol_steps=2)


def test_name_clashing_with_an_attribute() -> None:
    with pytest.raises(ValueError, match=r"'train' clashes"):
        make(Lower, "train")


# ---------------------------------------------------------------- compatibility
def test_legacy_keywords_map_to_current_fields() -> None:
    assert Config(fp16=True).precision == "fp16"
    assert Config(fp16=False).precision == "fp32"
    assert EngineConfig(distributed=True).strategy == "ddp"
    assert EngineConfig(strategy="distributed").strategy == "ddp"
    assert EngineConfig(roll_back=True).roll_back


def test_config_hypergradient_overrides_type() -> None:
    method = cg(7)
    assert Config(type="darts", hypergradient=method).method() is method
    assert Config(type="neumann", neumann_iterations=3).method().solver.iterations == 3


def test_cg_alpha_does_not_change_the_answer() -> None:
    class Ridge(Lower):  # an SPD Hessian (2/3 X^T X + I): CG is exact in 3 iterations
        def training_step(self, batch):
            fit = super().training_step(batch)
            return fit + 0.5 * sum(p.pow(2).sum() for p in self.module.parameters())

    def upper_grad(**config):
        torch.manual_seed(0)
        up = make(Upper, "upper", loader=[torch.randn(3, 2)])
        low = make(Ridge, "lower", loader=[torch.randn(3, 2)], **config)
        seen = []
        up.grad_callback = lambda: seen.append(up.module.weight.grad.clone())
        deps = {"u2l": {up: [low]}, "l2u": {low: [up]}}
        Engine(problems=[up, low], dependencies=deps, config=EngineConfig(train_iters=1)).run()
        return seen[0]

    exact = upper_grad(type="exact")
    assert exact.abs().max() > 1e-3
    for alpha in (0.1, 1.0, 7.0):
        assert Config(type="cg", cg_alpha=alpha).method() == Config(type="cg").method()
        got = upper_grad(type="cg", cg_iterations=3, cg_alpha=alpha)
        torch.testing.assert_close(got, exact, rtol=1e-4, atol=1e-6)


def test_tutorial_style_configure_hooks_device_and_dict_loss() -> None:
    xs = torch.linspace(-1, 1, 8).unsqueeze(1)

    class Tutorial(ImplicitProblem):
        def configure_module(self):
            return nn.Linear(1, 1)

        def configure_optimizer(self):
            return torch.optim.SGD(self.module.parameters(), lr=0.3)

        def configure_scheduler(self):
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=10, gamma=0.5)

        def configure_train_data_loader(self):
            return [(xs, 3 * xs + 1)]

        def training_step(self, batch):
            x, y = batch
            loss = (self.module(x) - y).pow(2).mean()
            return {"loss": loss, "mae": (self.module(x) - y).abs().mean()}

    p = Tutorial(name="tutorial", config=Config(), device="cpu")
    Engine(problems=[p], config=EngineConfig(train_iters=60)).run()
    assert p.last_metrics["mae"] < 0.05
    assert p.scheduler.get_last_lr()[0] == pytest.approx(0.3 * 0.5**6)
    assert abs(float(p.module.weight.detach()) - 3.0) < 0.05


Pair = namedtuple("Pair", ["x", "y"])


def nested_batch():
    return {
        "pair": Pair(torch.ones(2), [torch.zeros(3), (torch.ones(1), "tag")]),
        "list": [[torch.zeros(2, 2)], 7],
    }


def leaves(batch):
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        return [t for v in batch.values() for t in leaves(v)]
    if isinstance(batch, (list, tuple)):
        return [t for v in batch for t in leaves(v)]
    return []


def test_to_device_moves_every_tensor_and_keeps_the_containers() -> None:
    from ziggurat.problems._data import to_device

    # the meta device has no data, so a tensor is there only if it was moved there
    moved = to_device(nested_batch(), torch.device("meta"))
    assert [t.device.type for t in leaves(moved)] == ["meta"] * 4
    assert isinstance(moved["pair"], Pair) and isinstance(moved["pair"].y, list)
    assert isinstance(moved["pair"].y[1], tuple) and moved["pair"].y[1][1] == "tag"
    assert moved["list"][1] == 7 and moved["list"][0][0].shape == (2, 2)
    assert to_device(nested_batch(), None)["list"][0][0].device.type == "cpu"


def test_several_loaders_give_a_tuple_and_nested_batches_reach_the_device() -> None:
    class Multi(ImplicitProblem):
        def training_step(self, batch):
            return self.module(batch[0]["x"]).pow(2).mean()

        def configure_optimizer(self):  # after the move: to("meta") replaces the parameters
            return torch.optim.SGD(self.module.parameters(), lr=0.1)

    p = Multi(
        name="multi",
        module=nn.Linear(2, 1),
        train_data_loader=([{"x": torch.ones(3, 2)}], [nested_batch()]),
        config=Config(),
        device="meta",
    )
    Engine(problems=[p], config=EngineConfig(train_iters=0))
    first, second = p.get_batch()  # one batch per loader, each moved as a whole
    assert first["x"].device.type == "meta" and first["x"].shape == (3, 2)
    assert [t.device.type for t in leaves(second)] == ["meta"] * 4
    assert isinstance(second["pair"], Pair)


def test_loaders_cycle_and_call_epoch_callback() -> None:
    epochs = []

    class Cyc(ImplicitProblem):
        def training_step(self, batch):
            return self.module(batch).pow(2).mean()

        def epoch_callback(self):
            epochs.append(self.count)

    p = make(Cyc, "cyc", loader=[torch.ones(1, 2), torch.zeros(1, 2)])
    Engine(problems=[p], config=EngineConfig(train_iters=5)).run()
    assert epochs == [3, 5]


def test_imports_match_betty_layout() -> None:
    import ziggurat.engine
    import ziggurat.hypergradient
    import ziggurat.problems

    assert ziggurat.Engine is ziggurat.engine.Engine
    assert issubclass(ziggurat.problems.ImplicitProblem, Problem)


def test_engine_reaches_problems_by_name_and_reports_unknown() -> None:
    up, low, deps = pair()
    engine = Engine(problems=[up, low], dependencies=deps, config=EngineConfig(train_iters=0))
    assert engine.upper is up and low.upper is up
    with pytest.raises(AttributeError, match=r"known problems: \['lower', 'upper'\]"):
        _ = engine.middle


def test_iterative_problem_rejects_a_scheduler_and_unsupported_optimizers() -> None:
    from ziggurat.problems import IterativeProblem

    class It(IterativeProblem):
        def training_step(self, batch):
            return self.forward(batch).pow(2).mean()

    module = nn.Linear(2, 1)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    with_sched = It(
        name="it",
        module=module,
        optimizer=opt,
        train_data_loader=[torch.ones(1, 2)],
        scheduler=torch.optim.lr_scheduler.StepLR(opt, 1),
    )
    with pytest.raises(ValueError, match=r"'it': IterativeProblem does not take a scheduler"):
        Engine(problems=[with_sched])
    rms = It(
        name="it",
        module=module,
        optimizer=torch.optim.RMSprop(module.parameters()),
        train_data_loader=[torch.ones(1, 2)],
    )
    with pytest.raises(TypeError, match=r"no differentiable twin for RMSprop"):
        Engine(problems=[rms])


def test_hypergradient_evaluations_leave_batch_norm_statistics_untouched() -> None:
    class BNLower(ImplicitProblem):
        def training_step(self, batch):
            return (self.module(batch) * self.upper(batch)).pow(2).mean()

    class BNUpper(ImplicitProblem):
        def training_step(self, batch):
            return self.lower(batch).pow(2).mean()

    low_mod = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    up_mod = nn.Linear(2, 1)
    low = BNLower(
        name="lower",
        module=low_mod,
        train_data_loader=[torch.randn(4, 2)],
        optimizer=torch.optim.SGD(low_mod.parameters(), lr=0.0),
        config=Config(type="cg", cg_iterations=3),
    )
    up = BNUpper(
        name="upper",
        module=up_mod,
        train_data_loader=[torch.randn(4, 2)],
        optimizer=torch.optim.SGD(up_mod.parameters(), lr=0.0),
    )
    Engine(
        problems=[up, low],
        dependencies={"u2l": {up: [low]}, "l2u": {low: [up]}},
        config=EngineConfig(train_iters=1),
    ).run()
    # one lower step and one upper step read the lower module in train mode: two updates;
    # the hypergradient's pure-loss evaluations must not add more
    assert int(low_mod[1].num_batches_tracked) == 2


def test_env_reaches_problems_and_drives_batches_from_train_step() -> None:
    from ziggurat.envs import Env

    class Tasks(Env):
        def initialize(self):
            self.task = 0.0

        def step(self):
            self.task += 1.0

    class Learner(ImplicitProblem):
        def get_batch(self):
            return torch.full((2, 1), self.env.task)

        def training_step(self, batch):
            return (self.module(batch) - 2 * batch).pow(2).mean()

    class TaskEngine(Engine):
        def train_step(self):
            self.env.step()
            super().train_step()

    module = nn.Linear(1, 1)
    learner = Learner(
        name="learner",
        module=module,
        config=Config(),
        optimizer=torch.optim.SGD(module.parameters(), lr=0.0),
    )
    env = Tasks()
    engine = TaskEngine(problems=[learner], env=env, config=EngineConfig(train_iters=3))
    assert env.learner is learner and env.device == engine.device and learner.env is env
    engine.run()
    assert env.task == 3.0 and float(learner.cur_batch[0, 0]) == 3.0


def test_betty_style_train_step_override_that_steps_the_leaves_itself() -> None:
    """Betty's iMAML example overrides ``train_step`` and steps the leaves directly, without
    ``super()``; ``run`` must still count iterations (it once looped forever)."""
    seen = []

    class Learner(ImplicitProblem):
        def training_step(self, batch):
            return self.module(torch.ones(1, 1)).pow(2).sum()

    class OwnLoop(Engine):
        def train_step(self):
            seen.append(self.global_step)
            for leaf in self.leaves:
                leaf.step(global_step=self.global_step)

    module = nn.Linear(1, 1)
    learner = Learner(
        name="learner",
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        train_data_loader=[None],
    )
    OwnLoop([learner], EngineConfig(train_iters=3, valid_step=0)).run()
    assert seen == [1, 2, 3] and learner.count == 3


def test_problem_state_dict_round_trips_module_optimizer_scheduler_and_scaler() -> None:
    def make(lr: float, scale: float):
        module = nn.Linear(2, 1)
        opt = torch.optim.Adam(module.parameters(), lr=lr)
        p = ImplicitProblem(
            name="p",
            module=module,
            optimizer=opt,
            scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        )
        p.scaler = torch.amp.GradScaler("cpu", init_scale=scale)  # as fp16 would on CUDA
        return p

    src = make(0.1, 8.0)
    src.module(torch.ones(1, 2)).sum().backward()
    src.optimizer.step()
    src.scheduler.step()
    dst = make(0.3, 1.0)
    dst.load_state_dict(src.state_dict())
    assert dst.scaler.get_scale() == 8.0
    assert dst.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    for a, b in zip(src.module.parameters(), dst.module.parameters(), strict=True):
        assert torch.equal(a, b)
    assert int(dst.optimizer.state_dict()["state"][0]["step"]) == 1
