"""Small real datasets bundled with scikit-learn, as tensors ready for HPO experiments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def _sklearn_datasets(caller: str) -> Any:
    """``sklearn.datasets``, or an ``ImportError`` that names the extra to install."""
    try:
        import sklearn.datasets
    except ImportError as err:
        raise ImportError(
            f"ziggurat.datasets.{caller} needs scikit-learn, which is not installed ({err}); "
            "pip install 'ziggurat[examples]' (or pip install scikit-learn)"
        ) from err
    return sklearn.datasets


@dataclass(frozen=True)
class Split:
    """A train/validation split: inputs ``X*`` (``n x d``) and targets ``y*``."""

    X: Tensor
    y: Tensor
    Xv: Tensor
    yv: Tensor


def breast_cancer(
    *, n_train: int = 200, seed: int = 0, dtype: torch.dtype = torch.float64
) -> Split:
    """Wisconsin breast cancer (569 x 30, binary labels in ``{0, 1}``), shuffled and split.

    The first ``n_train`` shuffled rows train, the rest validate. Features are standardised with
    the training rows' mean and standard deviation, so no validation statistic leaks into
    training. Needs scikit-learn (``pip install 'ziggurat[examples]'``); the data ship with it.
    """
    data = _sklearn_datasets("breast_cancer").load_breast_cancer()
    n = len(data.target)
    if isinstance(n_train, bool) or not isinstance(n_train, int) or not 2 <= n_train < n:
        raise ValueError(f"breast_cancer n_train must be an integer in [2, {n - 1}], got {n_train}")
    X = torch.tensor(data.data, dtype=dtype)
    y = torch.tensor(data.target, dtype=dtype)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    mean, std = X[:n_train].mean(0), X[:n_train].std(0)
    X = (X - mean) / std
    return Split(X[:n_train], y[:n_train], X[n_train:], y[n_train:])
