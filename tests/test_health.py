"""The mathematics must connect and stay finite: errors before harm, with the cause named."""

from __future__ import annotations

import copy

import pytest
import torch

from _modules import Vec
from ziggurat import Config, Engine, EngineConfig
from ziggurat.problems import ImplicitProblem

D = torch.float64


def quadratic(scale: float) -> torch.Tensor:
    """A symmetric positive definite matrix with eigenvalues in [1, scale]."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=D))
    return q @ torch.diag(torch.linspace(1.0, scale, 4, dtype=D)) @ q.T


class Upper(ImplicitProblem):
    def training_step(self, batch):
        return (self.lower() - 1.0).pow(2).sum()


class Lower(ImplicitProblem):
    hessian = quadratic(18.0)
    reads_upper = True
    reads_own = True

    def training_step(self, batch):
        w = self.module() if self.reads_own else self.module().detach()
        lam = self.upper() if self.reads_upper else torch.ones(4, dtype=D)
        return 0.5 * w @ self.hessian @ w - w @ lam


def program(lower_config: Config, *, u2l: bool = True, **engine: object) -> Engine:
    up_mod, low_mod = Vec(torch.zeros(4, dtype=D)), Vec(torch.zeros(4, dtype=D))
    upper = Upper(
        name="upper",
        module=up_mod,
        optimizer=torch.optim.Adam(up_mod.parameters(), lr=0.1),
        train_data_loader=[None],
    )
    lower = Lower(
        name="lower",
        module=low_mod,
        optimizer=torch.optim.SGD(low_mod.parameters(), lr=0.01),
        train_data_loader=[None],
        config=lower_config,
    )
    deps = {"l2u": {lower: [upper]}, **({"u2l": {upper: [lower]}} if u2l else {})}
    config = EngineConfig(train_iters=3, logger_type="none", **engine)
    return Engine(problems=[upper, lower], config=config, dependencies=deps)


def snapshot(engine: Engine) -> dict[str, object]:
    return {p.name: copy.deepcopy((p.state_dict(), p.count)) for p in engine.problems}


def assert_untouched(engine: Engine, before: dict[str, object], name: str) -> None:
    state, _count = before[name]
    p = engine.problem_by_name(name)
    for k, t in state["module"].items():
        assert torch.equal(p.module.state_dict()[k], t), k
    assert p.optimizer.state_dict()["state"] == state["optimizer"]["state"]


def test_neumann_past_two_over_lambda_max_is_an_error_before_the_upper_level_moves() -> None:
    engine = program(Config(type="neumann", neumann_iterations=5, neumann_alpha=1.0))
    before = snapshot(engine)  # the lower level steps first, then the upper one diverges
    with pytest.raises(FloatingPointError) as caught:
        engine.run()
    message = str(caught.value)
    assert "neumann: the solve diverged" in message
    assert "alpha is 1" in message and "lambda_max ~ 18" in message
    bound = float(message.split("must be below ")[1].split()[0].rstrip("."))
    assert bound == pytest.approx(2 / 18, rel=0.02)
    assert "problem 'upper', global step" in " ".join(getattr(caught.value, "__notes__", []))
    assert_untouched(engine, before, "upper")


def test_converging_neumann_passes_and_matches_cg() -> None:
    ok = program(Config(type="neumann", neumann_iterations=400, neumann_alpha=0.1))
    ok.run()
    cg = program(Config(type="cg", cg_iterations=4))
    cg.run()
    got, want = ok.upper.module.value.detach(), cg.upper.module.value.detach()
    assert float((got - want).norm()) < 1e-8


def test_a_lower_loss_that_never_reads_the_upper_level_is_a_structural_zero() -> None:
    engine = program(Config(type="cg", cg_iterations=4))
    engine.lower.reads_upper = False
    before = snapshot(engine)
    with pytest.raises(
        ValueError,
        match=r"along upper -> lower -> upper is zero by construction"
        r".*'lower' does not read the parameters of 'upper'",
    ):
        engine.run()
    assert_untouched(engine, before, "upper")


def test_a_forgotten_u2l_is_named() -> None:
    engine = program(Config(type="cg", cg_iterations=4), u2l=False)
    with pytest.raises(
        ValueError,
        match=r"problem 'upper': its loss does not depend on any of "
        r"its trainable parameters.*lower levels \['lower'\] but no hypergradient "
        r"path.*u2l",
    ):
        engine.run()


def test_an_implicit_level_whose_loss_ignores_its_parameters_is_refused() -> None:
    engine = program(Config(type="cg", cg_iterations=4))
    engine.lower.reads_own = False
    with pytest.raises(
        ValueError,
        match=r"problem 'lower': its loss does not depend on any of "
        r"its trainable parameters",
    ):
        engine.run()


class SqrtLower(Lower):
    """A finite loss whose gradient is not: d sqrt(w^2 + 0)/dw at w = 0 is 0/0."""

    def training_step(self, batch):
        w = self.module()
        return torch.sqrt((w * w).sum()) * 0.0 + (w - self.upper()).pow(2).sum()


def test_a_nan_gradient_behind_a_finite_loss_is_refused_before_the_step(tmp_path) -> None:
    engine = program(Config(type="darts"), checkpoint_dir=str(tmp_path), checkpoint_step=1)
    engine.lower.__class__ = SqrtLower
    before = snapshot(engine)
    with pytest.raises(
        FloatingPointError,
        match=r"problem 'lower': its gradients are not finite "
        r"at global step 1.*\['value'\].*although its loss is",
    ):
        engine.run()
    assert_untouched(engine, before, "lower")
    assert not list(tmp_path.glob("*.pt"))  # nothing saved


def test_a_nan_loss_is_named_with_its_steps() -> None:
    engine = program(Config(type="darts"))
    engine.lower.hessian = engine.lower.hessian * float("nan")
    with pytest.raises(
        FloatingPointError,
        match=r"problem 'lower': loss is nan at global step 1, "
        r"local step 1",
    ):
        engine.run()


def test_checks_can_be_switched_off() -> None:
    """No check, no host sync: the NaN reaches the parameters, as without ziggurat."""
    engine = program(Config(type="darts"), check_finite=False)
    engine.lower.__class__ = SqrtLower
    engine.run()
    assert torch.isnan(engine.lower.module.value).all()


class Steep(Lower):
    """Finite at the level's own points, but overflows far from them."""

    def training_step(self, batch):
        w = self.module()
        return super().training_step(batch) + 1e-3 * torch.exp(0.1 * w.sum()) * self.upper().sum()


def test_a_non_finite_hypergradient_is_named_with_its_hops() -> None:
    engine = program(Config(type="darts", darts_alpha=1e4))
    engine.lower.__class__ = Steep
    with pytest.raises(
        FloatingPointError,
        match=r"problem 'upper': its hypergradient is not "
        r"finite \(hops: darts",
    ):
        engine.run()


def test_first_hop_check_leaves_every_generator_as_it_was() -> None:
    """The structural check evaluates the lower loss once; the run's draws do not change."""
    draws = []

    class Noisy(Lower):
        def training_step(self, batch):
            draws.append(float(torch.rand(())))
            return super().training_step(batch)

    engine = program(Config(type="cg", cg_iterations=4))
    engine.lower.__class__ = Noisy
    torch.manual_seed(5)
    engine.run()
    torch.manual_seed(5)
    fresh = [float(torch.rand(())) for _ in range(len(draws))]
    # the check's own evaluation drew once, then every generator was restored: the evaluation
    # after it draws the same number again
    assert len(set(draws)) == len(draws) - 1
    assert draws[0] == fresh[0] and draws[-1] != draws[0]
