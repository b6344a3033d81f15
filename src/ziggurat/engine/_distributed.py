"""How the engine runs on one process or on a ``torch.distributed`` group.

Two strategy objects with one interface: :class:`SingleProcess` (every operation is the
identity) and :class:`DataParallelGroup` (ranks hold identical parameters and shards of each
global batch; gradient trees are averaged once per update). The engine calls them
unconditionally, so the single-process path has no distributed branches.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._types import Params
from ..hypergradient import Method, first_order_only
from ..hypergradient._data_parallel import data_parallel
from ..problems import Problem
from ._sharding import is_sharded, repoint_scheduler, shard

DISTRIBUTED_STRATEGIES = ("ddp", "zero", "fsdp")


_MODULES_WITH_GROUP_DEFAULTS = (
    "torch.distributed._shard.sharded_tensor",  # imported by the first torch.optim optimizer
    "torch.distributed.optim.zero_redundancy_optimizer",  # strategy="zero"
)


def _import_before_any_group() -> None:
    """Import the torch modules whose functions take the default process group as a default
    argument, now, while no group exists.

    A default argument is evaluated at import. Imported after ``init_process_group`` (the first
    ``torch.optim`` optimizer imports ``sharded_tensor`` through ``torch._dynamo``; the engine
    imports ZeRO for ``strategy="zero"``), such a default keeps the group alive past
    ``destroy_process_group``, and at interpreter exit its gloo threads are cancelled and abort
    the process (SIGABRT, measured with torch 2.13). The imports cost about 0.7 s, most of
    which the first optimizer would spend anyway; their deprecation warnings (TorchScript in
    ``torch.distributed.optim``) are torch's own and are not shown.
    """
    if not dist.is_available() or dist.is_initialized():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in _MODULES_WITH_GROUP_DEFAULTS:
            # a torch without one of these private modules has nothing to guard against
            with contextlib.suppress(ImportError):
                importlib.import_module(name)


def _collect_garbage_before_exit() -> None:
    """Free reference cycles before interpreter finalization starts.

    Engines and problems refer to each other, so an engine that went out of scope, with the
    ZeRO optimizers and FSDP2 device meshes that hold the process group, lives until a
    garbage collection; if that happens during finalization, the group's gloo threads are
    stopped while the interpreter refuses them the GIL, which aborts the process.
    """
    gc.collect()


_import_before_any_group()
atexit.register(_collect_garbage_before_exit)


class SingleProcess:
    """One process: nothing to synchronise."""

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


class DataParallelGroup(SingleProcess):
    """Data parallelism over the default process group.

    Initialises the group when it is not yet (``init_method="env://"``, as set by ``torchrun``),
    with ``backend`` or, by default, ``nccl`` when CUDA is available and ``gloo`` otherwise. The
    device is ``cuda:LOCAL_RANK`` with CUDA and the CPU without. ``comm_seconds`` accumulates
    the wall time spent in the all-reduces of gradient trees (for benchmarks).
    """

    def __init__(self, strategy: str, backend: str | None) -> None:
        cuda = torch.cuda.is_available()
        if not dist.is_available():
            raise ValueError(f"strategy={strategy!r} needs torch.distributed, which is unavailable")
        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group(backend=backend or ("nccl" if cuda else "gloo"))
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
        flat = _flat(tree)
        dist.all_reduce(flat)
        flat /= self.world_size
        out = _unflat(flat, tree)
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
        flat = _flat(tree)
        dist.all_reduce(flat)
        return _unflat(flat, tree)

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


def _flat(tree: Params) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tree.values()])


def _unflat(flat: Tensor, like: Params) -> Params:
    out, offset = {}, 0
    for k, t in like.items():
        out[k] = flat[offset : offset + t.numel()].view_as(t)
        offset += t.numel()
    return out


def make_group(strategy: str, backend: str | None, device: torch.device) -> SingleProcess:
    """The strategy object for ``EngineConfig(strategy=..., backend=...)``."""
    if strategy == "fsdp":
        return ShardedDataParallel(strategy, backend)
    if strategy in DISTRIBUTED_STRATEGIES:
        return DataParallelGroup(strategy, backend)
    return SingleProcess(device)


def check_strategy(
    strategy: str, problems: Sequence[Problem], leaves: set[str], lowers: set[str]
) -> None:
    """Reject, before any process group exists, programs a distributed strategy cannot run.

    ``leaves`` names the lowest levels (no lower levels), which ``strategy="fsdp"`` shards;
    ``lowers`` names the levels that are the lower level of some hop (they have uppers).
    """
    if strategy not in DISTRIBUTED_STRATEGIES:
        return
    for p in problems:
        if p.params_live_in_module:
            continue
        if strategy == "fsdp":
            raise ValueError(
                f"problem {p.name!r} is an IterativeProblem (unrolled differentiation), which "
                "strategy='fsdp' cannot shard: the upper level's gradient is a second-order "
                "product through its inner loop. Use strategy='ddp' (or 'zero'), which runs it "
                "data-parallel, or make it an ImplicitProblem with a first-order method"
            )
        if p.config.checkpoint_segments is not None:
            raise ValueError(
                f"problem {p.name!r}: Config(checkpoint_segments=...) is not supported under "
                f"strategy={strategy!r} (the replayed segments would repeat the gradient "
                "all-reduces inside the backward pass); leave checkpoint_segments=None"
            )
    if strategy != "fsdp":
        return
    for p in problems:
        if p.name not in leaves or p.name not in lowers:
            continue
        method = p.config.method()
        if not first_order_only(method):
            raise ValueError(
                f"problem {p.name!r} uses the second-order hypergradient method "
                f"{method.name!r}, but strategy='fsdp' shards its parameters with FSDP2 "
                "(fully_shard) and second-order autograd (Hessian-vector and double-backward "
                "mixed products) does not pass through sharded parameters. Use a first-order "
                "method on this level (Config(type='darts'), 'sama' or 'first_order'), or "
                "strategy='ddp'"
            )


def prepare_problems(group: SingleProcess, problems: Sequence[Problem]) -> None:
    """Make every rank start from rank 0's parameters; wrap optimizers for ZeRO; shard the
    lowest levels for FSDP2 (see ``_sharding``)."""
    for p in problems:
        assert p.module is not None
        group.broadcast_module(p.module)
        if group.strategy == "zero" and p.params_live_in_module:
            wrap_zero(p)  # an IterativeProblem steps a functional copy of its optimizer
        if group.strategy == "fsdp" and p.leaf:
            shard(p)


def wrap_zero(problem: Problem) -> None:
    """Replace the problem's optimizer by a ZeRO-1 optimizer of the same class and options.

    Each rank keeps the optimizer state of its share of the parameters only
    (``ZeroRedundancyOptimizer``). Parameter groups and their options are kept; existing
    optimizer state is not (wrap before training). A scheduler is re-pointed at the new
    optimizer, whose ``param_groups`` it then edits as usual.
    """
    opt = problem.optimizer
    assert opt is not None
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(opt, ZeroRedundancyOptimizer):
        return
    groups = [dict(g) for g in opt.param_groups]
    zero = _zero_class()(
        groups[0]["params"], optimizer_class=type(opt), **_group_options(groups[0])
    )
    for g in groups[1:]:
        zero.add_param_group(g)
    repoint_scheduler(problem.scheduler, zero)
    problem.optimizer = zero


def _group_options(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in ("params", "initial_lr")}


def _zero_class() -> Any:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    class ConsolidatingZero(ZeroRedundancyOptimizer):
        """ZeRO whose ``state_dict`` is the consolidated (full) state on rank 0.

        Every rank must call ``state_dict()`` (a collective); rank 0 receives the full state,
        the others an empty dict. ``load_state_dict`` takes the full state on every rank.
        """

        @property
        def local_optimizer(self) -> torch.optim.Optimizer:
            """The optimizer of this rank's shard (its ``state`` holds only that shard)."""
            return self.optim

        def state_dict(self) -> dict[str, Any]:
            self.consolidate_state_dict(to=0)
            if dist.get_rank() != 0:
                return {}
            return super().state_dict()

    return ConsolidatingZero
