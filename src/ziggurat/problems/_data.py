"""Cycling data loaders and moving nested batches to a device."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch


def to_device(batch: Any, device: torch.device | str | None) -> Any:
    """Move every tensor inside tuples, lists, dicts and dataclass-free nests to ``device``."""
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class CyclingLoader:
    """Endless iteration over a re-iterable loader; counts epochs and batches served.

    Raises ``ValueError`` naming the problem when the loader yields nothing in an epoch.
    """

    def __init__(self, loader: Iterable[Any], owner: str) -> None:
        if not hasattr(loader, "__iter__"):
            raise TypeError(
                f"problem {owner!r}: train_data_loader must be iterable (e.g. a DataLoader), "
                f"got {type(loader).__name__}"
            )
        self.loader, self.owner = loader, owner
        self.epoch = 0
        self.position = 0  # batches served in the current epoch
        self._it: Iterator[Any] | None = None

    def next(self) -> tuple[Any, bool]:
        """The next batch, and whether a new epoch began to serve it (after the first)."""
        wrapped = False
        if self._it is None:
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            if self.position == 0:
                raise ValueError(
                    f"problem {self.owner!r}: its train_data_loader is empty; give it at least "
                    "one batch (check the dataset size, batch_size and drop_last)"
                ) from None
            self.epoch += 1
            self.position = 0
            wrapped = True
            self._set_epoch()
            self._it = iter(self.loader)
            batch = self._next_after_wrap()
        self.position += 1
        return batch, wrapped

    def _next_after_wrap(self) -> Any:
        assert self._it is not None
        try:
            return next(self._it)
        except StopIteration:
            raise ValueError(
                f"problem {self.owner!r}: its train_data_loader yielded no batch in epoch "
                f"{self.epoch}; loaders must be re-iterable"
            ) from None

    def _set_epoch(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        for obj in (self.loader, sampler):
            set_epoch = getattr(obj, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self.epoch)
                return
