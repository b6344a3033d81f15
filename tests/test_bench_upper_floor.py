"""The whole-program benchmark's upper-step floor, on made-up timings (nothing is timed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


workloads = _load("workloads")
floors = _load("floors")

# G = 1, B = 3, H = 2, M = 0.5, FO = 0 (a first-order hop is free at the engine level)
PRIM = floors.Primitives(g=1.0, g_w=1.5, build=3.0, hvp=2.0, mixed=0.5, first_order=0.0)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("first_order", 0.25),  # the upper gradient alone
        ("darts", 0.25 + 2.0),
        ("sama", 0.25 + 2.0),
        ("neumann", 0.25 + 3.0 + (workloads.K + 1) * 2.0),
        ("cg", 0.25 + 3.0 + (workloads.K + 1) * 2.0),
    ],
)
def test_upper_floor_is_upper_gradient_plus_method_floor(method: str, expected: float) -> None:
    assert workloads.upper_floor_s(method, PRIM, 0.25) == pytest.approx(expected)


# made-up per-term costs (see workloads.step_terms)
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
        ("neumann", 0.03 + (2 * workloads.K + 1) * 0.2),
        ("cg", 0.03 + workloads.K * (3 * 0.2 + 2 * 0.4) + 0.4),
    ],
)
def test_step_floor_adds_the_work_the_floor_omits(method: str, expected: float) -> None:
    assert workloads.step_extra_s(method, TERMS) == pytest.approx(expected)


def test_a_first_order_step_needs_only_the_upper_forward() -> None:
    assert workloads.upper_floor_s("first_order", PRIM, 0.25, u_forward=0.1) == 0.1


def test_cg_floors_count_the_products_it_spent() -> None:
    # CG stopped after 2 of K products: B + 3 H and 2 iterations of vector work
    assert workloads.upper_floor_s("cg", PRIM, 0.25, 2) == pytest.approx(0.25 + 3.0 + 3 * 2.0)
    expected = 0.03 + 2 * (3 * 0.2 + 2 * 0.4) + 0.4
    assert workloads.step_extra_s("cg", TERMS, 2) == pytest.approx(expected)
