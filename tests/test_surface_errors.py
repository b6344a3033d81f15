"""Construction-time refusals and the hooks a problem's update calls (CPU, float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem, IterativeProblem

D = torch.float64
X = torch.randn(8, 3, dtype=D, generator=torch.Generator().manual_seed(0))


def quiet(**options):
    return EngineConfig(valid_step=0, logger_type="none", progress=False, **options)


class Fit(ImplicitProblem):
    """``mean((module(x) - 1)^2)``."""

    def training_step(self, batch):
        return (self.module(batch) - 1.0).pow(2).mean()


class Upper(ImplicitProblem):
    def training_step(self, batch):
        return self.lower(batch).pow(2).mean()


class Lower(ImplicitProblem):
    def training_step(self, batch):
        return (self.module(batch) - self.upper(batch)).pow(2).mean()


class Unrolled(IterativeProblem):
    def training_step(self, batch):
        return (self(batch) - self.upper(batch)).pow(2).mean()


def linear(d_in=3):
    return nn.Linear(d_in, 1).double()


def problem(cls, name, module=None, optimizer=None, **config):
    module = linear() if module is None else module
    if optimizer is None:
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    return cls(
        name=name,
        module=module,
        optimizer=optimizer,
        train_data_loader=[X],
        config=Config(**config),
    )


def two_levels(lower_cls=Lower, lower_module=None, lower_optimizer=None, **lower_config):
    up = problem(Upper, "upper")
    low = problem(lower_cls, "lower", lower_module, lower_optimizer, **lower_config)
    return [up, low], {"u2l": {up: [low]}, "l2u": {low: [up]}}


# ---------------------------------------------------------------- item: subset optimizers
@pytest.mark.parametrize("cls", [Lower, Unrolled], ids=["implicit", "iterative"])
def test_optimizer_over_part_of_the_trainable_parameters_is_refused(cls) -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    head_only = torch.optim.SGD(net[2].parameters(), lr=0.1)
    problems, deps = two_levels(cls, net, head_only)
    with pytest.raises(
        ValueError,
        match=r"problem 'lower': 2 trainable parameter\(s\) of its module are not in its "
        r"optimizer \('0\.weight', '0\.bias'\).*requires_grad_\(False\)",
    ):
        Engine(problems, quiet(train_iters=1), deps)


@pytest.mark.parametrize("cls", [Lower, Unrolled], ids=["implicit", "iterative"])
def test_frozen_parameters_outside_the_optimizer_stay_untouched(cls) -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    net[0].requires_grad_(False)
    first, head = net[0].weight.detach().clone(), net[2].weight.detach().clone()
    problems, deps = two_levels(cls, net, torch.optim.SGD(net[2].parameters(), lr=0.1))
    Engine(problems, quiet(train_iters=4), deps).run()
    assert torch.equal(net[0].weight, first) and net[0].weight.grad is None
    assert not torch.equal(net[2].weight, head)


# ---------------------------------------------------------------- item: Betty overrides
def test_trainable_parameters_override_is_refused() -> None:
    class Narrowed(Lower):
        def trainable_parameters(self):
            return [self.module.weight]

    problems, deps = two_levels(Narrowed)
    with pytest.raises(
        TypeError,
        match=r"'lower' overrides trainable_parameters\(\), which ziggurat does not honour.*"
        r"requires_grad_\(False\)",
    ):
        Engine(problems, quiet(train_iters=1), deps)


# ---------------------------------------------------------------- item: update hooks
class Counted(Fit):
    """A custom step of ``w -= 0.25 grad`` and a clamp of the bias to <= 0.5, counted."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0
        self.callbacks = 0

    def custom_optimizer_step(self, *args, **kwargs):
        self.steps += 1
        with torch.no_grad():
            for p in self.module.parameters():
                p -= 0.25 * p.grad

    def param_callback(self):
        self.callbacks += 1
        with torch.no_grad():
            self.module.bias.clamp_(max=0.5)


def test_custom_optimizer_step_and_param_callback_run_once_per_update() -> None:
    module = nn.Linear(1, 1, bias=True).double()
    with torch.no_grad():
        module.weight.zero_()
        module.bias.zero_()
    # the torch optimizer's lr of 0 moves nothing: only the custom step can
    p = problem(Counted, "fit", module, torch.optim.SGD(module.parameters(), lr=0.0))
    p.train_data_loader = [torch.zeros(4, 1, dtype=D)]
    p.config.gradient_accumulation = 2
    Engine([p], quiet(train_iters=6)).run()
    assert p.steps == 3 and p.callbacks == 3
    # loss (b - 1)^2, gradient 2 (b - 1) over an accumulation window of 2 halves: each update
    # is b -= 0.25 * 2 (b - 1), i.e. 0 -> 0.5 -> 0.75 (clamped to 0.5) -> 0.75 (clamped)
    assert module.bias.item() == 0.5
    assert module.weight.item() == 0.0  # zero inputs: no gradient on the weight


def test_custom_optimizer_step_with_fp16_is_refused() -> None:
    p = problem(Counted, "fit", precision="fp16")
    with pytest.raises(ValueError, match=r"'fit' overrides custom_optimizer_step.*'fp16'"):
        Engine([p], quiet(train_iters=1))


# ---------------------------------------------------------------- item: problem names
@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("cfg", r"problem 'cfg' \(Upper\)"),
        ("paths", r"problem 'paths' \(Upper\)"),
        ("ready", r"problem 'ready' \(Upper\)"),
        ("cur_batch", r"problem 'cur_batch' \(Upper\)"),
        ("graph", r"the Engine"),
        ("leaves", r"the Engine"),
        ("augment", r"problem 'lower' \(Augmenting\)"),
    ],
)
def test_problem_name_that_an_attribute_would_shadow_is_refused(name, owner) -> None:
    class Augmenting(Lower):
        def augment(self, x):
            return x

    up = problem(Upper, name)
    low = problem(Augmenting, "lower")
    with pytest.raises(
        ValueError, match=rf"problem name '{name}' clashes with the attribute '{name}' of {owner}"
    ):
        Engine([up, low], quiet(train_iters=1), {"u2l": {up: [low]}, "l2u": {low: [up]}})


def test_private_problem_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'_hidden' starts with '_'.*rename"):
        Engine([problem(Fit, "_hidden")], quiet(train_iters=1))


# ---------------------------------------------------------------- item: wrong types
def test_wrong_type_module_or_optimizer_names_the_type() -> None:
    with pytest.raises(TypeError, match=r"'fit': got Linear as its optimizer; expected a torch"):
        Engine([Fit(name="fit", module=linear(), optimizer=linear(), train_data_loader=[X])])
    with pytest.raises(TypeError, match=r"'fit': got list as its module; expected an nn.Module"):
        Engine([Fit(name="fit", module=[linear()], train_data_loader=[X])])


# ---------------------------------------------------------------- item: early stopping
class Validated(Engine):
    def __init__(self, *args, values=None, **kwargs):
        self.values = values
        super().__init__(*args, **kwargs)

    def validation(self):
        return self.values


@pytest.mark.parametrize(
    ("engine_class", "options", "match"),
    [
        (Validated, {"valid_step": 0}, r"early_stopping=True .*valid_step=0 disables validation"),
        (Validated, {"valid_step": -1}, r"valid_step=-1 disables validation"),
        (Engine, {"valid_step": 2}, r"Engine does not override validation\(\)"),
    ],
)
def test_early_stopping_without_validation_is_refused_before_training(
    engine_class, options, match
) -> None:
    p = problem(Fit, "fit")
    engine = engine_class(
        [p], EngineConfig(train_iters=4, logger_type="none", early_stopping=True, **options)
    )
    with pytest.raises(ValueError, match=match):
        engine.run()
    assert engine.global_step == 0 and p.count == 0


def test_validation_returning_none_under_early_stopping_is_an_error() -> None:
    p = problem(Fit, "fit")
    config = EngineConfig(train_iters=4, valid_step=2, logger_type="none", early_stopping=True)
    engine = Validated([p], config, values=None)
    with pytest.raises(ValueError, match=r"validation\(\) returned None at global step 2"):
        engine.run()


# ---------------------------------------------------------------- item: IterativeProblem state
def test_iterative_problem_state_dict_round_trips_params_and_optimizer_state() -> None:
    def build():
        torch.manual_seed(0)
        up = problem(Upper, "upper")
        module = linear()
        low = problem(
            Unrolled, "lower", module, torch.optim.Adam(module.parameters(), lr=0.1), unroll_steps=2
        )
        engine = Engine([up, low], quiet(train_iters=4), {"u2l": {up: [low]}, "l2u": {low: [up]}})
        return engine, low

    engine, low = build()
    engine.run()
    state = low.state_dict()
    assert state["opt_state"]["step"] == 4
    assert set(state["opt_state"]["buffers"]) == {"exp_avg", "exp_avg_sq"}
    assert state["params"].keys() == {"weight", "bias"}

    _, fresh = build()
    fresh.load_state_dict(state)
    for k, t in low.params.items():
        assert torch.equal(fresh.params[k], t) and fresh.params[k].requires_grad
        assert torch.equal(dict(fresh.module.named_parameters())[k], t)
    for name, tree in low._opt_state.buffers.items():
        for k, t in tree.items():
            assert torch.equal(fresh.get_opt_state_for_param(fresh.params[k])[name], t)
    assert fresh.get_opt_state_for_param(fresh.params["weight"])["step"] == 4
    with pytest.raises(ValueError, match=r"'lower': the state has no \['params', 'opt_state'\]"):
        fresh.load_state_dict({"module": state["module"], "optimizer": state["optimizer"]})
