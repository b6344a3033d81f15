"""``ziggurat.datasets``: the one door to scikit-learn's bundled sets, and its errors."""

from __future__ import annotations

import sys

import pytest
import torch

from ziggurat import datasets
from ziggurat.analytic import RidgeHPO

pytest.importorskip("sklearn")


def test_unknown_set_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown scikit-learn data set 'iris'.*'diabetes'"):
        datasets.sklearn_arrays("iris")


def test_diabetes_is_standardised_over_all_rows_and_split_in_order() -> None:
    d = datasets.diabetes(n_train=300)
    assert (d.X.shape, d.Xv.shape, d.y.shape, d.yv.shape) == ((300, 10), (142, 10), (300,), (142,))
    data, target = (torch.tensor(a) for a in datasets.sklearn_arrays("diabetes"))
    torch.testing.assert_close(d.X[0], (data[0] - data.mean(0)) / data.std(0))
    torch.testing.assert_close(d.Xv[-1], (data[-1] - data.mean(0)) / data.std(0))
    torch.testing.assert_close(d.y[5], (target[5] - target.mean()) / target.std())


def test_ridge_fixture_reads_the_same_split() -> None:
    ridge, d = RidgeHPO.diabetes(n_train=250), datasets.diabetes(n_train=250)
    for got, want in ((ridge.X, d.X), (ridge.y, d.y), (ridge.Xv, d.Xv), (ridge.yv, d.yv)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("n_train", [1, 442, 2.5, True])
def test_diabetes_n_train_is_checked(n_train) -> None:
    with pytest.raises(ValueError, match=r"diabetes n_train must be an integer in \[2, 441\]"):
        datasets.diabetes(n_train=n_train)


@pytest.mark.parametrize(
    ("load", "name"),
    [
        (datasets.breast_cancer, "breast_cancer"),
        (datasets.diabetes, "diabetes"),
        (datasets.digits, "digits"),
        (RidgeHPO.diabetes, "diabetes"),
    ],
)
def test_every_loader_without_scikit_learn_names_the_extra(monkeypatch, load, name) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(
        ImportError, match=rf"ziggurat.datasets.{name} needs scikit-learn.*'ziggurat\[examples\]'"
    ):
        load()
