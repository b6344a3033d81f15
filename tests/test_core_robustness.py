"""Inputs the core refuses with a clear error instead of a silent wrong answer."""

from __future__ import annotations

import pytest
import torch

from ziggurat import linalg
from ziggurat.analytic import QuadraticBilevel
from ziggurat.hypergradient import (
    Implicit,
    MixedAutograd,
    cg,
    darts,
    exact,
    first_order,
    fixed_point,
    neumann,
    sama,
)

D = torch.float64


@pytest.fixture(scope="module")
def quad():
    q = QuadraticBilevel.make(seed=0)
    return (q, *q.point())


@pytest.mark.parametrize(
    "method",
    [cg(5), exact(), neumann(5, 0.1), fixed_point(5, 0.1), darts(), sama(), first_order()],
    ids=lambda m: m.name,
)
def test_a_cotangent_in_another_dtype_is_refused(method, quad) -> None:
    """Before, CG ran in mixed precision and the dense solve blamed a singular Hessian."""
    q, w, lam, v = quad
    v32 = {"w": v["w"].float()}
    with pytest.raises(
        ValueError,
        match=r"cotangent v\['w'\] has dtype torch\.float32 but the lower parameter w\['w'\] "
        r"has dtype torch\.float64; cast v",
    ):
        method(q.inner, w, lam, v32)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    "method",
    [cg(5), exact(), neumann(5, 0.1), fixed_point(5, 0.1), darts(), darts(radius=None), sama()],
    ids=lambda m: m.name,
)
def test_a_nan_cotangent_is_refused_not_turned_into_zeros(method, quad, value) -> None:
    q, w, lam, v = quad
    bad = v["w"].clone()
    bad[1] = value
    with pytest.raises(ValueError, match=r"right-hand side b \(the cotangent v = dF/dw"):
        method(q.inner, w, lam, {"w": bad})
    # and a finite v still gives the closed form
    got = method(q.inner, w, lam, v).vjp["lam"]
    assert torch.isfinite(got).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver": None}, r"implicit solver must be a linear solver.*got None"),
        ({"solver": 3}, r"implicit solver must be a linear solver.*got 3"),
        ({"mixed": None}, r"implicit mixed must be a mixed-product rule.*got None"),
        ({"curvature": "exact"}, r"implicit curvature must have a matvec.*got 'exact'"),
        ({"label": 7}, r"implicit label must be a string, got 7"),
    ],
)
def test_implicit_refuses_bad_strategies_at_construction(kwargs, match: str) -> None:
    options = {"solver": linalg.conjugate_gradient(5), "mixed": MixedAutograd(), **kwargs}
    with pytest.raises(ValueError, match=match):
        Implicit(**options)


def test_implicit_with_valid_strategies_matches_the_closed_form(quad) -> None:
    q, w, lam, v = quad
    got = Implicit(linalg.dense())(q.inner, w, lam, v).vjp["lam"]
    want = q.exact_vjp(v)["lam"]
    assert float((got - want).norm() / want.norm()) < 1e-12
