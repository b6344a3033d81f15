"""The whole-program benchmark's upper-step floor: its formulas on made-up timings, and the
quantities its timed closures compute, on a toy model (workload a)."""

from __future__ import annotations

import pytest

from benchmarks import floors, programs, step_floors

# G = 1, B = 3, H = 2, M = 0.5, FO = 0 (a first-order hop is free at the engine level)
PRIM = floors.Primitives(g=1.0, g_w=1.5, build=3.0, hvp=2.0, mixed=0.5, first_order=0.0)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("first_order", 0.25),  # the upper gradient alone
        ("darts", 0.25 + 2.0),
        ("sama", 0.25 + 2.0),
        ("neumann", 0.25 + 3.0 + (programs.K + 1) * 2.0),
        ("cg", 0.25 + 3.0 + (programs.K + 1) * 2.0),
    ],
)
def test_upper_floor_is_upper_gradient_plus_method_floor(method: str, expected: float) -> None:
    assert step_floors.upper_floor_s(method, PRIM, 0.25) == pytest.approx(expected)


# made-up per-term costs (see step_floors.step_terms)
TERMS = {
    "fetch": 0.01,
    "opt": 0.02,
    "norm": 0.1,
    "axpy": 0.3,
    "axpy_": 0.2,
    "dot": 0.4,
    "e3": 0.5,
    "e2": 0.6,
}


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("first_order", 0.03),
        ("darts", 0.03 + 0.1 + 2 * 0.3),
        ("sama", 0.03 + 0.1 + 2 * 0.3 + 0.5 + 0.6),
        ("neumann", 0.03 + (2 * programs.K + 1) * 0.2),
        ("cg", 0.03 + programs.K * (3 * 0.2 + 2 * 0.4) + 0.4),
    ],
)
def test_step_floor_adds_the_work_the_floor_omits(method: str, expected: float) -> None:
    assert step_floors.step_extra_s(method, TERMS) == pytest.approx(expected)


def test_a_first_order_step_needs_only_the_upper_forward() -> None:
    assert step_floors.upper_floor_s("first_order", PRIM, 0.25, u_forward=0.1) == 0.1


def test_cg_floors_count_the_products_it_spent() -> None:
    # CG stopped after 2 of K products: B + 3 H and 2 iterations of vector work
    assert step_floors.upper_floor_s("cg", PRIM, 0.25, 2) == pytest.approx(0.25 + 3.0 + 3 * 2.0)
    expected = 0.03 + 2 * (3 * 0.2 + 2 * 0.4) + 0.4
    assert step_floors.step_extra_s("cg", TERMS, 2) == pytest.approx(expected)


def test_floor_tasks_compute_what_they_are_charged_for() -> None:
    """On workload (a), a 62-parameter model: the timed closures are the engine's own lower
    loss, its gradients, Hessian-vector and mixed products (against dense derivatives), and
    the upper gradient."""
    pytest.importorskip("sklearn")
    import torch

    stamps: dict[str, list[float]] = {"lower": [], "upper": [], "products": []}
    engine_mod, upper, lower, batch = programs.build("ziggurat", "a", "cg", "10k", stamps)
    configs = __import__("ziggurat.configs", fromlist=["EngineConfig"])
    engine_mod.Engine(
        problems=[upper, lower],
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
        config=configs.EngineConfig(train_iters=1, logger_type="none"),
    )
    x, y, xm, ym = batch
    tasks = step_floors.primitive_tasks("a", upper, lower, batch, products=3)
    w0 = {k: p.detach() for k, p in lower.module.named_parameters()}
    lam0 = {k: p.detach() for k, p in upper.module.named_parameters()}
    f = step_floors.pure_lower_loss("a", upper, lower, x, y)
    lower_loss = lower.training_step((x, y)).detach()
    assert float(f(w0, lam0)) == pytest.approx(float(lower_loss), rel=1e-6)

    def split(flat, like):
        out, i = {}, 0
        for k, t in like.items():
            out[k] = flat[i : i + t.numel()].view_as(t)
            i += t.numel()
        return out

    def cat(ts):
        return torch.cat([t.reshape(-1) for t in ts])

    wf, lf = cat(w0.values()), cat(lam0.values())

    def flat_loss(a, b):
        return f(split(a, w0), split(b, lam0))

    def grad_w(a, b):
        return torch.autograd.grad(flat_loss(a, b), a, create_graph=True)[0]

    hess = torch.autograd.functional.hessian(lambda a: flat_loss(a, lf), wf)
    mixed = torch.autograd.functional.jacobian(lambda b: grad_w(wf.requires_grad_(True), b), lf)
    v = cat(tasks["v"]().values())
    close = {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(cat(tasks["B+KH"]()), hess @ v, **close)
    torch.testing.assert_close(cat(tasks["B+KM"]()), mixed.T @ v, **close)
    assert cat(tasks["B"]()).shape == wf.shape
    g_lam = torch.autograd.functional.jacobian(lambda b: flat_loss(wf, b), lf)
    torch.testing.assert_close(cat(tasks["G"]()), g_lam, **close)
    g_w = torch.autograd.functional.jacobian(lambda a: flat_loss(a, lf), wf)
    torch.testing.assert_close(cat(tasks["Gw"]()), g_w, **close)
    upper_loss = upper.training_step((xm, ym))
    u = torch.autograd.grad(upper_loss, list(lower.module.parameters()))
    torch.testing.assert_close(cat(tasks["U"]()), cat(u), **close)
    assert float(tasks["U0"]().detach()) == pytest.approx(float(upper_loss.detach()), rel=1e-6)
    assert float((hess @ v).abs().max()) > 1e-3 and float((mixed.T @ v).abs().max()) > 1e-3
