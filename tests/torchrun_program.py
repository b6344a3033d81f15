"""A two-level data-parallel program for ``torchrun``: the Engine initialises the process group.

    python -m torch.distributed.run --nproc_per_node=2 ... torchrun_program.py OUT_DIR

Each rank reads its rank and world size from the environment ``torchrun`` sets, trains the
``darts`` program of ``_distributed_programs`` on its shards with ``strategy="ddp"`` (the group
comes from ``init_method="env://"`` inside the Engine) and saves its parameters to
``OUT_DIR/rank{RANK}.pt``.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from _distributed_programs import build, parameters


def main(out: str) -> None:
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    assert not dist.is_initialized()
    engine = build("darts", rank, world, "ddp")
    try:
        assert dist.is_initialized() and dist.get_world_size() == world
        engine.run()
        torch.save(parameters(engine), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
