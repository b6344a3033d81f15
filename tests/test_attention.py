"""Every method through a transformer lower level, and what cannot be differentiated twice.

The lower level of :class:`~ziggurat.analytic.TransformerReweighting` is one
``nn.TransformerEncoderLayer`` (dropout 0, float64): its ``scaled_dot_product_attention`` runs
the fused CPU kernel, which has no double backward. Through ``Engine.run`` the exact methods
(``cg``, ``neumann``, ``fixed_point``, ``exact``, ``unrolled``; products under attention's
math kernel) match the fixture's dense solve (plain ``torch.autograd`` under the math kernel,
at the same point and batch) to 1e-6 relative; the finite-difference variants and the penalty
method to the float64 tolerances of ``docs/hypergradients.md`` (measured in
``benchmarks/RESULTS.md``). An operation without a double backward is a ``ValueError`` naming
the problem, the operation and the methods that run instead.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ziggurat import DoubleBackwardError, Engine, twice_differentiable
from ziggurat.analytic import TransformerReweighting
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import (
    FiniteDifference,
    MixedFiniteDifference,
    cg,
    exact,
    fixed_point,
    unrolled,
)
from ziggurat.optim import sgd
from ziggurat.problems import ImplicitProblem, IterativeProblem

EXACT_TOL = 1e-6  # measured 2e-16; unrolled 6.6e-10 (60 steps from a point stationary to 2e-9)
FD_TOL = 1e-9  # float64, finite-difference products (measured 1.2e-11 to 1.5e-11)
PENALTY_TOL = 1e-6  # float64, the penalty method's one-sided difference (measured 1.3e-8)


def flash_enabled() -> bool:
    """Whether ``scaled_dot_product_attention`` may pick a fused kernel here (the flag that
    ``sdpa_kernel`` switches; it applies on the CPU too)."""
    return torch.backends.cuda.flash_sdp_enabled()


class Weights(nn.Module):
    def __init__(self, lam: Tensor) -> None:
        super().__init__()
        self.lam = nn.Parameter(lam.clone())


class Program:
    """Two levels through the Engine: ``weights`` (the upper) over ``classifier``."""

    def __init__(self, p: TransformerReweighting, config: Config, iterative: bool = False):
        self.grads: list[Tensor] = []
        self.points: list[tuple[dict[str, Tensor], Tensor]] = []
        self.kernels: list[tuple[str, bool]] = []  # (who evaluated, fused kernels allowed)
        rec = self

        class Upper(ImplicitProblem):
            def training_step(self, batch: Any) -> Tensor:
                return F.cross_entropy(self.classifier(p.xv), p.yv)

            def grad_callback(self) -> None:
                rec.grads.append(self.module.lam.grad.detach().clone())
                low = {k: t.detach().clone() for k, t in self.classifier.module.named_parameters()}
                rec.points.append((low, self.module.lam.detach().clone()))

        base = IterativeProblem if iterative else ImplicitProblem

        class Lower(base):  # type: ignore[valid-type, misc]
            def training_step(self, batch: Any) -> Tensor:
                rec.kernels.append((self.name, flash_enabled()))
                logits = self(p.x) if iterative else self.module(p.x)
                params = self.params.values() if iterative else self.module.parameters()
                return p.lower_loss(logits, self.weights.module.lam, params)

        net = TransformerReweighting.make().net  # same seed: the fixture's initialisation
        net.load_state_dict(p.w_star())
        weights = Weights(p.lam0)
        self.upper = Upper(
            name="weights",
            module=weights,
            optimizer=torch.optim.SGD(weights.parameters(), lr=0.1),
            train_data_loader=[0],
        )
        self.lower = Lower(
            name="classifier",
            module=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.5),
            train_data_loader=[0],
            config=config,
        )
        self.engine = Engine(
            problems=[self.upper, self.lower],
            config=EngineConfig(train_iters=config.unroll_steps, logger_type="none"),
            dependencies={"u2l": {self.upper: [self.lower]}, "l2u": {self.lower: [self.upper]}},
        )


@pytest.fixture(scope="module")
def fixture() -> tuple[TransformerReweighting, float]:
    p = TransformerReweighting.make()
    lo, hi = p.spectrum()
    assert 0.2 < lo < hi < 0.5  # strongly convex at w*: every solver below converges
    return p, hi


def relative_error(p: TransformerReweighting, program: Program) -> float:
    (grad,), ((w, lam),) = program.grads, program.points
    w_, lam_ = {k: t.clone().requires_grad_(True) for k, t in w.items()}, {"lam": lam}
    v = dict(zip(w_, torch.autograd.grad(p.outer(w_, lam_), list(w_.values())), strict=True))
    expected = p.exact_vjp(v, w, lam_)["lam"]  # the upper loss has no direct term
    return float((grad - expected).norm() / expected.norm())


def configs(lam_max: float) -> dict[str, tuple[Config, float]]:
    alpha, steps = 1.0 / lam_max, 60  # contraction (1 - 0.21 / 0.48)^60 ~ 5e-16
    fd: dict[str, Any] = {"curvature": FiniteDifference(), "mixed": MixedFiniteDifference()}
    return {
        "cg": (Config(type="cg", cg_iterations=50, cg_tol=1e-14), EXACT_TOL),
        "neumann": (
            Config(type="neumann", neumann_iterations=steps, neumann_alpha=alpha),
            EXACT_TOL,
        ),
        "fixed_point": (Config(hypergradient=fixed_point(steps, alpha)), EXACT_TOL),
        "exact": (Config(type="exact"), EXACT_TOL),
        "unrolled": (Config(hypergradient=unrolled(sgd(alpha), steps)), EXACT_TOL),
        "cg_fd": (
            Config(type="cg", cg_iterations=50, cg_tol=1e-14, curvature="finite_difference"),
            FD_TOL,
        ),
        "neumann_fd": (
            Config(
                type="neumann",
                neumann_iterations=steps,
                neumann_alpha=alpha,
                curvature="finite_difference",
            ),
            FD_TOL,
        ),
        "fixed_point_fd": (Config(hypergradient=fixed_point(steps, alpha, **fd)), FD_TOL),
        "exact_fd": (Config(hypergradient=exact(**fd)), FD_TOL),
        "penalty": (
            Config(type="penalty", penalty_steps=steps, penalty_step=alpha),
            PENALTY_TOL,
        ),
    }


@pytest.mark.parametrize("kind", list(configs(1.0)))
def test_transformer_level_matches_the_dense_solve(fixture, kind: str) -> None:
    p, lam_max = fixture
    config, tol = configs(lam_max)[kind]
    program = Program(p, config)
    program.engine.run()
    err = relative_error(p, program)
    assert err < tol, (kind, err)
    # the level's own training step ran on the fused kernel; double-backward products did not
    own = [flash for who, flash in program.kernels if who == "classifier"]
    assert own[0] is True
    # own[1]: the first hop's check that the loss reads the upper level (a gradient in lam
    # only, first-order: the fused kernel); the hops' products come after it
    assert own[1] is True
    first_order = program.lower.hop_method().first_order_only
    assert all(own) if first_order else own[2:] and not any(own[2:])


def test_without_the_math_kernel_the_fused_kernel_is_refused(fixture, monkeypatch) -> None:
    """What the products avoid: the fused kernel has no double backward. Without the math
    kernel, the core names it instead of raising autograd's error from a product."""
    p, _ = fixture
    w, lam, v = p.point()
    assert float(cg(5)(p.inner, w, lam, v).vjp["lam"].norm()) > 0
    monkeypatch.setattr("ziggurat._products.twice_differentiable", contextlib.nullcontext)
    with pytest.raises(DoubleBackwardError, match=r"reaches aten::_scaled_dot_product_flash"):
        cg(5)(p.inner, w, lam, v)


def test_unrolled_level_steps_on_the_math_kernel(fixture) -> None:
    """An IterativeProblem transformer: the upper gradient through three unrolled SGD steps
    equals the same three steps written out with plain autograd under the math kernel."""
    p, _ = fixture
    program = Program(p, Config(unroll_steps=3), iterative=True)
    program.engine.run()
    assert [flash for who, flash in program.kernels] == [False] * 3
    lam = p.lam0.clone().requires_grad_(True)
    w = p.w_star()
    with twice_differentiable():
        for _ in range(3):
            w_ = {k: t if t.requires_grad else t.requires_grad_(True) for k, t in w.items()}
            loss = p.lower_loss(p.logits(w_, p.x), lam, w_.values())
            g = torch.autograd.grad(loss, list(w_.values()), create_graph=True)
            w = {k: t - 0.5 * gi for (k, t), gi in zip(w_.items(), g, strict=True)}
        (expected,) = torch.autograd.grad(p.outer(w, {"lam": lam}), [lam])
    (grad,) = program.grads
    assert float((grad - expected).norm() / expected.norm()) < 1e-10
    assert math.isfinite(float(grad.norm())) and float(grad.norm()) > 0
