"""Offline data sets for the examples: scikit-learn's bundled sets and Fashion-MNIST.

Fashion-MNIST (Xiao et al. 2017) is read from the idx files that Debian's
``dataset-fashion-mnist`` package installs; no network and no torchvision are needed.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (optionally gzipped) into an array of its stored shape and type.

    The format: two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian
    uint32 sizes, then the data in C order.
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

    ``ZIGGURAT_FASHION_MNIST`` overrides the search (an empty value disables it).
    """
    env = os.environ.get("ZIGGURAT_FASHION_MNIST")
    candidates = (env,) if env is not None else FASHION_MNIST_DIRS
    for d in candidates:
        if d and (Path(d) / "train-images-idx3-ubyte.gz").exists():
            return Path(d)
    return None


@dataclass(frozen=True)
class Images:
    """A classification data set: ``x`` (n, features) in [0, 1], ``y`` (n,) int labels."""

    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int = 10


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
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    idx = np.random.default_rng(seed).permutation(len(x))
    n_test = int(test_fraction * len(x))
    te, tr = idx[:n_test], idx[n_test:]
    return Images("digits", x[tr], data.target[tr], x[te], data.target[te])


def split(n: int, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint random index sets of the given sizes out of ``range(n)``."""
    if sum(sizes) > n:
        raise ValueError(f"cannot take {sum(sizes)} samples out of {n}")
    idx = np.random.default_rng(seed).permutation(n)
    out, start = [], 0
    for s in sizes:
        out.append(idx[start : start + s])
        start += s
    return out


def symmetric_noise(
    y: np.ndarray, rate: float, classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip a ``rate`` fraction of labels to a uniformly chosen *different* class.

    Returns the noisy labels and the boolean mask of flipped samples.
    """
    rng = np.random.default_rng(seed)
    flip = rng.random(len(y)) < rate
    noisy = y.copy()
    noisy[flip] = (y[flip] + rng.integers(1, classes, int(flip.sum()))) % classes
    return noisy, flip


def long_tail(y: np.ndarray, ratio: float, classes: int, seed: int) -> np.ndarray:
    """Indices of a subsample whose class sizes decay exponentially from the largest
    to ``1/ratio`` of it (the long-tailed setting of Cui et al. 2019)."""
    rng = np.random.default_rng(seed)
    per_class = min(int((y == c).sum()) for c in range(classes))
    keep = []
    for c in range(classes):
        n_c = max(1, int(per_class * ratio ** (-c / (classes - 1))))
        members = np.flatnonzero(y == c)
        keep.append(rng.choice(members, n_c, replace=False))
    return np.concatenate(keep)


def downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Square images stored as rows of ``side**2`` pixels, averaged over ``factor``-pixel blocks."""
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1] or side % factor:
        raise ValueError(f"cannot pool {x.shape[1]}-pixel images by {factor}")
    s = side // factor
    return x.reshape(-1, s, factor, s, factor).mean(axis=(2, 4)).reshape(-1, s * s)


def rotated_classes(
    x: np.ndarray, y: np.ndarray, bases: tuple[int, ...], per_class: int, seed: int
) -> np.ndarray:
    """Classes made of base classes and their rotations by 90, 180 and 270 degrees.

    Rotating by a multiple of 90 degrees makes a new class, as for Omniglot in Vinyals et al.
    2016. Returns ``(4 len(bases), per_class, pixels)``: class ``4 i + r`` is ``bases[i]``
    turned ``r`` quarter turns; the four rotations of a base share its ``per_class`` images
    (drawn at ``seed``).
    """
    rng = np.random.default_rng(seed)
    side = math.isqrt(x.shape[1])
    out: list[np.ndarray] = []
    for b in bases:
        members = np.flatnonzero(y == b)
        if len(members) < per_class:
            raise ValueError(f"class {b} has {len(members)} images, fewer than {per_class}")
        square = x[rng.choice(members, per_class, replace=False)].reshape(-1, side, side)
        out.extend(np.rot90(square, r, axes=(1, 2)).reshape(per_class, -1) for r in range(4))
    return np.stack(out)


def as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
    """``float32`` features and ``int64`` labels."""
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)


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
