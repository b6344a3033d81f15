"""Catalogue of bad programs: options, dependency graphs, modules, losses, data and user code.

Each case asserts the exception type and the words of its message that name the problem, the
level and the fix (or the correct result where the input is valid). Cases the hypergradient
health checks cover (non-finite values, diverged solves, structurally-zero paths) live with
those checks.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import cg
from ziggurat.problems import ImplicitProblem

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
