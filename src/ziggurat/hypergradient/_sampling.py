"""Mini-batch samplers for stochastic hypergradients."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import _checks


@dataclass
class RandomBatches:
    """Draw mini-batches of ``batch_size`` rows, without replacement inside a batch.

    Calling the sampler returns a tuple with the same rows of every tensor. Batches are
    independent of each other (sampling with replacement across batches), which is the
    setting of Grazzi et al. (AISTATS 2021). The generator is the sampler's own state, so a
    fixed ``seed`` gives a reproducible stream of batches.
    """

    tensors: tuple[Tensor, ...]
    batch_size: int
    seed: int | None = None
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.tensors:
            raise ValueError("random_batches needs at least one tensor")
        n = self.tensors[0].shape[0]
        for t in self.tensors[1:]:
            if t.shape[0] != n:
                raise ValueError(
                    f"random_batches tensors must have the same number of rows, got "
                    f"{[int(x.shape[0]) for x in self.tensors]}"
                )
        _checks.int_at_least("random_batches batch_size", self.batch_size, 1)
        if self.batch_size > n:
            raise ValueError(
                f"random_batches batch_size must be <= the {n} rows, got {self.batch_size}"
            )
        self.generator = torch.Generator()
        if self.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.seed)

    def __call__(self) -> tuple[Tensor, ...]:
        n = self.tensors[0].shape[0]
        idx = torch.randperm(n, generator=self.generator)[: self.batch_size]
        return tuple(t[idx.to(t.device)] for t in self.tensors)


def random_batches(*tensors: Tensor, batch_size: int, seed: int | None = None) -> RandomBatches:
    """A sampler of random mini-batches over the rows of ``tensors``."""
    return RandomBatches(tensors, batch_size, seed)
