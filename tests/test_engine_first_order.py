"""Through Engine.run, the first-order-only configurations give the closed-form gradient.

``Config(curvature="finite_difference")`` (Hessian-vector and mixed products from gradients)
and ``Config(type="penalty")`` on two- and three-level quadratic programs whose lower levels
are not at their optima (they train alongside), so every hop is linearised at a moving point.
"""

from __future__ import annotations

import math

import pytest
import torch

from _modules import Vec
from ziggurat import Engine
from ziggurat.analytic import QuadraticBilevel, QuadraticTrilevel
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem

D = torch.float64


def configs_for(h: torch.Tensor) -> dict[str, Config]:
    eig = torch.linalg.eigvalsh(h)
    n, lmax = h.shape[0], float(eig.max())
    steps = math.ceil(math.log(1e-12) / math.log(1 - float(eig.min()) / lmax))
    fd = {"curvature": "finite_difference"}
    return {
        "cg": Config(type="cg", cg_iterations=10 * n, cg_tol=1e-13, **fd),
        "neumann": Config(type="neumann", neumann_iterations=steps, neumann_alpha=1 / lmax, **fd),
        "exact": Config(type="exact", **fd),
        "penalty": Config(type="penalty", penalty_steps=steps, penalty_step=1 / lmax),
        "penalty_short": Config(type="penalty", penalty_steps=steps // 4, penalty_step=1 / lmax),
        "penalty_warm": Config(
            type="penalty", penalty_steps=steps // 4, penalty_step=1 / lmax, penalty_warm_start=True
        ),
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def two_levels(config: Config) -> tuple[list[float], list[str]]:
    """Six upper steps with ``config`` on the lower level: the relative error of each upper
    gradient against the closed form at that step's point, and the last hop's method."""
    q = QuadraticBilevel.make(n=6, m=4, seed=2)
    grads, snapshots = [], []

    class Upper(ImplicitProblem):
        def training_step(self, batch):
            w, lam = self.lower(), self.module()
            return 0.5 * (w - q.t).pow(2).sum() + 0.5 * q.c * lam.pow(2).sum()

        def grad_callback(self):
            grads.append(self.module.value.grad.clone())
            values = (self.lower.module.value, self.module.value)
            snapshots.append(tuple(t.detach().clone() for t in values))

    class Lower(ImplicitProblem):
        def training_step(self, batch):
            w = self.module()
            return 0.5 * w @ q.A @ w - w @ q.B @ self.upper()

    start = torch.randn(6, generator=torch.Generator().manual_seed(0), dtype=D)
    mods = {"upper": Vec(q.lam0), "lower": Vec(start)}
    configs = {"upper": Config(), "lower": config}
    classes = {"upper": Upper, "lower": Lower}
    upper, lower = (
        classes[n](
            name=n,
            module=mods[n],
            optimizer=torch.optim.SGD(mods[n].parameters(), lr=0.05),
            train_data_loader=[torch.zeros(1)],
            config=configs[n],
        )
        for n in ("upper", "lower")
    )
    engine = Engine(
        problems=[upper, lower],
        config=EngineConfig(train_iters=6, valid_step=0, logger_type="none", progress=False),
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    )
    engine.run()
    errors = [
        rel(g, q.B.T @ torch.linalg.solve(q.A, w - q.t) + q.c * lam)
        for g, (w, lam) in zip(grads, snapshots, strict=True)
    ]
    return errors, [i.method for i in upper.last_hop_info]


@pytest.mark.parametrize("kind", ["cg", "neumann", "exact", "penalty"])
def test_two_levels(kind: str) -> None:
    q = QuadraticBilevel.make(n=6, m=4, seed=2)
    errors, methods = two_levels(configs_for(q.A)[kind])
    assert len(errors) == 6 and methods == [kind]
    assert max(errors) < 1e-6


def test_penalty_warm_starts_through_the_engine() -> None:
    """With a quarter of the steps, a cold solve leaves an error of about 9e-4 at every upper
    step; warm-started from the previous step's solution (kept by the problem, as for cg) the
    error falls to about 1e-4 (measured 5.8e-5 to 1.4e-4), the remainder from the change of
    ``v`` between steps."""
    q = QuadraticBilevel.make(n=6, m=4, seed=2)
    cold_errors, _ = two_levels(configs_for(q.A)["penalty_short"])
    warm_errors, _ = two_levels(configs_for(q.A)["penalty_warm"])
    assert warm_errors[0] == pytest.approx(cold_errors[0], rel=1e-6)  # nothing to start from
    assert min(cold_errors) > 5e-4
    for w, c in zip(warm_errors[1:], cold_errors[1:], strict=True):
        assert w < c / 4


@pytest.mark.parametrize(
    ("mid_kind", "low_kind"), [("cg", "penalty"), ("penalty", "exact"), ("penalty", "penalty")]
)
def test_three_levels(mid_kind: str, low_kind: str) -> None:
    """Each hop runs its own lower level's method; the hop through the middle level is taken
    with the lowest level held fixed (``H2 = A2 + g C^T C``)."""
    tri = QuadraticTrilevel.make(seed=1)
    h2 = tri.H2_partial()
    grads, mid_grads = [], []

    class Up(ImplicitProblem):
        def training_step(self, batch):
            return tri.upper({"x": self.module()}, self.mid(), tri.s)

        def grad_callback(self):
            grads.append(
                (
                    self.module.value.grad.clone(),
                    self.module.value.detach().clone(),
                    self.mid.module.value.detach().clone(),
                )
            )

    class Mid(ImplicitProblem):
        def training_step(self, batch):
            return tri.middle({"y": self.module()}, {"x": self.up()}, self.low())

        def grad_callback(self):
            values = [p.module.value.detach().clone() for p in (self.up, self, self.low)]
            mid_grads.append((self.module.value.grad.clone(), *values))

    class Low(ImplicitProblem):
        def training_step(self, batch):
            return tri.lower({"z": self.module()}, {"y": self.mid()})

    z, y, x = tri.point()
    mods = {"up": Vec(x), "mid": Vec(y + 0.1), "low": Vec(z - 0.1)}
    configs = {
        "up": Config(),
        "mid": configs_for(h2)[mid_kind],
        "low": configs_for(tri.A1)[low_kind],
    }
    classes = {"up": Up, "mid": Mid, "low": Low}
    up, mid, low = (
        classes[n](
            name=n,
            module=mods[n],
            optimizer=torch.optim.SGD(mods[n].parameters(), lr=0.02),
            train_data_loader=[torch.zeros(1)],
            config=configs[n],
        )
        for n in ("up", "mid", "low")
    )
    engine = Engine(
        problems=[up, mid, low],
        config=EngineConfig(train_iters=4, valid_step=0, logger_type="none", progress=False),
        dependencies={"u2l": {up: [mid], mid: [low]}, "l2u": {low: [mid], mid: [up]}},
    )
    engine.run()
    assert len(grads) == 4 and len(mid_grads) == 4
    for g, xs, ys in grads:
        expected = tri.c * xs + tri.B2.T @ torch.linalg.solve(h2, ys - tri.t)
        assert rel(g, expected) < 1e-6
    for g, xs, ys, zs in mid_grads:
        d_y = tri.A2 @ ys - tri.B2 @ xs - tri.g * tri.C.T @ (zs - tri.C @ ys)
        expected = d_y + tri.J1().T @ (tri.g * (zs - tri.C @ ys))
        assert rel(g, expected) < 1e-6
