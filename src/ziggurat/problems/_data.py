"""Cycling data loaders (``to_device`` moves nested batches, see ``ziggurat._tree``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from .._tree import to_device as to_device

_END = object()


def _length(loader: Iterable[Any]) -> int | None:
    """Batches per epoch, or ``None`` for a loader without ``len`` (an iterable dataset)."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


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
        self._epoch_rng: dict[str, Any] | None = None  # RNG states when this epoch's iter began

    def next(self) -> tuple[Any, bool]:
        """The next batch, and whether a new epoch began to serve it (after the first)."""
        wrapped = False
        if self._it is None:  # the first epoch, or the restored one after a resume
            self._set_epoch()
            self._it = self._start_epoch()
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
            self._it = self._start_epoch()
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

    # ------------------------------------------------------------------ resumable position
    def _generators(self) -> list[torch.Generator]:
        found: list[torch.Generator] = []
        for obj in (self.loader, getattr(self.loader, "sampler", None)):
            gen = getattr(obj, "generator", None)
            if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
                found.append(gen)
        return found

    def _start_epoch(self) -> Iterator[Any]:
        # a shuffling DataLoader draws its permutation from these states on the first next()
        self._epoch_rng = {
            "torch": torch.get_rng_state(),
            "generators": [g.get_state() for g in self._generators()],
        }
        return iter(self.loader)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, position and the RNG states the current epoch's order was drawn from."""
        return {"epoch": self.epoch, "position": self.position, "rng": self._epoch_rng}

    def check_state(self, state: dict[str, Any], where: str) -> None:
        """``ValueError`` unless :meth:`load_state_dict` can restore ``state``: the loader
        still has ``position`` batches per epoch (where it has a ``len``) and draws from as
        many generators. Without ``len``, a loader that got shorter is found while loading."""
        position, length = int(state["position"]), _length(self.loader)
        if length is not None and position > length:
            raise ValueError(
                f"{where}: saved after batch {position} of epoch {state['epoch']}, but the "
                f"loader now has {length} batch(es) per epoch; resume with the data (dataset "
                "size, batch_size, drop_last) the checkpoint was saved with"
            )
        rng = state["rng"]
        if rng is not None and len(rng["generators"]) != len(self._generators()):
            raise ValueError(
                f"{where}: the loader drew its order from {len(rng['generators'])} "
                f"torch.Generator(s) when saved and from {len(self._generators())} now; give "
                "the DataLoader (or its sampler) the generator it was saved with"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` left off: replay the epoch's RNG, skip ``position`` batches.

        Changes the global torch RNG state; the caller restores it afterwards. Raises
        ``ValueError`` when the loader ends before ``position`` (it got shorter), leaving the
        loader at the start of the saved epoch (see :meth:`Loaders.load`, which puts it back).
        """
        self.epoch, self.position, self._it = int(state["epoch"]), 0, None
        rng = state["rng"]
        if rng is None:
            return
        self._set_epoch()
        torch.set_rng_state(rng["torch"])
        for gen, saved in zip(self._generators(), rng["generators"], strict=True):
            gen.set_state(saved)
        self._it = self._start_epoch()
        position = int(state["position"])
        for served in range(position):
            if next(self._it, _END) is _END:
                self._it = None
                raise ValueError(
                    f"problem {self.owner!r}: the checkpoint's data loader was saved after "
                    f"batch {position} of epoch {self.epoch}, but the loader now ends after "
                    f"{served} batch(es); resume with the data (dataset size, batch_size, "
                    "drop_last) the checkpoint was saved with"
                )
        self.position = position


class Loaders:
    """A level's data: one cycling loader, or several read in step (a tuple of batches)."""

    def __init__(self, loaders: Any, owner: str) -> None:
        self.owner = owner
        self.many = isinstance(loaders, tuple)
        given = () if loaders is None else loaders if self.many else (loaders,)
        self.loaders = [CyclingLoader(ld, owner) for ld in given]

    def __len__(self) -> int:
        return len(self.loaders)

    def __getitem__(self, index: int) -> CyclingLoader:
        return self.loaders[index]

    def replace(self, index: int, loader: Iterable[Any]) -> None:
        """Read loader ``index`` from ``loader`` from now on, from its first batch."""
        self.loaders[index] = CyclingLoader(loader, self.owner)

    def next(self) -> tuple[Any, bool]:
        """The next batch (a tuple with several loaders), and whether the first loader began
        a new epoch to serve it."""
        if not self.loaders:
            raise ValueError(
                f"problem {self.owner!r} has no data: pass train_data_loader=, define "
                "configure_train_data_loader(), or override get_batch()"
            )
        served = [loader.next() for loader in self.loaders]
        batches = [batch for batch, _ in served]
        return (tuple(batches) if self.many else batches[0]), served[0][1]

    def state(self) -> list[dict[str, Any]]:
        return [ld.state_dict() for ld in self.loaders]

    def check(self, states: Sequence[dict[str, Any]], where: str) -> None:
        """``ValueError`` unless :meth:`load` can restore ``states`` (see
        :meth:`CyclingLoader.check_state`)."""
        if len(states) != len(self.loaders):
            raise ValueError(
                f"{where}: saved with {len(states)} data loader(s), this level has "
                f"{len(self.loaders)}; give it the loaders the checkpoint was saved with"
            )
        for i, (loader, state) in enumerate(zip(self.loaders, states, strict=True)):
            loader.check_state(state, f"{where}, data loader {i}")

    def load(self, states: Sequence[dict[str, Any]]) -> None:
        """Continue every loader where ``states`` left it, or none: a loader that ends before
        its saved position (checked only while loading when it has no ``len``) raises
        ``ValueError`` with every loader back where it was. Changes the global RNG state."""
        before = self.state()
        for i, (loader, state) in enumerate(zip(self.loaders, states, strict=True)):
            try:
                loader.load_state_dict(state)
            except ValueError:
                for undo, saved in zip(self.loaders[: i + 1], before, strict=False):
                    undo.load_state_dict(saved)
                raise
