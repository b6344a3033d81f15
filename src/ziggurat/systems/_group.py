"""Process groups: how a program runs on one process or on a ``torch.distributed`` group.

Three strategy objects with one interface: :class:`Group` / :class:`SingleProcess` (every
operation is the identity), :class:`DataParallelGroup` (ranks hold identical parameters and
shards of each global batch; gradient trees are averaged once per update) and
:class:`ShardedDataParallel` (FSDP2-sharded lowest levels). Callers use them unconditionally, so
the single-process path has no distributed branches. Nothing here knows about problems.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import _tree
from .._types import Params
from ..hypergradient import Method, data_parallel
from ._torch_guards import prepare_torch_distributed
from .fsdp import is_sharded

DISTRIBUTED_STRATEGIES = ("ddp", "zero", "fsdp")


class Group:
    """One process: nothing to synchronise. The base of every group; each operation here is
    the identity, so callers use a group unconditionally."""

    rank = 0
    world_size = 1
    is_main = True
    strategy = "single"
    validates_on_every_rank = False

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.comm_seconds = 0.0

    def average(self, tree: Params) -> Params:
        return tree

    def average_differentiable(self, tree: Params) -> Params:
        """The mean of ``tree`` over ranks as part of the autograd graph (identity here)."""
        return tree

    def average_grads(self, params: Iterable[Tensor]) -> None:
        """Average ``.grad`` over ranks (no-op)."""

    def sync_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers to every rank (no-op)."""

    def wrap_method(self, method: Method) -> Method:
        return method

    def broadcast_flag(self, flag: bool) -> bool:
        return flag

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (no-op)."""

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable), on every rank."""
        return obj

    def gather_object(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (picklable, on the CPU), in rank order on rank 0; else ``None``."""
        return [obj]

    def sum(self, tree: Params) -> Params:
        """The sum of ``tree`` over ranks."""
        return tree

    def barrier(self) -> None:
        """Wait for every rank (no-op)."""

    def close(self) -> None:
        """Destroy the process group if this object initialised it (no-op)."""


class SingleProcess(Group):
    """The group of a program that runs on one process."""


class DataParallelGroup(Group):
    """Data parallelism over the default process group.

    Initialises the group when it is not yet (``init_method="env://"``, from the variables
    ``torchrun`` sets: :data:`LAUNCH_VARIABLES`), with ``backend`` or, by default, ``nccl`` when
    CUDA is available and ``gloo`` otherwise; ``timeout`` (seconds) bounds the wait for the other
    ranks there and in every collective. The device is ``cuda:LOCAL_RANK`` with CUDA and the CPU
    without. ``comm_seconds`` accumulates the wall time spent in the all-reduces of gradient
    trees (for benchmarks).
    """

    def __init__(self, strategy: str, backend: str | None, timeout: float = 600.0) -> None:
        cuda = torch.cuda.is_available()
        if not dist.is_available():
            raise ValueError(f"strategy={strategy!r} needs torch.distributed, which is unavailable")
        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            init_from_launcher(strategy, backend or ("nccl" if cuda else "gloo"), timeout)
        self.strategy = strategy
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        uses_cuda = dist.get_backend() == "nccl" or (cuda and backend != "gloo")
        if uses_cuda:
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        super().__init__(device)

    def average(self, tree: Params) -> Params:
        """The mean of ``tree`` over ranks, in one flat all-reduce."""
        if not tree:
            return tree
        start = time.perf_counter()
        flat = _tree.flatten(_tree.detach(tree))
        dist.all_reduce(flat)
        flat /= self.world_size
        out = _tree.unflatten(flat, tree)
        self.comm_seconds += time.perf_counter() - start
        return out

    def average_differentiable(self, tree: Params) -> Params:
        """The mean of ``tree`` over ranks, differentiable: the backward pass all-reduces the
        incoming gradient (``torch.distributed.nn.functional.all_reduce``), so a graph that
        averages per-rank gradients (an unrolled inner loop) differentiates exactly. Every rank
        must run the same backward passes, in the same order."""
        if not tree:
            return tree
        from torch.distributed.nn.functional import all_reduce

        start = time.perf_counter()
        out: dict[str, Tensor] = {}
        by_dtype: dict[torch.dtype, list[str]] = {}
        for k, t in tree.items():
            by_dtype.setdefault(t.dtype, []).append(k)
        for keys in by_dtype.values():
            flat = all_reduce(torch.cat([tree[k].reshape(-1) for k in keys])) / self.world_size
            for k, piece in zip(keys, flat.split([tree[k].numel() for k in keys]), strict=True):
                out[k] = piece.view_as(tree[k])
        self.comm_seconds += time.perf_counter() - start
        return {k: out[k] for k in tree}

    def average_grads(self, params: Iterable[Tensor]) -> None:
        with_grad = {str(i): p for i, p in enumerate(params) if p.grad is not None}
        averaged = self.average({k: p.grad for k, p in with_grad.items()})  # type: ignore[misc]
        for k, p in with_grad.items():
            p.grad = averaged[k].clone()

    def sync_buffers(self, module: nn.Module) -> None:
        for b in module.buffers():
            dist.broadcast(b.data, src=0)

    def wrap_method(self, method: Method) -> Method:
        return data_parallel(method, self.average)

    def broadcast_flag(self, flag: bool) -> bool:
        value = torch.tensor([1 if flag else 0], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def broadcast_module(self, module: nn.Module) -> None:
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                if not is_sharded(t):  # a module sharded by the user: each rank has its shard
                    dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj: Any) -> list[Any] | None:
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def sum(self, tree: Params) -> Params:
        if not tree:
            return tree
        flat = _tree.flatten(_tree.detach(tree))
        dist.all_reduce(flat)
        return _tree.unflatten(flat, tree)

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False


class ShardedDataParallel(DataParallelGroup):
    """``strategy="fsdp"``: data parallelism with the lowest levels sharded by FSDP2.

    A sharded level's gradients (and hence the cotangents taken on it) are averaged by FSDP2's
    reduce-scatter already, so :meth:`average` and :meth:`average_grads` pass DTensors through
    and average the replicated rest. Forward passes through a sharded module are collectives,
    so validation runs on every rank (rank 0's values are used).
    """

    validates_on_every_rank = True

    def average(self, tree: Params) -> Params:
        replicated = {k: t for k, t in tree.items() if not is_sharded(t)}
        if len(replicated) == len(tree):
            return super().average(tree)
        averaged = super().average(replicated)
        return {k: averaged.get(k, t) for k, t in tree.items()}

    def average_grads(self, params: Iterable[Tensor]) -> None:
        super().average_grads(p for p in params if not is_sharded(p))


def make_group(
    strategy: str, backend: str | None, device: torch.device, timeout: float = 600.0
) -> Group:
    """The strategy object for ``EngineConfig(strategy=..., backend=...,
    process_group_timeout=...)``."""
    prepare_torch_distributed(strategy)  # before the group below exists
    if strategy == "fsdp":
        return ShardedDataParallel(strategy, backend, timeout)
    if strategy in DISTRIBUTED_STRATEGIES:
        return DataParallelGroup(strategy, backend, timeout)
    return SingleProcess(device)


LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What ``init_method="env://"`` reads; ``torchrun`` sets them for every process it starts."""


def init_from_launcher(strategy: str, backend: str, timeout: float) -> None:
    """``init_process_group`` from the launcher's environment, waiting at most ``timeout``
    seconds for the other ranks.

    Raises:
        ValueError: the launcher's variables are missing (plain ``python``), naming torchrun.
        RuntimeError: the ranks did not meet within ``timeout`` (a rank that never started,
            an unreachable ``MASTER_ADDR:MASTER_PORT``).
    """
    missing = [v for v in LAUNCH_VARIABLES if not os.environ.get(v)]
    if missing:
        raise ValueError(
            f"EngineConfig strategy={strategy!r} runs one process per rank, started by a "
            f"launcher, but the environment lacks {missing}, which the launcher sets. Start "
            "the script with `torchrun --nproc_per_node=N your_script.py` (N processes on this "
            "machine), or initialise the process group yourself (torch.distributed."
            "init_process_group with any init_method) before building the Engine"
        )
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    rank, world = os.environ["RANK"], os.environ["WORLD_SIZE"]
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    except RuntimeError as error:  # DistStoreError, DistNetworkError: a rank did not come
        raise RuntimeError(
            f"EngineConfig strategy={strategy!r}: rank {rank} of {world} could not form the "
            f"process group at {where} within process_group_timeout={timeout:g} s ({error}). "
            "Every rank must be started, e.g. by `torchrun --nproc_per_node=N "
            "your_script.py`, and reach MASTER_ADDR:MASTER_PORT; EngineConfig "
            "process_group_timeout sets how long to wait"
        ) from error
