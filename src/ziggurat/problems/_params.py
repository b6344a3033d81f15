"""Where a level's trainable tensors live: in its module, or in FSDP2 shards of it."""

from __future__ import annotations

import torch
from torch import nn

from .._types import Params


class ModuleParameters:
    """The trainable parameters of a module (``requires_grad=True``), or, once the engine
    shards the module with FSDP2, its sharded parameters (DTensors).

    The shards are kept here because, between a forward pass and the end of its backward pass,
    the module's own attributes hold the unsharded (all-gathered) parameters instead.
    """

    def __init__(self) -> None:
        self.shards: Params | None = None
        self._fixed: tuple[nn.Module, Params] | None = None

    def named(self, module: nn.Module) -> Params:
        if self.shards is not None:
            return dict(self.shards)
        if self._fixed is not None and self._fixed[0] is module:
            return self._fixed[1]  # shared: callers read it, never change it
        return {k: p for k, p in module.named_parameters() if p.requires_grad}

    def fix(self, module: nn.Module) -> None:
        """From now on, ``module``'s trainable parameters are those it has now: walking the
        module tree on every read cost more than a small model's training step (the engine
        fixes them once it has checked them against the optimizer)."""
        self._fixed = (module, {k: p for k, p in module.named_parameters() if p.requires_grad})

    def use_shards(self, shards: Params) -> None:
        self.shards = {k: p for k, p in shards.items() if p.requires_grad}

    @property
    def sharded(self) -> bool:
        return self.shards is not None

    def overwrite(self, new: Params) -> Params:
        """Write ``new`` into the sharded tensors in place, without autograd; return the
        values to put back. A pure loss's gradient in ``w`` is connected around this write by
        ``problems._sharded_loss`` (first-order methods only run on sharded levels)."""
        assert self.shards is not None
        live = self.shards
        with torch.no_grad():
            old = {k: live[k].detach().clone() for k in new}
            for k, t in new.items():
                live[k].copy_(t)
        return old
