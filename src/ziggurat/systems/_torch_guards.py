"""Guards against two ways ``torch.distributed`` aborts a process at exit (torch 2.13).

Some torch modules take the default process group as a default argument, evaluated when the
module is imported. Imported after ``init_process_group``, such a default keeps the group alive
past ``destroy_process_group``, and at interpreter exit its gloo threads are cancelled and abort
the process (SIGABRT). Two imports do this: ``sharded_tensor``, which the first ``torch.optim``
optimizer imports (through ``torch._dynamo``) in every program, and ``torch.distributed.optim``,
which holds ZeRO (``strategy="zero"``).

* ``sharded_tensor`` is imported when ``ziggurat`` is, before a program can create a group
  (0.01 s).
* ``torch.distributed.optim`` costs about 0.8 s (it imports FSDP), so it is imported only for
  ``strategy="zero"``, by :func:`prepare_torch_distributed`, before the engine creates its
  group. A program that initialises its own group and then uses ``strategy="zero"`` calls
  :func:`prepare_torch_distributed` before ``init_process_group``.

And an ``atexit`` hook collects reference cycles before interpreter finalization (see
:func:`_collect_garbage_before_exit`).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import warnings

import torch.distributed as dist

_AT_IMPORT = ("torch.distributed._shard.sharded_tensor",)
_FOR_ZERO = ("torch.distributed.optim.zero_redundancy_optimizer",)


def _import_before_any_group(names: tuple[str, ...]) -> None:
    """Import ``names`` now, while no group exists (nothing to guard once one does).

    Their deprecation warnings (TorchScript in ``torch.distributed.optim``) are torch's own and
    are not shown.
    """
    if not dist.is_available() or dist.is_initialized():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in names:
            # a torch without one of these private modules has nothing to guard against
            with contextlib.suppress(ImportError):
                importlib.import_module(name)


def prepare_torch_distributed(strategy: str = "zero") -> None:
    """Import what ``strategy`` needs from ``torch.distributed`` before a process group exists.

    The engine calls it before it creates its group. Call it yourself before
    ``init_process_group`` when your program creates the group and uses ``strategy="zero"``;
    afterwards it is too late (the import would keep your group alive past
    ``destroy_process_group``). Other strategies need nothing.
    """
    if strategy == "zero":
        _import_before_any_group(_FOR_ZERO)


def _collect_garbage_before_exit() -> None:
    """Free reference cycles before interpreter finalization starts.

    An engine that went out of scope, with the ZeRO optimizers and FSDP2 device meshes that
    hold the process group, may live in a reference cycle until a garbage collection; if that
    happens during finalization, the group's gloo threads are stopped while the interpreter
    refuses them the GIL, which aborts the process.
    """
    gc.collect()


_import_before_any_group(_AT_IMPORT)
atexit.register(_collect_garbage_before_exit)
