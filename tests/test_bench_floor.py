"""The benchmark's floor arithmetic, on made-up timings (no timing happens here)."""

from __future__ import annotations

import pytest

from benchmarks import floors

# G = 1, Gw = 1.5, B = 3, H = 2 and M = 0.5 (marginal, from K = 10), FO = 0.1
TIMINGS = {"G": 1.0, "Gw": 1.5, "B": 3.0, "B+KH": 23.0, "B+KM": 8.0, "FO": 0.1}


def test_primitives_take_marginal_product_costs() -> None:
    p = floors.primitives_from_timings(TIMINGS, 10)
    assert (p.g, p.g_w, p.build, p.first_order) == (1.0, 1.5, 3.0, 0.1)
    assert p.hvp == pytest.approx(2.0)
    assert p.mixed == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kind", "k", "formula", "floor_s", "tight_s"),
    [
        ("first_order", 0, "FO", 0.1, 0.1),
        ("darts", 0, "FO + 2 G", 2.1, 2.1),
        ("sama", 0, "FO + 2 G", 2.1, 2.1),
        ("neumann", 5, "B + 6 H", 15.0, 13.5),  # 3 + 6*2 ; 3 + 5*2 + 0.5
        ("cg", 20, "B + 21 H", 45.0, 43.5),
        ("unrolled", 5, "5 (B + H)", 25.0, 25.0),
    ],
)
def test_floor_formulas(kind: str, k: int, formula: str, floor_s: float, tight_s: float) -> None:
    p = floors.primitives_from_timings(TIMINGS, 10)
    f = floors.floor(floors.MethodSpec(kind, kind, k), p)
    assert f.formula == formula
    assert f.seconds == pytest.approx(floor_s)
    assert f.tight_seconds == pytest.approx(tight_s)


def test_rows_give_units_and_ratios() -> None:
    p = floors.primitives_from_timings(TIMINGS, 10)
    specs = [floors.MethodSpec("neumann(5)", "neumann", 5), floors.MethodSpec("darts", "darts")]
    table = floors.rows(specs, {"neumann(5)": 16.5, "darts": 2.52}, p)
    neu, darts = table
    assert neu.in_g == pytest.approx(16.5)
    assert neu.in_h == pytest.approx(8.25)
    assert neu.ratio == pytest.approx(1.1)
    assert neu.tight_ratio == pytest.approx(16.5 / 13.5)
    assert floors.within(neu)
    assert darts.ratio == pytest.approx(1.2)
    assert not floors.within(darts)
    text = floors.methods_table(table)
    assert "| neumann(5) | 16500.000 | 16.50 | 8.25 | B + 6 H | 15000.000 | 1.100 | 1.222 |" in text


def test_noisy_timings_are_refused() -> None:
    noisy = {**TIMINGS, "B+KH": 2.9}  # K products measured faster than none
    with pytest.raises(ValueError, match="marginal H"):
        floors.primitives_from_timings(noisy, 10)
    with pytest.raises(ValueError, match="products"):
        floors.primitives_from_timings(TIMINGS, 0)


def test_method_spec_checks_its_kind_and_count() -> None:
    with pytest.raises(ValueError, match="kind"):
        floors.MethodSpec("x", "lbfgs")
    with pytest.raises(ValueError, match="cg needs k >= 1"):
        floors.MethodSpec("cg", "cg", 0)
