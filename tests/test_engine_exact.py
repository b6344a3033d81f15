"""The gradient an upper problem receives through Engine.run equals the closed form."""

from __future__ import annotations

import math

import pytest
import torch

from _modules import Vec
from ziggurat import Engine
from ziggurat.analytic import QuadraticBilevel, QuadraticTrilevel, random_spd
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import cg, exact, neumann
from ziggurat.problems import ImplicitProblem, IterativeProblem

D = torch.float64


def loader(n: int = 1):
    return [torch.zeros(1)] * n


class Recorder:
    def __init__(self) -> None:
        self.mid_grads: list[tuple[torch.Tensor, ...]] = []
        self.grads: list[torch.Tensor] = []
        self.snapshots: list[dict[str, torch.Tensor]] = []


def methods_for(n: int, h: torch.Tensor):
    eig = torch.linalg.eigvalsh(h)
    lmax = float(eig.max())
    steps = int(math.log(1e-10) / math.log(1 - float(eig.min()) / lmax)) + 1
    return {
        "cg": Config(hypergradient=cg(n, 1e-300)),
        "cg_type": Config(type="cg", cg_iterations=n, cg_tol=1e-300, cg_alpha=0.1),
        "neumann": Config(hypergradient=neumann(steps, 1.0 / lmax)),
        "neumann_type": Config(type="neumann", neumann_iterations=steps, neumann_alpha=1.0 / lmax),
        "exact": Config(hypergradient=exact()),
        "darts": Config(type="darts"),  # H^{-1} ~ I; its mixed product is exact on quadratics
    }


def bilevel_program(q: QuadraticBilevel, lower_config: Config, rec: Recorder):
    class Upper(ImplicitProblem):
        def training_step(self, batch):
            w = self.lower()
            lam = self.module()
            return 0.5 * (w - q.t).pow(2).sum() + 0.5 * q.c * lam.pow(2).sum()

        def grad_callback(self):
            rec.grads.append(self.module.value.grad.clone())
            rec.snapshots.append(
                {
                    "w": self.lower.module.value.detach().clone(),
                    "lam": self.module.value.detach().clone(),
                }
            )

    class Lower(ImplicitProblem):
        def training_step(self, batch):
            w = self.module()
            return 0.5 * w @ q.A @ w - w @ q.B @ self.upper()

    w0 = torch.randn(q.A.shape[0], dtype=D)
    up_mod, low_mod = Vec(q.lam0), Vec(w0)
    upper = Upper(
        name="upper",
        module=up_mod,
        optimizer=torch.optim.SGD(up_mod.parameters(), lr=0.05),
        train_data_loader=loader(),
        config=Config(),
    )
    lower = Lower(
        name="lower",
        module=low_mod,
        optimizer=torch.optim.SGD(low_mod.parameters(), lr=0.05),
        train_data_loader=loader(),
        config=lower_config,
    )
    return upper, lower


@pytest.mark.parametrize("kind", ["cg", "cg_type", "neumann", "neumann_type", "exact"])
def test_two_level_engine_gradient_equals_closed_form(kind: str) -> None:
    q = QuadraticBilevel.make(n=6, m=4, seed=2)
    rec = Recorder()
    upper, lower = bilevel_program(q, methods_for(6, q.A)[kind], rec)
    engine = Engine(
        problems=[upper, lower],
        config=EngineConfig(train_iters=6, valid_step=0),
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    )
    engine.run()
    assert len(rec.grads) == 6
    for g, snap in zip(rec.grads, rec.snapshots, strict=True):
        v = snap["w"] - q.t
        expected = q.B.T @ torch.linalg.solve(q.A, v) + q.c * snap["lam"]
        assert float((g - expected).norm() / expected.norm()) < 1e-6


def trilevel_program(
    tri: QuadraticTrilevel, middle_config: Config, lower_config: Config, rec: Recorder
):
    class Up(ImplicitProblem):
        def training_step(self, batch):  # reads the level directly below it (and not z)
            return tri.upper({"x": self.module()}, self.mid(), tri.s)

        def grad_callback(self):
            rec.grads.append(self.module.value.grad.clone())
            rec.snapshots.append(
                {
                    "x": self.module.value.detach().clone(),
                    "y": self.mid.module.value.detach().clone(),
                    "z": self.low.module.value.detach().clone(),
                }
            )

    class Mid(ImplicitProblem):
        def training_step(self, batch):
            return tri.middle({"y": self.module()}, {"x": self.up()}, self.low())

        def grad_callback(self):
            rec.mid_grads.append(
                (
                    self.module.value.grad.clone(),
                    self.up.module.value.detach().clone(),
                    self.module.value.detach().clone(),
                    self.low.module.value.detach().clone(),
                )
            )

    class Low(ImplicitProblem):
        def training_step(self, batch):
            return tri.lower({"z": self.module()}, {"y": self.mid()})

    z, y, x = tri.point()
    mods = {"up": Vec(x), "mid": Vec(y + 0.1), "low": Vec(z - 0.1)}
    cfgs = {"up": Config(), "mid": middle_config, "low": lower_config}
    classes = {"up": Up, "mid": Mid, "low": Low}
    return [
        classes[n](
            name=n,
            module=mods[n],
            optimizer=torch.optim.SGD(mods[n].parameters(), lr=0.02),
            train_data_loader=loader(),
            config=cfgs[n],
        )
        for n in ("up", "mid", "low")
    ]


@pytest.mark.parametrize(
    ("mid_kind", "low_kind"),
    [
        ("cg", "cg"),
        ("neumann", "neumann"),
        ("exact", "exact"),
        ("neumann", "cg"),
        ("exact", "neumann_type"),
        ("cg_type", "exact"),
        ("darts", "exact"),
        ("cg", "darts"),
    ],
)
def test_three_level_engine_gradient_with_method_at_every_level(
    mid_kind: str, low_kind: str
) -> None:
    """Each hop uses its own lower level's method, so methods may differ between levels."""
    tri = QuadraticTrilevel.make(seed=1)
    h2 = tri.H2_partial()
    cfg_mid = methods_for(h2.shape[0], h2)[mid_kind]
    cfg_low = methods_for(tri.A1.shape[0], tri.A1)[low_kind]
    rec = Recorder()
    up, mid, low = trilevel_program(tri, cfg_mid, cfg_low, rec)
    engine = Engine(
        problems=[up, mid, low],
        config=EngineConfig(train_iters=4, valid_step=0),
        dependencies={"u2l": {up: [mid], mid: [low]}, "l2u": {low: [mid], mid: [up]}},
    )
    engine.run()
    assert len(rec.grads) == 4 and len(rec.mid_grads) == 4
    # the hop through mid ran mid's method, the hop through low ran low's
    assert [i.method for i in up.last_hop_info] == [mid_kind.removesuffix("_type")]
    assert [i.method for i in mid.last_hop_info] == [low_kind.removesuffix("_type")]
    # darts stands in I for H^{-1}: S_mid = I instead of H2^{-1}, and J1^T v = B1^T A1^{-1} v
    # becomes B1^T v = J1^T A1 v
    eye = torch.eye(h2.shape[0], dtype=D)
    s_mid = eye if mid_kind == "darts" else torch.linalg.inv(h2)
    low_factor = tri.A1 if low_kind == "darts" else torch.eye(tri.A1.shape[0], dtype=D)
    for g, s in zip(rec.grads, rec.snapshots, strict=True):
        # the top hop uses the middle level's method and its Hessian with z held fixed
        expected = tri.c * s["x"] + tri.B2.T @ s_mid @ (s["y"] - tri.t)
        assert float((g - expected).norm() / expected.norm()) < 1e-6
    for g, x, y, z in rec.mid_grads:
        # the middle level: direct gradient plus the lower level's best response (its method)
        d_y = tri.A2 @ y - tri.B2 @ x - tri.g * tri.C.T @ (z - tri.C @ y)
        d_z = tri.g * (z - tri.C @ y)
        expected = d_y + tri.J1().T @ low_factor @ d_z
        assert float((g - expected).norm() / expected.norm()) < 1e-6


@pytest.mark.parametrize(
    ("pre_kind", "fine_kind"),
    [
        ("cg", "cg"),
        ("neumann", "neumann"),
        ("exact", "exact"),
        ("cg", "neumann"),
        ("neumann", "exact"),
    ],
)
def test_two_hop_path_as_in_learning_by_ignoring(pre_kind: str, fine_kind: str) -> None:
    """Betty's path semantics: ``u2l = {top: [pre]}``, ``l2u = {pre: [fine], fine: [top]}``
    gives the path ``[top, fine, pre, top]``: top's loss reads ``fine``, ``fine`` reads ``pre``,
    ``pre`` reads ``top``; the hypergradient folds two hops, each with its own level's method."""
    g = torch.Generator().manual_seed(5)
    n_top, n_pre, n_fine = 3, 5, 4
    A1, A2 = random_spd(n_pre, 1.0, 4.0, g, D), random_spd(n_fine, 1.0, 4.0, g, D)
    B1 = torch.randn(n_pre, n_top, generator=g, dtype=D)
    B2 = torch.randn(n_fine, n_pre, generator=g, dtype=D)
    t = torch.randn(n_fine, generator=g, dtype=D)
    c = 0.1
    rec = Recorder()

    class Top(ImplicitProblem):
        def training_step(self, batch):
            return 0.5 * (self.fine() - t).pow(2).sum() + 0.5 * c * self.module().pow(2).sum()

        def grad_callback(self):
            rec.grads.append(self.module.value.grad.clone())
            rec.snapshots.append(
                {
                    "lam": self.module.value.detach().clone(),
                    "f": self.fine.module.value.detach().clone(),
                }
            )

    class Pre(ImplicitProblem):
        def training_step(self, batch):
            p = self.module()
            return 0.5 * p @ A1 @ p - p @ B1 @ self.top()

    class Fine(ImplicitProblem):
        def training_step(self, batch):
            f = self.module()
            return 0.5 * f @ A2 @ f - f @ B2 @ self.pre()

    inits = {
        "top": torch.randn(n_top, dtype=D),
        "pre": torch.randn(n_pre, dtype=D),
        "fine": torch.randn(n_fine, dtype=D),
    }
    configs = {
        "top": Config(),
        "pre": methods_for(n_pre, A1)[pre_kind],
        "fine": methods_for(n_fine, A2)[fine_kind],
    }
    made = {}
    for name, cls in (("top", Top), ("pre", Pre), ("fine", Fine)):
        mod = Vec(inits[name])
        made[name] = cls(
            name=name,
            module=mod,
            train_data_loader=loader(),
            config=configs[name],
            optimizer=torch.optim.SGD(mod.parameters(), lr=0.02),
        )
    top, pre, fine = made["top"], made["pre"], made["fine"]
    engine = Engine(
        problems=[top, pre, fine],
        config=EngineConfig(train_iters=3, valid_step=0),
        dependencies={"u2l": {top: [pre]}, "l2u": {pre: [fine], fine: [top]}},
    )
    assert [[p.name for p in path] for path in top.paths] == [["top", "fine", "pre", "top"]]
    engine.run()
    assert len(rec.grads) == 3
    assert [i.method for i in top.last_hop_info] == [fine_kind, pre_kind]  # hop order on the path
    for gr, snap in zip(rec.grads, rec.snapshots, strict=True):
        v_pre = B2.T @ torch.linalg.solve(A2, snap["f"] - t)
        expected = c * snap["lam"] + B1.T @ torch.linalg.solve(A1, v_pre)
        assert float((gr - expected).norm() / expected.norm()) < 1e-6


def test_iterative_problem_matches_exact_unrolled_derivative() -> None:
    q = QuadraticBilevel.make(n=5, m=3, seed=4)
    T, lr = 4, 0.05
    rec = Recorder()
    w0 = torch.randn(5, dtype=D)

    class Upper(ImplicitProblem):
        def training_step(self, batch):
            w = self.lower()
            return 0.5 * (w - q.t).pow(2).sum()

        def grad_callback(self):
            rec.grads.append(self.module.value.grad.clone())

    class Lower(IterativeProblem):
        def training_step(self, batch):
            w = self.forward()
            return 0.5 * w @ q.A @ w - w @ q.B @ self.upper()

        def on_inner_loop_start(self):
            with torch.no_grad():
                self.module.value.copy_(w0)

    up_mod, low_mod = Vec(q.lam0), Vec(w0)
    upper = Upper(
        name="upper",
        module=up_mod,
        optimizer=torch.optim.SGD(up_mod.parameters(), lr=0.0),
        train_data_loader=loader(),
    )
    lower = Lower(
        name="lower",
        module=low_mod,
        optimizer=torch.optim.SGD(low_mod.parameters(), lr=lr),
        train_data_loader=loader(),
        config=Config(unroll_steps=T),
    )
    Engine(
        problems=[upper, lower],
        config=EngineConfig(train_iters=T, valid_step=0),
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    ).run()
    # closed form: w_T = P^T w0 + sum_t P^t lr B lam, P = I - lr A
    P = torch.eye(5, dtype=D) - lr * q.A
    w_T = torch.linalg.matrix_power(P, T) @ w0 + sum(
        torch.linalg.matrix_power(P, t) @ (lr * q.B @ q.lam0) for t in range(T)
    )
    J = sum(torch.linalg.matrix_power(P, t) @ (lr * q.B) for t in range(T))
    expected = J.T @ (w_T - q.t)
    assert len(rec.grads) == 1
    assert float((rec.grads[0] - expected).norm() / expected.norm()) < 1e-10


def test_iterative_problem_maml_initialisation_is_differentiable() -> None:
    """MAML: the inner loop starts from the meta-parameters; the meta-gradient goes through it."""
    a = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    b = torch.tensor([0.0, 1.0, 2.0], dtype=D)
    T, lr = 3, 0.2
    rec = Recorder()

    class Meta(ImplicitProblem):
        def training_step(self, batch):
            return 0.5 * (self.inner() - b).pow(2).sum()

        def grad_callback(self):
            rec.grads.append(self.module.value.grad.clone())
            rec.snapshots.append({"phi": self.module.value.detach().clone()})

    class Inner(IterativeProblem):
        def training_step(self, batch):
            return 0.5 * (self.forward() - a).pow(2).sum()

        def on_inner_loop_start(self):
            self.params = {"value": self.meta.module.value}  # differentiable start

    phi0 = torch.zeros(3, dtype=D)
    meta_mod, inner_mod = Vec(phi0), Vec(torch.zeros(3, dtype=D))
    meta = Meta(
        name="meta",
        module=meta_mod,
        train_data_loader=loader(),
        optimizer=torch.optim.SGD(meta_mod.parameters(), lr=0.1),
    )
    inner = Inner(
        name="inner",
        module=inner_mod,
        train_data_loader=loader(),
        optimizer=torch.optim.SGD(inner_mod.parameters(), lr=lr),
        config=Config(unroll_steps=T),
    )
    Engine(
        problems=[meta, inner],
        config=EngineConfig(train_iters=2 * T, valid_step=0),
        dependencies={"u2l": {meta: [inner]}, "l2u": {inner: [meta]}},
    ).run()
    assert len(rec.grads) == 2
    for g, snap in zip(rec.grads, rec.snapshots, strict=True):
        phi = snap["phi"]  # grad_callback runs before the optimizer step
        theta_T = a + (1 - lr) ** T * (phi - a)
        expected = (1 - lr) ** T * (theta_T - b)
        assert float((g - expected).norm() / expected.norm()) < 1e-12


def _clipped_unrolled_program(clip: float, rec: Recorder, cls: type = IterativeProblem):
    """Upper ``lam``; lower ``w`` starts at 0 and takes 3 SGD steps on ``|w - 5 lam|^2 / 2``."""
    lam0 = torch.tensor([1.0, -2.0, 0.5], dtype=D)

    class Upper(ImplicitProblem):
        def training_step(self, batch):
            return 0.5 * (self.lower() - 1.0).pow(2).sum()

        def grad_callback(self):
            rec.grads.append(self.module.value.grad.clone())

    class Lower(cls):  # type: ignore[misc, valid-type]
        def training_step(self, batch):
            return 0.5 * (self.forward() - 5.0 * self.upper()).pow(2).sum()

        def grad_callback(self):
            pending = self.pending_grads if isinstance(self, IterativeProblem) else None
            rec.snapshots.append({"pending": pending})

    up_mod, low_mod = Vec(lam0), Vec(torch.zeros(3, dtype=D))
    upper = Upper(
        name="upper",
        module=up_mod,
        optimizer=torch.optim.SGD(up_mod.parameters(), lr=0.0),
        train_data_loader=loader(),
    )
    lower = Lower(
        name="lower",
        module=low_mod,
        optimizer=torch.optim.SGD(low_mod.parameters(), lr=0.3),
        train_data_loader=loader(),
        config=Config(unroll_steps=3, gradient_clipping=clip),
    )
    Engine(
        problems=[upper, lower],
        config=EngineConfig(train_iters=3, valid_step=0),
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    ).run()
    return lam0, low_mod.value.detach()


def test_iterative_problem_clips_and_differentiates_through_the_clipping() -> None:
    """Clipping at 1.0 is active at every step (gradient norms 11.5, 10.5, 9.5). The unrolled
    level's update equals an ``ImplicitProblem``'s (``clip_grad_norm_``), ``grad_callback`` sees
    the pending gradients, and the hypergradient equals autograd through a hand-written
    clipped loop."""
    rec = Recorder()
    lam0, w_iterative = _clipped_unrolled_program(1.0, rec)
    _, w_implicit = _clipped_unrolled_program(1.0, Recorder(), ImplicitProblem)
    torch.testing.assert_close(w_iterative, w_implicit, atol=1e-12, rtol=0)
    assert all(s["pending"] is not None for s in rec.snapshots) and len(rec.snapshots) == 3

    lam = lam0.clone().requires_grad_(True)
    w = torch.zeros(3, dtype=D)
    for _ in range(3):
        g = w - 5.0 * lam
        w = w - 0.3 * g * torch.clamp(1.0 / (g.norm() + 1e-6), max=1.0)
    torch.testing.assert_close(w.detach(), w_iterative, atol=1e-12, rtol=0)
    (expected,) = torch.autograd.grad(0.5 * (w - 1.0).pow(2).sum(), lam)
    assert len(rec.grads) == 1
    torch.testing.assert_close(rec.grads[0], expected, atol=1e-12, rtol=0)
    unclipped = Recorder()
    _clipped_unrolled_program(0.0, unclipped)
    assert float((unclipped.grads[0] - expected).norm()) > 0.1  # the clipping mattered


def test_iterative_problem_refuses_fp16_and_custom_optimizer_steps() -> None:
    class Custom(IterativeProblem):
        def training_step(self, batch):
            return self.forward().sum()

        def custom_optimizer_step(self, *args, **kwargs):
            return None

    for cls, config, match in (
        (Custom, Config(), "custom_optimizer_step would never be called"),
        (IterativeProblem, Config(precision="fp16"), "cannot use precision='fp16'"),
    ):
        module = Vec(torch.zeros(2, dtype=D))
        p = cls(
            name="it",
            module=module,
            optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
            train_data_loader=loader(),
            config=config,
        )
        with pytest.raises(ValueError, match=match):
            Engine([p], EngineConfig(train_iters=1, valid_step=0))


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        lambda ps: torch.optim.Adam(ps, lr=0.1, betas=(0.8, 0.9)),
        lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1),
    ],
    ids=["sgd-nesterov", "adam", "adamw"],
)
def test_iterative_problem_steps_equal_its_torch_optimizer(make_opt) -> None:
    """The unrolled level's differentiable twin takes the same steps as the torch optimizer
    it was given (five steps on a quadratic), at engine level."""
    target = torch.tensor([1.0, -2.0, 0.5], dtype=D)

    def program(cls):
        class Low(cls):  # type: ignore[misc, valid-type]
            def training_step(self, batch):
                w = self.forward() if cls is IterativeProblem else self.module()
                return (w - target).pow(4).sum()

        module = Vec(torch.zeros(3, dtype=D))
        low = Low(
            name="low",
            module=module,
            optimizer=make_opt(module.parameters()),
            train_data_loader=loader(),
            config=Config(unroll_steps=5),
        )
        Engine([low], EngineConfig(train_iters=5, valid_step=0)).run()
        return module.value.detach()

    torch.testing.assert_close(
        program(IterativeProblem), program(ImplicitProblem), atol=1e-12, rtol=0
    )


def test_iterative_problem_whose_loss_ignores_its_params_is_an_error() -> None:
    class Detached(IterativeProblem):
        def training_step(self, batch):
            return self.module().detach().pow(2).sum()  # cut from self.params

    module = Vec(torch.ones(2, dtype=D))
    p = Detached(
        name="it",
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        train_data_loader=loader(),
    )
    with pytest.raises(
        ValueError, match=r"'it': its loss does not depend on self.params.*self.module\(x\)"
    ):
        Engine([p], EngineConfig(train_iters=1, valid_step=0)).run()


def test_first_order_gives_the_direct_gradient_without_a_backward_into_the_lower() -> None:
    q = QuadraticBilevel.make(n=6, m=4, seed=3)
    rec = Recorder()
    upper, lower = bilevel_program(q, Config(type="first_order"), rec)
    into_lower: list[int] = []
    lower.module.value.register_hook(lambda g: into_lower.append(1))
    engine = Engine(
        problems=[upper, lower],
        config=EngineConfig(train_iters=4, valid_step=0),
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    )
    engine.run()
    lower_steps = 4  # the lower's own backward passes reach its parameters once per step
    assert len(into_lower) == lower_steps  # the upper's did not
    for g, snap in zip(rec.grads, rec.snapshots, strict=True):
        torch.testing.assert_close(g, q.c * snap["lam"], rtol=0, atol=0)
