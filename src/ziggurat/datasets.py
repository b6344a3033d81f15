"""Small offline data sets: scikit-learn's bundled sets and Fashion-MNIST, with a loader.

Nothing here reaches the network. scikit-learn ships its small sets inside the package (the
``examples`` extra installs it); Fashion-MNIST (Xiao et al. 2017) is read from the idx files that
Debian's ``dataset-fashion-mnist`` package installs, with no torchvision.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._extras import require_extra

SKLEARN_SETS = ("breast_cancer", "diabetes", "digits")
"""The scikit-learn sets :func:`sklearn_arrays` reads."""

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
"""Where :func:`fashion_mnist_dir` looks: the directory of Debian's ``dataset-fashion-mnist``."""

_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def sklearn_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The features ``(n, d)`` and targets ``(n,)`` of a set bundled with scikit-learn.

    Args:
        name: one of :data:`SKLEARN_SETS`.

    Raises:
        ValueError: for another name.
        ImportError: when scikit-learn is missing, naming the extra that installs it.
    """
    if name not in SKLEARN_SETS:
        raise ValueError(f"unknown scikit-learn data set {name!r}; choose one of {SKLEARN_SETS}")
    sklearn_datasets = require_extra("sklearn.datasets", f"ziggurat.datasets.{name}")
    data = getattr(sklearn_datasets, f"load_{name}")()
    return data.data, data.target


@dataclass(frozen=True)
class Split:
    """A train/validation split: inputs ``X*`` (``n x d``) and targets ``y*``."""

    X: Tensor
    y: Tensor
    Xv: Tensor
    yv: Tensor


def _check_n_train(name: str, n_train: int, n: int) -> None:
    if isinstance(n_train, bool) or not isinstance(n_train, int) or not 2 <= n_train < n:
        raise ValueError(f"{name} n_train must be an integer in [2, {n - 1}], got {n_train}")


def breast_cancer(
    *, n_train: int = 200, seed: int = 0, dtype: torch.dtype = torch.float64
) -> Split:
    """Wisconsin breast cancer (569 x 30, binary labels in ``{0, 1}``), shuffled and split.

    The first ``n_train`` shuffled rows train, the rest validate. Features are standardised with
    the training rows' mean and standard deviation, so no validation statistic leaks into
    training. Needs scikit-learn (``pip install 'ziggurat[examples]'``); the data ship with it.
    """
    data, target = sklearn_arrays("breast_cancer")
    n = len(target)
    _check_n_train("breast_cancer", n_train, n)
    X = torch.tensor(data, dtype=dtype)
    y = torch.tensor(target, dtype=dtype)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    mean, std = X[:n_train].mean(0), X[:n_train].std(0)
    X = (X - mean) / std
    return Split(X[:n_train], y[:n_train], X[n_train:], y[n_train:])


def diabetes(*, n_train: int = 300, dtype: torch.dtype = torch.float64) -> Split:
    """Diabetes progression (442 x 10, a continuous target), standardised and split in order.

    Features and target are standardised with the mean and standard deviation of all 442 rows,
    then the first ``n_train`` rows train and the rest validate (no shuffle). This is the ridge
    problem whose figures ``ziggurat check`` documents, so it stays exactly as it is.
    """
    data, target = sklearn_arrays("diabetes")
    _check_n_train("diabetes", n_train, len(target))
    X = torch.tensor(data, dtype=dtype)
    y = torch.tensor(target, dtype=dtype)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return Split(X[:n_train], y[:n_train], X[n_train:], y[n_train:])


@dataclass(frozen=True)
class Images:
    """A classification data set: ``x`` (n, features) in [0, 1], ``y`` (n,) int labels."""

    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int = 10


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (optionally gzipped) into an array of its stored shape and type.

    The format: two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian
    uint32 sizes, then the data in C order.

    Raises:
        ValueError: when the header is not an idx header or the data are short.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (header {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def fashion_mnist_dir() -> Path | None:
    """The directory holding the Fashion-MNIST idx files, or ``None`` when absent.

    ``ZIGGURAT_FASHION_MNIST`` overrides the search of :data:`FASHION_MNIST_DIRS` (an empty
    value disables it).
    """
    env = os.environ.get("ZIGGURAT_FASHION_MNIST")
    candidates = (env,) if env is not None else FASHION_MNIST_DIRS
    for d in candidates:
        if d and (Path(d) / "train-images-idx3-ubyte.gz").exists():
            return Path(d)
    return None


def load_images(*, prefer_fashion: bool = True, verbose: bool = True) -> Images:
    """Fashion-MNIST (784 features) when installed, else scikit-learn digits (64 features).

    The fall-back is announced in one printed line when ``verbose``.
    """
    where = fashion_mnist_dir() if prefer_fashion else None
    if where is not None:
        x = read_idx(where / "train-images-idx3-ubyte.gz").reshape(-1, 784) / 255.0
        y = read_idx(where / "train-labels-idx1-ubyte.gz").astype(np.int64)
        xt = read_idx(where / "t10k-images-idx3-ubyte.gz").reshape(-1, 784) / 255.0
        yt = read_idx(where / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
        return Images("fashion-mnist", x.astype(np.float32), y, xt.astype(np.float32), yt)
    if verbose and prefer_fashion:
        print(
            "Fashion-MNIST not found (apt-get install dataset-fashion-mnist); using sklearn digits"
        )
    return digits()


def digits(seed: int = 0, test_fraction: float = 0.3) -> Images:
    """scikit-learn's 8x8 digits scaled to [0, 1], split into train and test at ``seed``."""
    data, target = sklearn_arrays("digits")
    x = (data / 16.0).astype(np.float32)
    idx = np.random.default_rng(seed).permutation(len(x))
    n_test = int(test_fraction * len(x))
    te, tr = idx[:n_test], idx[n_test:]
    return Images("digits", x[tr], target[tr], x[te], target[te])


class Batches:
    """A re-iterable loader over in-memory tensors: one shuffled epoch per iteration.

    Much cheaper than ``DataLoader(TensorDataset(...))`` for small tensors, since batches are
    sliced, not collated sample by sample. ``batch_size=None`` yields the whole set.
    """

    def __init__(self, *tensors: Tensor, batch_size: int | None = None, seed: int = 0) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("Batches needs tensors of one common length")
        self.tensors = tensors
        self.batch_size = batch_size or len(tensors[0])
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.tensors[0]) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=self.generator)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield tuple(t[idx] for t in self.tensors)
