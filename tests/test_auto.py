"""``Config(type="auto")``: the method chosen by measurement meets its target at every hop, at
a cost close to the cheapest fixed method chosen in hindsight, says why, and resumes exactly."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from _modules import Vec
from ziggurat import Engine
from ziggurat.analytic import QuadraticBilevel, QuadraticTrilevel, TransformerReweighting
from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import (
    GRID,
    Auto,
    CostModel,
    HopContext,
    auto,
    cg,
    darts,
    neumann,
)
from ziggurat.problems import ImplicitProblem

D = torch.float64
COSTS = CostModel()
TARGETS = (1e-3, 1e-1)


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def fixed_costs(ks: range) -> dict[str, float]:
    """The cost (in G) of every fixed method of the hindsight comparison."""
    out = {"darts": 2.0}
    for k in ks:
        out[f"cg({k})"] = COSTS.cg(k, True)
        out[f"neumann({k})"] = COSTS.cg(k, True)  # k products and one mixed product
    return out


def fixed_outputs(inner, w, lam, v, lmax: float, ks: range) -> dict[str, torch.Tensor]:
    """Each fixed method's hop output (``v^T dw*/dlam``), flattened."""
    methods = {"darts": darts()}
    for k in ks:
        methods[f"cg({k})"] = cg(k, None)
        methods[f"neumann({k})"] = neumann(k, 1.0 / lmax)
    return {name: m(inner, w, lam, v).vjp["lam"] for name, m in methods.items()}


def label_cost(label: str) -> float:
    """The cost of what ``auto`` ran, from its label (``auto:cg(8)``, ``auto:darts``)."""
    name = label.removeprefix("auto:")
    if name.startswith("cg("):
        return COSTS.cg(int(name[3:-1]), True)
    return {"darts": 2.0, "sama": 2.0, "first_order": 0.0}[name]


# --------------------------------------------------------------------------- the core method


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_measure_meets_the_target_at_near_the_cheapest_cost(target: float, seed: int) -> None:
    q = QuadraticBilevel.make(n=60, m=5, seed=seed, cond=200.0)
    w, lam, v = q.point()
    exact = q.exact_vjp(v)["lam"]
    decision, reference, _ = auto(target).measure(q.inner, w, lam, v)
    assert decision is not None and decision.converged and decision.within_target
    assert rel(reference["lam"], exact) < 0.05 * target  # the reference is far inside
    method, label = auto(target).build({"kind": decision.chosen.kind, **decision.chosen.settings})
    got = method(q.inner, w, lam, v).vjp["lam"]
    assert rel(got, exact) <= target
    # the cheapest fixed method within the target, chosen knowing the exact answer
    lmax = float(torch.linalg.eigvalsh(q.A).max())
    ks = range(1, 61)
    costs = fixed_costs(ks)
    outs = fixed_outputs(q.inner, w, lam, v, lmax, ks)
    best = min(costs[n] for n, out in outs.items() if rel(out, exact) <= target)
    assert decision.chosen.cost <= 1.3 * best, (label, decision.chosen.cost, best)
    # the table names every alternative with its numbers
    table = decision.table()
    assert "darts" in table and "first_order" in table and f"*{label}" in table


def test_decision_table_and_scalars_report_every_candidate() -> None:
    q = QuadraticBilevel.make(n=20, m=3, seed=4, cond=50.0)
    w, lam, v = q.point()
    decision, _, _ = auto(1e-2).measure(q.inner, w, lam, v)
    assert decision is not None
    labels = [c.label for c in decision.candidates]
    assert labels[:3] == ["first_order", "darts", "sama"]
    assert labels[3:] == [f"cg({k})" for k in GRID if k <= len(labels) - 3]
    scalars = decision.scalars()
    assert scalars["target"] == 1e-2 and scalars["within_target"] == 1.0
    assert scalars["darts_error"] == pytest.approx(
        rel(darts()(q.inner, w, lam, v).vjp["lam"], q.exact_vjp(v)["lam"]), rel=1e-3
    )
    assert "sama_error" not in scalars  # excluded without an Adam preconditioner
    sama = next(c for c in decision.candidates if c.label == "sama")
    assert "equals darts" in sama.excluded


def test_none_within_target_picks_the_most_accurate_and_says_so() -> None:
    q = QuadraticBilevel.make(n=60, m=5, seed=0, cond=1000.0)
    w, lam, v = q.point()
    method = Auto(target=1e-6, max_iterations=5)  # the reference cannot get there
    decision, _, _ = method.measure(q.inner, w, lam, v)
    assert decision is not None
    assert not decision.within_target and not decision.converged
    assert decision.chosen.label == "cg(5)"
    assert "NOT within" in decision.summary() and "did not converge" in decision.summary()


@pytest.mark.parametrize("target", TARGETS)
def test_an_indefinite_hessian_is_measured_against_minres(target: float) -> None:
    """Conjugate gradient stops at the first negative curvature; the reference is then MINRES
    and the choice meets the target against the exact solve."""
    g = torch.Generator().manual_seed(11)
    n, m = 40, 4
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    ev = torch.cat([-torch.linspace(0.5, 2.0, 8, dtype=D), torch.linspace(0.5, 20.0, 32, dtype=D)])
    a = q @ torch.diag(ev) @ q.T
    b = torch.randn(n, m, generator=g, dtype=D)

    def inner(w, lam):
        return 0.5 * w["w"] @ a @ w["w"] - w["w"] @ b @ lam["lam"]

    w = {"w": torch.zeros(n, dtype=D)}
    lam = {"lam": torch.randn(m, generator=g, dtype=D)}
    v = {"w": torch.randn(n, generator=g, dtype=D)}
    exact = b.T @ torch.linalg.solve(a, v["w"])
    method = Auto(target, indefinite="minres")
    decision, reference, _ = method.measure(inner, w, lam, v)
    assert decision is not None and decision.converged and decision.within_target
    assert decision.reference.startswith("MINRES")
    assert "non-positive curvature" in decision.reference
    assert decision.chosen.kind == "minres"
    assert rel(reference["lam"], exact) < 0.05 * target
    chosen, _ = method.build({"kind": decision.chosen.kind, **decision.chosen.settings})
    assert rel(chosen(inner, w, lam, v).vjp["lam"], exact) <= target
    # by default the reference is CG truncated at the negative curvature, which cg(k) with
    # k below the breakdown reproduces exactly
    truncated, reference, _ = auto(target).measure(inner, w, lam, v)
    assert truncated is not None and "truncated" in truncated.reference
    k = truncated.chosen.settings["maxiter"]
    assert truncated.chosen.kind == "cg" and truncated.chosen.error == 0.0
    assert f"product {k + 1};" in truncated.reference
    torch.testing.assert_close(cg(k, None)(inner, w, lam, v).vjp["lam"], reference["lam"])
    torch.testing.assert_close(cg(50)(inner, w, lam, v).vjp["lam"], reference["lam"])


def test_memory_budget_leaves_out_what_does_not_fit() -> None:
    """At a budget below the double-backward graph, only darts and first_order fit."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    x, y = torch.randn(512, 20, dtype=D), torch.randn(512, 1, dtype=D)
    net = net.to(D)
    w = {k: p.detach() for k, p in net.named_parameters()}
    lam = {"l2": torch.tensor(0.1, dtype=D)}

    def inner(w, lam):
        out = torch.func.functional_call(net, w, (x,))
        return ((out - y) ** 2).mean() + lam["l2"] * sum((t**2).sum() for t in w.values())

    v = {k: torch.randn_like(t) for k, t in w.items()}
    free, _, _ = auto(1e-1).measure(inner, w, lam, v)
    assert free is not None
    cg_memory = next(c.memory for c in free.candidates if c.kind == "cg")
    darts_memory = next(c.memory for c in free.candidates if c.label == "darts")
    assert 0 < darts_memory < cg_memory
    budget = (darts_memory + cg_memory) / 2 / 2**20
    tight, _, _ = auto(1e-1, memory_budget_mb=budget).measure(inner, w, lam, v)
    assert tight is not None and tight.chosen.label in ("darts", "first_order")
    assert all("over the budget" in c.excluded for c in tight.candidates if c.kind == "cg")
    with pytest.raises(ValueError, match="no candidate fits"):
        Auto(memory_budget=1.0, candidates=("cg",)).measure(inner, w, lam, v)


class OnceSquare(torch.autograd.Function):
    """``x**2`` with a backward that cannot be differentiated again."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_without_double_backward_it_chooses_among_gradient_methods() -> None:
    q = QuadraticBilevel.make(n=30, m=4, seed=3, cond=30.0)
    root = torch.linalg.cholesky(q.A)

    def inner(w, lam):  # 1/2 w'Aw as 1/2 ||L'w||^2 through a once-differentiable square
        return 0.5 * OnceSquare.apply(root.T @ w["w"]).sum() - w["w"] @ q.B @ lam["lam"]

    w, lam, v = q.point()
    with pytest.raises(ValueError, match="once_differentiable"):
        cg(5)(inner, w, lam, v)
    decision, _, _ = auto(1e-3).measure(inner, w, lam, v)
    assert decision is not None and decision.products == "finite_difference"
    assert "no double backward" in decision.why_first_order
    assert decision.chosen.label.startswith("cg_fd(")
    method, _ = auto(1e-3).build({"kind": decision.chosen.kind, **decision.chosen.settings})
    assert rel(method(inner, w, lam, v).vjp["lam"], q.exact_vjp(v)["lam"]) <= 1e-3


def test_a_caller_without_second_order_autograd_gets_gradient_methods_only() -> None:
    q = QuadraticBilevel.make(n=10, m=3, seed=5)
    w, lam, v = q.point()
    context = HopContext(first_order_only=True)
    result = auto(1e-3)(q.inner, w, lam, v, context)
    decision = result.info.decision
    assert decision.products == "finite_difference" and "FSDP2" in decision.why_first_order
    assert all(not c.label.startswith("cg(") for c in decision.candidates)
    # and the next call runs the chosen gradient-only method
    again = auto(1e-3)(q.inner, w, lam, v, HopContext(state=result.info.state))
    assert again.info.method == f"auto:{decision.chosen.label}" and again.info.decision is None


def test_transformer_level_runs_second_order_through_fused_attention() -> None:
    """Fused attention has no double backward; ``auto``'s products take its math kernel, and
    what it chooses runs and meets its target against the fixture's dense solve."""
    fx = TransformerReweighting.make()
    w, lam, v = fx.point()
    exact = fx.exact_vjp(v)
    decision, _, _ = auto(1e-1).measure(fx.inner, w, lam, v)
    assert decision is not None and decision.products == "autograd"
    method, _ = auto(1e-1).build({"kind": decision.chosen.kind, **decision.chosen.settings})
    got = method(fx.inner, w, lam, v).vjp
    error = float(
        torch.cat([(got[k] - exact[k]).flatten() for k in exact]).norm()
        / torch.cat([exact[k].flatten() for k in exact]).norm()
    )
    assert decision.within_target == (error <= 1e-1) or not decision.converged


def test_drift_of_the_residual_triggers_a_measurement() -> None:
    q = QuadraticBilevel.make(n=40, m=3, seed=6, cond=100.0)
    w, lam, v = q.point()
    method = Auto(target=1e-1, interval=1000, drift=10.0)
    first = method(q.inner, w, lam, v)
    state = dict(first.info.state)
    assert state["choice"]["kind"] == "cg"
    state["decided_residual"] = 1e-12  # as if the solve had been far more accurate then
    second = method(q.inner, w, lam, v, HopContext(state=state))
    assert second.info.decision is None and "residual drift" in second.info.state["remeasure"]
    third = method(q.inner, w, lam, v, HopContext(state=second.info.state))
    assert third.info.decision is not None
    assert third.info.decision.trigger.startswith("residual drift")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_error": 0.0}, "target_error must be a relative error in"),
        ({"target_error": 1.5}, "target_error must be a relative error in"),
        ({"auto_interval": 0}, "auto_interval"),
        ({"auto_drift": 1.0}, "auto_drift must be None or a number > 1"),
        ({"auto_memory_mb": -1.0}, "auto_memory_mb"),
    ],
)
def test_config_refuses_bad_auto_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config(type="auto", **options)


def test_config_builds_auto_from_its_fields() -> None:
    method = Config(
        type="auto", target_error=1e-3, auto_interval=7, auto_drift=None, auto_memory_mb=2.0
    ).method()
    assert isinstance(method, Auto)
    assert (method.target, method.interval, method.drift) == (1e-3, 7, None)
    assert method.memory_budget == 2.0 * 2**20 and not method.first_order
    fd = Config(type="auto", curvature="finite_difference").method()
    assert isinstance(fd, Auto) and fd.first_order and fd.first_order_only


# -------------------------------------------------------------------------- through Engine


class Recorder:
    def __init__(self) -> None:
        self.rows: list[dict] = []


def bilevel(q: QuadraticBilevel, config: Config, rec: Recorder, seed: int = 0):
    class Upper(ImplicitProblem):
        def training_step(self, batch):
            w = self.lower()
            return 0.5 * (w - q.t).pow(2).sum() + 0.5 * q.c * self.module().pow(2).sum()

        def grad_callback(self):
            rec.rows.append(
                {
                    "grad": self.module.value.grad.clone(),
                    "w": self.lower.module.value.detach().clone(),
                    "lam": self.module.value.detach().clone(),
                    "infos": list(self.last_hop_info),
                }
            )

    class Lower(ImplicitProblem):
        def training_step(self, batch):
            w = self.module()
            return 0.5 * w @ q.A @ w - w @ q.B @ self.upper()

    g = torch.Generator().manual_seed(seed)
    up, low = Vec(q.lam0), Vec(torch.randn(q.A.shape[0], generator=g, dtype=D))
    upper = Upper(
        name="upper",
        module=up,
        optimizer=torch.optim.SGD(up.parameters(), lr=0.05),
        train_data_loader=[torch.zeros(1)],
        config=Config(),
    )
    lower = Lower(
        name="lower",
        module=low,
        optimizer=torch.optim.SGD(low.parameters(), lr=0.02),
        train_data_loader=[torch.zeros(1)],
        config=config,
    )
    return upper, lower


def engine_of(problems, steps: int, **options) -> Engine:
    upper, lower = problems[:2]
    return Engine(
        problems=list(problems),
        config=EngineConfig(train_iters=steps, valid_step=0, **options),
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    )


@pytest.mark.parametrize("target", TARGETS)
def test_two_level_engine_meets_target_at_every_hop(target: float) -> None:
    q = QuadraticBilevel.make(n=50, m=4, seed=7, cond=300.0)
    rec = Recorder()
    cfg = Config(type="auto", target_error=target, auto_interval=5)
    upper, lower = bilevel(q, cfg, rec)
    engine_of([upper, lower], 20).run()
    assert len(rec.rows) == 20
    lmax = float(torch.linalg.eigvalsh(q.A).max())
    ks = range(1, 51)
    costs = fixed_costs(ks)
    worst = dict.fromkeys(costs, 0.0)
    spent = []
    for row in rec.rows:
        v = row["w"] - q.t
        exact = q.B.T @ torch.linalg.solve(q.A, v)
        hop = row["grad"] - q.c * row["lam"]
        assert rel(hop, exact) <= target  # every hop, measuring or not
        (info,) = row["infos"]
        if info.decision is None:
            spent.append(label_cost(info.method))
        w = {"w": row["w"]}
        lam = {"lam": row["lam"]}
        for name, out in fixed_outputs(q.inner, w, lam, {"w": v}, lmax, ks).items():
            worst[name] = max(worst[name], rel(out, exact))
    assert [s for s, _, _ in upper.decisions] == [1, 6, 11, 16]
    best = min(costs[n] for n, e in worst.items() if e <= target)
    assert sum(spent) / len(spent) <= 1.3 * best, (spent, best)


def trilevel(tri: QuadraticTrilevel, cfg_mid: Config, cfg_low: Config, rec: Recorder):
    class Up(ImplicitProblem):
        def training_step(self, batch):
            return tri.upper({"x": self.module()}, self.mid(), tri.s)

        def grad_callback(self):
            rec.rows.append(
                {
                    "up": self.module.value.grad.clone(),
                    "x": self.module.value.detach().clone(),
                    "y": self.mid.module.value.detach().clone(),
                    "z": self.low.module.value.detach().clone(),
                    "infos": list(self.last_hop_info),
                }
            )

    class Mid(ImplicitProblem):
        def training_step(self, batch):
            return tri.middle({"y": self.module()}, {"x": self.up()}, self.low())

        def grad_callback(self):
            rec.rows.append(
                {
                    "mid": self.module.value.grad.clone(),
                    "x": self.up.module.value.detach().clone(),
                    "y": self.module.value.detach().clone(),
                    "z": self.low.module.value.detach().clone(),
                    "infos": list(self.last_hop_info),
                }
            )

    class Low(ImplicitProblem):
        def training_step(self, batch):
            return tri.lower({"z": self.module()}, {"y": self.mid()})

    z, y, x = tri.point()
    mods = {"up": Vec(x), "mid": Vec(y + 0.1), "low": Vec(z - 0.1)}
    cfgs = {"up": Config(), "mid": cfg_mid, "low": cfg_low}
    classes = {"up": Up, "mid": Mid, "low": Low}
    return [
        classes[n](
            name=n,
            module=mods[n],
            optimizer=torch.optim.SGD(mods[n].parameters(), lr=0.02),
            train_data_loader=[torch.zeros(1)],
            config=cfgs[n],
        )
        for n in ("up", "mid", "low")
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_three_level_engine_meets_target_at_every_hop(target: float) -> None:
    tri = QuadraticTrilevel.make(n1=40, n2=30, n3=4, seed=2)
    rec = Recorder()
    cfg = Config(type="auto", target_error=target, auto_interval=4)
    up, mid, low = trilevel(tri, cfg, cfg, rec)
    Engine(
        problems=[up, mid, low],
        config=EngineConfig(train_iters=12, valid_step=0),
        dependencies={"u2l": {up: [mid], mid: [low]}, "l2u": {low: [mid], mid: [up]}},
    ).run()
    h2 = tri.H2_partial()
    tops = [r for r in rec.rows if "up" in r]
    mids = [r for r in rec.rows if "mid" in r]
    assert len(tops) == 12 and len(mids) == 12
    for r in tops:  # the top hop: through mid, mid's auto
        exact = tri.B2.T @ torch.linalg.solve(h2, r["y"] - tri.t)
        assert rel(r["up"] - tri.c * r["x"], exact) <= target
    for r in mids:  # the middle hop: through low, low's auto
        x, y, z = r["x"], r["y"], r["z"]
        d_y = tri.A2 @ y - tri.B2 @ x - tri.g * tri.C.T @ (z - tri.C @ y)
        d_z = tri.g * (z - tri.C @ y)
        assert rel(r["mid"] - d_y, tri.J1().T @ d_z) <= target
    assert [s for s, _, _ in up.decisions] == [1, 5, 9]
    assert [h for _, h, _ in mid.decisions] == ["low->mid"] * 3
    # hindsight: the cheapest cg(k) within the target at every hop of both levels
    for rows, h, key in ((tops, h2, "up"), (mids, tri.A1, "mid")):
        spent = [label_cost(r["infos"][0].method) for r in rows if r["infos"][0].decision is None]
        evals = torch.linalg.eigvalsh(h)
        need = 1
        while need < h.shape[0] and any(_cg_error(h, r, tri, key, need) > target for r in rows):
            need += 1
        assert sum(spent) / len(spent) <= 1.3 * COSTS.cg(need, True), (key, spent, need)
        assert float(evals.min()) > 0


def _cg_error(h: torch.Tensor, r: dict, tri: QuadraticTrilevel, key: str, k: int) -> float:
    """The true error of cg(k) at a recorded hop."""
    if key == "up":
        b = r["y"] - tri.t
        m = tri.B2.T
    else:
        b = tri.g * (r["z"] - tri.C @ r["y"])
        m = tri.B1.T
    x = cg(k, None).solver(lambda u: {"u": h @ u["u"]}, {"u": b}).x["u"]
    return rel(m @ x, m @ torch.linalg.solve(h, b))


def test_decisions_reach_the_console_and_every_backend(monkeypatch, caplog) -> None:
    from ziggurat.logging import MetricLogger

    class Recording(MetricLogger):
        def __init__(self) -> None:
            self.rows: list[tuple[str, dict, int]] = []
            self.texts: list[tuple[str, dict, int]] = []

        def log(self, source, values, step):
            self.rows.append((source, dict(values), step))

        def describe(self, source, values, step):
            self.texts.append((source, dict(values), step))

    q = QuadraticBilevel.make(n=20, m=3, seed=8, cond=50.0)
    rec = Recorder()
    upper, lower = bilevel(q, Config(type="auto", target_error=1e-2, auto_interval=4), rec)
    engine = engine_of([upper, lower], 6)
    recording = Recording()
    monkeypatch.setattr(engine._run, "_logger", recording)
    monkeypatch.setattr(engine._run, "logger", lambda: recording)
    with caplog.at_level(logging.INFO):
        engine.run()
    lines = [r.getMessage() for r in caplog.records if "/auto]" in r.getMessage()]
    assert len(lines) == 2 and "hop lower->upper: auto chose cg(" in lines[0]
    assert "darts" in lines[0] and "first_order" in lines[0]  # the alternatives
    rows = [(s, v, t) for s, v, t in recording.rows if s == "upper/auto/lower->upper"]
    assert [t for _, _, t in rows] == [1, 5]
    assert rows[0][1]["within_target"] == 1.0 and rows[0][1]["chosen_error"] <= 5e-3
    texts = [v for s, v, _ in recording.texts if s == "upper/auto/lower->upper"]
    assert texts[0]["chosen"] == upper.decisions[0][2].chosen.label
    assert texts[0]["decision"] == upper.decisions[0][2].table()


def test_resume_keeps_the_decisions_bit_exactly(tmp_path) -> None:
    q = QuadraticBilevel.make(n=30, m=4, seed=9, cond=100.0)
    cfg = dict(type="auto", target_error=1e-2, auto_interval=3)

    def program(steps: int, **options):
        upper, lower = bilevel(q, Config(**cfg), Recorder())
        return engine_of([upper, lower], steps, **options), upper, lower

    straight, s_up, s_low = program(10)
    straight.run()
    first, _, _ = program(5, checkpoint_dir=str(tmp_path), checkpoint_step=5)
    first.run()
    resumed, r_up, r_low = program(10, checkpoint_dir=str(tmp_path), resume=True)
    resumed.run()
    for a, b in ((s_up, r_up), (s_low, r_low)):
        assert torch.equal(a.module.value, b.module.value)
    # the run after the resume measured where the uninterrupted one did (steps 7 and 10)
    assert [s for s, _, _ in r_up.decisions] == [7, 10]
    assert [s for s, _, _ in s_up.decisions] == [1, 4, 7, 10]
    state = r_low._hops.states[("upper", 0, 1)]
    assert state == s_low._hops.states[("upper", 0, 1)] and state["decisions"] == 4


def test_a_saved_state_of_another_method_is_refused() -> None:
    q = QuadraticBilevel.make(n=5, m=2, seed=0)
    w, lam, v = q.point()
    with pytest.raises(ValueError, match="not auto's"):
        auto()(q.inner, w, lam, v, HopContext(state={"kind": "other"}))
    assert math.isfinite(COSTS.cg(3, False))
