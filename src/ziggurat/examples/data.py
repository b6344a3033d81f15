"""The examples' data preparation: splits, label noise, long tails, pooling, rotated classes.

The readers and the loader they use live in :mod:`ziggurat.datasets`; they are re-exported here
so that code written against this module keeps working.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ziggurat.datasets import FASHION_MNIST_DIRS as FASHION_MNIST_DIRS
from ziggurat.datasets import Batches as Batches
from ziggurat.datasets import Images as Images
from ziggurat.datasets import digits as digits
from ziggurat.datasets import fashion_mnist_dir as fashion_mnist_dir
from ziggurat.datasets import load_images as load_images
from ziggurat.datasets import read_idx as read_idx


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
