"""Tree arithmetic used by the solvers: fused ``axpy`` and per-leaf ``norm``."""

from __future__ import annotations

import pytest
import torch

from ziggurat import _tree

DT = torch.float64


def trees() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = {"a": torch.randn(3, 4, generator=g, dtype=DT), "b": torch.randn(5, generator=g, dtype=DT)}
    y = {k: torch.randn(t.shape, generator=g, dtype=DT) for k, t in x.items()}
    return x, y


@pytest.mark.parametrize("alpha", [0.7, -2.5, torch.tensor(0.7, dtype=DT)])
def test_axpy_is_alpha_x_plus_y(alpha: float | torch.Tensor) -> None:
    x, y = trees()
    out = _tree.axpy(alpha, x, y)
    assert list(out) == list(y)
    for k in y:
        torch.testing.assert_close(out[k], y[k] + alpha * x[k], rtol=1e-15, atol=1e-15)


def test_axpy_keeps_dtype_and_is_differentiable_in_every_argument() -> None:
    x, y = trees()
    alpha = torch.tensor(0.3, dtype=DT, requires_grad=True)
    xs = {k: t.clone().requires_grad_(True) for k, t in x.items()}
    out = _tree.axpy(alpha, xs, y)
    assert all(t.dtype == DT for t in out.values())
    total = sum(t.sum() for t in out.values())
    assert isinstance(total, torch.Tensor)
    d_alpha, d_a = torch.autograd.grad(total, [alpha, xs["a"]])
    assert float(d_alpha) == pytest.approx(sum(float(t.sum()) for t in x.values()))
    torch.testing.assert_close(d_a, torch.full_like(d_a, 0.3))
    f32 = {k: t.float() for k, t in x.items()}
    assert all(t.dtype == torch.float32 for t in _tree.axpy(alpha.detach(), f32, f32).values())


def test_norm_matches_the_square_root_of_dot() -> None:
    x, _ = trees()
    assert float(_tree.norm(x)) == pytest.approx(float(torch.sqrt(_tree.dot(x, x))), rel=1e-14)
    assert float(_tree.norm({})) == 0.0
    assert float(_tree.norm({"z": torch.zeros(3, dtype=DT)})) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_variants_equal_the_pure_ones_bit_for_bit(dtype: torch.dtype) -> None:
    x, y = ({k: t.to(dtype) for k, t in tree.items()} for tree in trees())
    beta = torch.tensor(0.37, dtype=dtype)

    def fresh() -> dict[str, torch.Tensor]:
        return {k: t.clone() for k, t in y.items()}

    pairs = [
        (_tree.axpy(-0.3, x, y), _tree.axpy_(-0.3, x, fresh())),
        (_tree.axpy(beta, x, y), _tree.axpy_(beta, x, fresh())),
        (_tree.axpy(beta, y, x), _tree.xpay_(x, beta, fresh())),
        (_tree.add(y, x), _tree.add_(fresh(), x)),
        (_tree.scale(y, 0.1), _tree.scale_(fresh(), 0.1)),
    ]
    for pure, in_place in pairs:
        assert all(torch.equal(pure[k], in_place[k]) for k in y)


def test_in_place_variants_write_into_their_output_tree() -> None:
    x, y = trees()
    out = _tree.axpy_(2.0, x, y)
    assert out is y and all(out[k] is y[k] for k in y)


def test_detach_keeps_graph_free_tensors_and_cuts_the_others() -> None:
    x, _ = trees()
    live = {k: t.clone().requires_grad_(True) for k, t in x.items()}
    assert all(_tree.detach(x)[k] is x[k] for k in x)
    cut = _tree.detach({k: 2 * t for k, t in live.items()})
    assert all(not t.requires_grad for t in cut.values())
