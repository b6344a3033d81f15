"""Systems: process groups and FSDP2 sharding, below the problems.

Nothing here imports a problem. ``torch.distributed``'s heavy modules (FSDP, DTensor, ZeRO) are
imported inside the functions that need them, so a single-process program never loads them;
:mod:`._torch_guards` runs at import (see its docstring for why it cannot wait).
"""

from . import _torch_guards as _torch_guards
from . import fsdp as fsdp
from ._group import DISTRIBUTED_STRATEGIES as DISTRIBUTED_STRATEGIES
from ._group import DataParallelGroup as DataParallelGroup
from ._group import Group as Group
from ._group import ShardedDataParallel as ShardedDataParallel
from ._group import SingleProcess as SingleProcess
from ._group import make_group as make_group
from ._torch_guards import prepare_torch_distributed as prepare_torch_distributed
