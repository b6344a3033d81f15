"""Catalogue of bad programs: options, dependency graphs, modules, losses, data and user code.

Each case asserts the exception type and the words of its message that name the problem, the
level and the fix (or the correct result where the input is valid). Cases the hypergradient
health checks cover (non-finite values, diverged solves, structurally-zero paths) live with
those checks.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import cg
from ziggurat.problems import ImplicitProblem, IterativeProblem

D = torch.float64
X = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(0))


def quiet(**options):
    return EngineConfig(valid_step=0, logger_type="none", progress=False, **options)


# ------------------------------------------------------------------------------------ options
@pytest.mark.parametrize(
    ("options", "words"),
    [
        (
            {"cg_iterations": 50},
            r"Config options \['cg_iterations'\] have no effect: this Config has type='darts' "
            r"\(the default\).*cg_iterations by type='cg'",
        ),
        (
            {"type": "darts", "neumann_iterations": 3, "cg_tol": 1e-3},
            r"\['cg_tol', 'neumann_iterations'\] have no effect: this Config has "
            r"type='darts', .*cg_tol by type='cg', neumann_iterations by type='neumann'",
        ),
        (
            {"type": "first_order", "darts_alpha": 0.1},
            r"\['darts_alpha'\].*type='first_order'.*darts_alpha by type='darts'",
        ),
        (
            {"type": "neumann", "penalty_steps": 4},
            r"\['penalty_steps'\].*penalty_steps by type='penalty'",
        ),
        (
            {"hypergradient": cg(3), "cg_iterations": 5},
            r"\['cg_iterations'\] have no effect: the explicit hypergradient=.* is used instead",
        ),
    ],
    ids=["cg-without-type", "two-methods", "first-order", "penalty", "explicit-method"],
)
def test_method_options_the_method_never_reads_warn(options, words) -> None:
    with pytest.warns(UserWarning, match=words):
        Config(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"type": "cg", "cg_iterations": 5, "cg_tol": 1e-6, "cg_alpha": 0.5},
        {"type": "neumann", "neumann_iterations": 2, "neumann_alpha": 0.1},
        {"type": "darts", "darts_alpha": 0.1, "curvature": "finite_difference"},
        {"type": "darts", "hypergradient": cg(3)},
        {},
    ],
    ids=["cg", "neumann", "darts-curvature", "explicit-over-type", "defaults"],
)
def test_options_the_method_reads_do_not_warn(options) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Config(**options)


# ------------------------------------------------------------------------- modules and levels
class Fit(ImplicitProblem):
    def training_step(self, batch):
        return (self.module(batch) - 1.0).pow(2).mean()


class Upper(ImplicitProblem):
    def training_step(self, batch):
        return self.lower(batch).pow(2).mean()


class Lower(ImplicitProblem):
    def training_step(self, batch):
        return (self.module(batch) - self.upper(batch)).pow(2).mean()


def linear() -> nn.Module:
    return nn.Linear(3, 1).double()


def level(cls, name, module=None, optimizer=None, scheduler=None, **config):
    module = linear() if module is None else module
    if optimizer is None:
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    return cls(
        name,
        Config(**config),
        module=module,
        optimizer=optimizer,
        scheduler=scheduler,
        train_data_loader=[X],
    )


BILEVEL = {"u2l": {"upper": ["lower"]}, "l2u": {"lower": ["upper"]}}


def test_an_engine_without_problems_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Engine got no problems: pass problems=\[\.\.\.\]"):
        Engine([], quiet(train_iters=1))


def test_a_single_problem_instead_of_a_list_is_refused() -> None:
    with pytest.raises(TypeError, match=r"got the single problem 'fit'; pass problems=\[fit\]"):
        Engine(level(Fit, "fit"), quiet(train_iters=1))


def test_one_module_given_to_two_levels_is_refused_naming_both_and_the_tensors() -> None:
    shared = linear()
    problems = [level(Upper, "upper", shared), level(Lower, "lower", shared)]
    with pytest.raises(
        ValueError,
        match=r"problems 'upper' and 'lower' share 2 trainable tensor\(s\) \(\['bias', "
        r"'weight'\] in 'upper'\): the same nn.Module or parameter was given to both levels.*"
        r"copy.deepcopy",
    ):
        Engine(problems, quiet(train_iters=1), BILEVEL)


def test_a_parameter_of_another_level_in_an_optimizer_is_refused() -> None:
    up_module, low_module = linear(), linear()
    greedy = torch.optim.SGD([*low_module.parameters(), up_module.weight], lr=0.1)
    problems = [level(Upper, "upper", up_module), level(Lower, "lower", low_module, greedy)]
    with pytest.raises(
        ValueError,
        match=r"problems 'upper' and 'lower' share 1 trainable tensor\(s\) \(\['weight'\] in "
        r"'upper', \['<optimizer param group 0, tensor 2>'\] in 'lower'\)",
    ):
        Engine(problems, quiet(train_iters=1), BILEVEL)


def test_a_frozen_module_shared_by_two_levels_is_allowed() -> None:
    features = nn.Linear(3, 3).double().requires_grad_(False)
    up_module, low_module = nn.Sequential(features, linear()), nn.Sequential(features, linear())
    problems = [level(Upper, "upper", up_module), level(Lower, "lower", low_module)]
    before = features.weight.detach().clone()
    Engine(problems, quiet(train_iters=2), BILEVEL).run()
    assert torch.equal(features.weight, before)


def test_a_level_without_trainable_parameters_is_refused() -> None:
    frozen = linear().requires_grad_(False)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"problem 'fit' has no trainable parameter: its module \(Linear\) has 2 "
        r"parameter\(s\), none with requires_grad=True",
    ):
        Engine([level(Fit, "fit", frozen, optimizer)], quiet(train_iters=1))


def test_a_level_whose_module_has_no_parameters_is_refused() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"problem 'fit' has no trainable parameter: .* has none"):
        Engine([level(Fit, "fit", nn.Identity(), optimizer)], quiet(train_iters=1))


@pytest.mark.parametrize("plateau", [False, True], ids=["step-lr", "plateau"])
def test_a_scheduler_built_on_another_optimizer_is_refused(plateau) -> None:
    module = linear()
    other = torch.optim.SGD(module.parameters(), lr=0.1)
    lr = torch.optim.lr_scheduler
    scheduler = lr.ReduceLROnPlateau(other) if plateau else lr.StepLR(other, 1)
    fit = level(Fit, "fit", module, torch.optim.SGD(module.parameters(), lr=0.1), scheduler)
    with pytest.raises(
        ValueError,
        match=r"problem 'fit': its scheduler \((StepLR|ReduceLROnPlateau)\) was built on "
        r"another optimizer \(SGD\) than the level's \(SGD\), so the level's learning rate "
        r"would never change.*self.optimizer",
    ):
        Engine([fit], quiet(train_iters=1))


def test_a_scheduler_from_configure_scheduler_on_self_optimizer_decays_the_rate() -> None:
    class Scheduled(Fit):
        def configure_scheduler(self):
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)

    module = linear()
    fit = Scheduled(
        "fit",
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        train_data_loader=[X],
    )
    Engine([fit], quiet(train_iters=3)).run()
    assert fit.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


# ----------------------------------------------------------------------------- scheduling
class Counting(ImplicitProblem):
    """Steps without computing anything (the scheduling of ``Problem.step`` is all that runs)."""

    def __init__(self, name: str, **config) -> None:
        module = nn.Linear(1, 1)
        super().__init__(
            name,
            Config(**config),
            module=module,
            optimizer=torch.optim.SGD(module.parameters(), lr=0.0),
            train_data_loader=[0],
        )

    def training_step(self, batch):  # pragma: no cover - never called
        raise AssertionError

    def one_step_descent(self, batch=None, fresh=False) -> None:
        pass


def test_unroll_steps_beyond_train_iters_is_refused_at_run_with_the_numbers() -> None:
    up, low = Counting("upper"), Counting("lower", unroll_steps=5)
    engine = Engine([up, low], quiet(train_iters=3), {"l2u": {low: [up]}})
    with pytest.raises(
        ValueError,
        match=r"problem 'upper' would never step in this run: .* 'lower' takes 3 step\(s\) in "
        r"train_iters=3 and signals its upper levels only after unroll_steps \(5\) x "
        r"gradient_accumulation \(1\) = 5 steps beyond warmup_steps \(0\), first at its step "
        r"5\. Steps per level, at most: \{'upper': 0, 'lower': 3\}\. Set EngineConfig "
        r"train_iters >= 5",
    ):
        engine.run()
    assert engine.global_step == 0 and low.count == 0


def test_the_check_reads_train_iters_when_run_starts() -> None:
    """``train_iters`` may change after construction (it is a config field)."""
    up, low = Counting("upper"), Counting("lower", unroll_steps=2, warmup_steps=3)
    engine = Engine([up, low], quiet(train_iters=3), {"l2u": {low: [up]}})
    with pytest.raises(ValueError, match=r"warmup_steps \(3\), first at its step 4.* >= 4"):
        engine.run()
    engine.config.train_iters = 4
    engine.run()
    assert (up.count, low.count) == (1, 4)


@st.composite
def programs(draw):
    """A random program: levels ``l0 .. l{n-1}``, each ``l2u`` edge from a lower index to a
    higher one, each level with random unroll, accumulation and warm-up, and a run length."""
    n = draw(st.integers(2, 4))
    edges = {i: [j for j in range(i + 1, n) if draw(st.booleans())] for i in range(n - 1)}
    options = [
        {
            "unroll_steps": draw(st.integers(1, 3)),
            "gradient_accumulation": draw(st.integers(1, 2)),
            "warmup_steps": draw(st.integers(0, 3)),
        }
        for _ in range(n)
    ]
    return n, edges, options, draw(st.integers(1, 14))


@settings(max_examples=40, deadline=None)
@given(programs())
def test_planned_steps_bound_the_steps_taken_and_agree_on_levels_that_never_step(program):
    from ziggurat.engine._program_checks import planned_steps

    n, edges, options, iters = program
    levels = [Counting(f"l{i}", **options[i]) for i in range(n)]
    deps = {"l2u": {levels[i]: [levels[j] for j in js] for i, js in edges.items() if js}}
    engine = Engine(levels, quiet(train_iters=iters), deps)
    planned = planned_steps(engine.graph, engine.problems, iters)
    for step in range(1, iters + 1):  # what run() does, without its checks
        engine.global_step = step
        engine.train_step()
    taken = {p.name: p.count for p in levels}
    one_lower_each = all(len(engine.graph.children(p.name)) <= 1 for p in levels)
    for name, count in taken.items():
        assert count <= planned[name]
        assert (count == 0) == (planned[name] == 0)
        if one_lower_each:
            assert count == planned[name]
    fresh = Engine(
        [Counting(f"l{i}", **options[i]) for i in range(n)],
        quiet(train_iters=iters),
        {"l2u": {f"l{i}": [f"l{j}" for j in js] for i, js in edges.items() if js}},
    )
    if 0 in taken.values():
        with pytest.raises(ValueError, match="would never step in this run"):
            fresh.run()
    else:
        fresh.run()
        assert {p.name: p.count for p in fresh.problems} == taken


# ------------------------------------------------------------------------ errors in user code
class UserError(Exception):
    """An error of the user's own type: it must reach the caller as it was raised."""


def _fail(*args, **kwargs):
    raise UserError("the user's own message")


HOOKS = {
    # hook: (where it is defined, the global step its note names)
    "training_step": ("problem", 1),
    "on_inner_loop_start": ("problem", 1),
    "grad_callback": ("problem", 1),
    "custom_optimizer_step": ("problem", 1),
    "param_callback": ("problem", 1),
    "epoch_callback": ("problem", 2),  # the second batch starts the second epoch
    "configure_module": ("init", None),
    "configure_optimizer": ("init", None),
    "configure_scheduler": ("init", None),
    "configure_train_data_loader": ("init", None),
    "validation": ("engine", 1),
}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="notes need Python 3.11")
@pytest.mark.parametrize("hook", list(HOOKS))
def test_an_error_in_user_code_keeps_its_type_and_gets_a_note_naming_level_hook_and_step(hook):
    where, step = HOOKS[hook]
    module = linear()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    fit_class = type("Buggy", (Fit,), {hook: _fail} if where != "engine" else {})
    given = {"module": module, "optimizer": optimizer, "train_data_loader": [X]}
    if hook.startswith("configure_"):
        given.pop(hook.removeprefix("configure_"), None)
    fit = fit_class("fit", Config(), **given)
    engine_class = type("MyEngine", (Engine,), {"validation": _fail} if where == "engine" else {})
    config = EngineConfig(train_iters=2, valid_step=1, logger_type="none", progress=False)
    with pytest.raises(UserError, match="the user's own message") as caught:
        engine_class([fit], config).run()
    owner = "MyEngine" if where == "engine" else "problem 'fit'"
    when = "while the engine was built" if step is None else f"at global step {step}"
    assert caught.value.__notes__ == [f"ziggurat: raised in {owner}, {hook}(), {when}"]
    assert caught.traceback[-1].name == "_fail"  # the original traceback


@pytest.mark.skipif(sys.version_info < (3, 11), reason="notes need Python 3.11")
def test_an_error_in_a_hop_names_the_lower_level_and_an_unrolled_callback_its_level() -> None:
    class BadLower(Lower):
        def training_step(self, batch):
            if self.count >= 2:  # only in the hop of the upper's step at global step 2
                raise UserError("in the hop")
            return super().training_step(batch)

    problems = [level(Upper, "upper"), level(BadLower, "lower", unroll_steps=2)]
    with pytest.raises(UserError, match="in the hop") as caught:
        Engine(problems, quiet(train_iters=2), BILEVEL).run()
    assert caught.value.__notes__ == [
        "ziggurat: raised in problem 'lower', training_step(), at global step 2"
    ]

    class Unrolled(IterativeProblem):
        def training_step(self, batch):
            return (self(batch) - self.upper(batch)).pow(2).mean()

        grad_callback = _fail

    problems = [level(Upper, "upper"), level(Unrolled, "lower")]
    with pytest.raises(UserError) as caught:
        Engine(problems, quiet(train_iters=1), BILEVEL).run()
    assert caught.value.__notes__ == [
        "ziggurat: raised in problem 'lower', grad_callback(), at global step 1"
    ]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="notes need Python 3.11")
def test_an_error_in_an_environment_s_initialize_names_it() -> None:
    from ziggurat.envs import Env

    class Tasks(Env):
        initialize = _fail

    with pytest.raises(UserError) as caught:
        Engine([level(Fit, "fit")], quiet(train_iters=1), env=Tasks())
    assert caught.value.__notes__ == [
        "ziggurat: raised in Tasks, initialize(), while the engine was built"
    ]


def test_errors_ziggurat_raises_itself_get_no_note() -> None:
    class NoLoss(Fit):
        def training_step(self, batch):
            return {"accuracy": 1.0}

    with pytest.raises(
        ValueError, match=r"problem 'fit': training_step returned a dict without"
    ) as caught:
        Engine([level(NoLoss, "fit")], quiet(train_iters=1)).run()
    assert not getattr(caught.value, "__notes__", [])


# ---------------------------------------------------------------------------------- losses
def _returns(value):
    """A level whose ``training_step`` returns ``value(self, batch)``."""
    return type("Returns", (Fit,), {"training_step": lambda self, batch: value(self, batch)})


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (
            lambda s, b: s.module(b),
            ValueError,
            r"problem 'fit': training_step returned a loss of shape \(6, 1\); return a scalar",
        ),
        (
            lambda s, b: 1.0,
            TypeError,
            r"problem 'fit': training_step must return a tensor or a dict with 'loss', got float",
        ),
        (lambda s, b: None, TypeError, r"must return a tensor or a dict with 'loss', got NoneTy"),
        (
            lambda s, b: {"accuracy": s.module(b).sum()},
            ValueError,
            r"returned a dict without 'loss' \(keys \['accuracy'\]\); add the loss under 'loss'",
        ),
        (
            lambda s, b: {"loss": s.module(b).sum(), "grade": "high"},
            TypeError,
            r"problem 'fit': training_step returned the metric 'grade' = 'high', which is not a "
            r"number",
        ),
        (
            lambda s, b: s.module(b).sum().long(),
            TypeError,
            r"problem 'fit': training_step returned a loss of dtype torch.int64, which has no "
            r"gradient",
        ),
    ],
    ids=["not-scalar", "float", "none", "no-loss-key", "metric-text", "integer-loss"],
)
def test_losses_that_cannot_be_trained_on_are_refused_naming_the_level(value, error, words):
    with pytest.raises(error, match=words):
        Engine([level(_returns(value), "fit")], quiet(train_iters=1)).run()


# ------------------------------------------------------------------------------------ data
def _once():
    yield X


@pytest.mark.parametrize(
    ("loader", "error", "words"),
    [
        ([], ValueError, r"problem 'fit': its train_data_loader is empty; give it at least one"),
        (5, TypeError, r"'fit': train_data_loader must be iterable \(e.g. a DataLoader\), got int"),
        (_once(), ValueError, r"yielded no batch in epoch 1; loaders must be re-iterable"),
        (None, ValueError, r"problem 'fit' has no data: pass train_data_loader=, define confi"),
    ],
    ids=["empty", "not-iterable", "one-shot", "none"],
)
def test_data_a_level_cannot_cycle_through_is_refused(loader, error, words) -> None:
    fit = level(Fit, "fit")
    fit.train_data_loader = loader
    with pytest.raises(error, match=words):
        Engine([fit], quiet(train_iters=3)).run()


# ------------------------------------------------------------------ names, options, components
@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda: level(Fit, "my-level"), ValueError, r"name must be a Python identifier, got 'm"),
        (lambda: level(Fit, "train"), ValueError, r"problem name 'train' clashes with an attrib"),
        (lambda: Fit("fit", config={"type": "cg"}), TypeError, r"config must be a Config, got d"),
        (lambda: Config(type="cgg"), ValueError, r"Config type must be one of \['darts', 'sama'"),
        (lambda: Config(unroll_steps=0), ValueError, r"unroll_steps must be an integer >= 1, go"),
        (lambda: Config(precision="fp8"), ValueError, r"Config precision must be one of \['fp32"),
        (lambda: Config(fp16="yes"), ValueError, r"Config fp16 must be True or False, got 'yes'"),
        (lambda: Config(steps=2, frob=1), TypeError, r"Config got unknown option\(s\) \['frob'\]"),
        (lambda: Config(darts_multitask=True), ValueError, r"darts_multitask=True is not suppo"),
        (lambda: Config(type="reinforce"), ValueError, r"type='reinforce' is not a best-respon"),
        (lambda: EngineConfig(strategy="tpu"), ValueError, r"strategy must be one of \['defau"),
        (lambda: EngineConfig(logger_type="out"), ValueError, r"logger_type must be one of \['n"),
        (lambda: EngineConfig(train_iters=-1), ValueError, r"train_iters must be an integer >="),
        (lambda: EngineConfig(strategy="accelerate"), ValueError, r"'accelerate' is not suppor"),
        (lambda: EngineConfig(checkpoint_step=3), ValueError, r"checkpoint_step=3 needs checkp"),
        (lambda: EngineConfig(valid_step=1.5), ValueError, r"valid_step must be an integer, got"),
        (lambda: Engine([level(Fit, "fit")], {}), TypeError, r"config must be an EngineConfig"),
    ],
    ids=[
        "name-identifier",
        "name-clash",
        "config-dict",
        "config-type",
        "unroll",
        "precision",
        "fp16-string",
        "unknown-option",
        "multitask",
        "reinforce",
        "strategy",
        "logger",
        "train-iters",
        "accelerate",
        "checkpoint-step",
        "valid-step",
        "engine-config-dict",
    ],
)
def test_names_and_options_are_checked_where_they_enter(build, error, words) -> None:
    with pytest.raises(error, match=words):
        build()


def test_components_of_the_wrong_kind_are_refused_naming_the_level_and_the_hook() -> None:
    module = linear()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    cases = [
        (Fit("fit", module="lin", optimizer=optimizer), TypeError, r"got str as its module; ex"),
        (Fit("fit", module=module, optimizer="sgd"), TypeError, r"got str as its optimizer; e"),
        (Fit("fit", module=module), ValueError, r" has no optimizer: pass optimizer= or define"),
        (Fit("fit"), ValueError, r" has no module: pass module= or define configure_module\(\)"),
    ]
    for fit, error, words in cases:
        fit.train_data_loader = [X]
        with pytest.raises(error, match=r"problem 'fit'.*" + words):
            Engine([fit], quiet(train_iters=1))


def test_a_dependency_on_an_unknown_level_and_a_cycle_are_refused_at_construction() -> None:
    fit = level(Fit, "fit")
    with pytest.raises(ValueError, match=r"u2l\['fit'\] names problem 'ghost', which is not in"):
        Engine([fit], quiet(train_iters=1), {"u2l": {"fit": ["ghost"]}})
    up, low = level(Upper, "upper"), level(Lower, "lower")
    with pytest.raises(ValueError, match=r"cycle: (upper -> lower -> upper|lower -> upper -> l)"):
        Engine([up, low], quiet(), {"l2u": {"lower": ["upper"], "upper": ["lower"]}})


def test_early_stopping_without_validation_is_refused_before_any_step() -> None:
    fit = level(Fit, "fit")
    engine = Engine([fit], quiet(train_iters=2, early_stopping=True))
    with pytest.raises(ValueError, match=r"early_stopping=True .* valid_step=0 disables valida"):
        engine.run()
    assert fit.count == 0
