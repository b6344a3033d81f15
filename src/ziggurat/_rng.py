"""Random-number state: capture, restore, replay and fork, in one place.

Four kinds of code touch the global generators: checkpoints (every generator a program may
draw from: torch's CPU and CUDA generators, NumPy's and Python's), checkpointed unrolling
(replaying a step's draws in its backward pass), data loaders (the state an epoch's order was
drawn from) and the HPO front end (one seed shared by several evaluations of a loss).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def capture() -> dict[str, Any]:
    """The state of every global generator, as tensors and plain containers (it loads with
    ``torch.load(..., weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            str(kind),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            pos,
            has_gauss,
            cached,
        ],
        "python": [version, list(internal), gauss_next],
    }


def restore(state: dict[str, Any]) -> None:
    """Put back what :func:`capture` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def torch_states(device: torch.device) -> list[torch.Tensor]:
    """The CPU generator's state, and the device's when it is a CUDA device."""
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


@contextlib.contextmanager
def replayed(states: list[torch.Tensor], device: torch.device) -> Iterator[None]:
    """Run the block under ``states`` (as :func:`torch_states` took them), then restore."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(states[0])
        if devices:
            torch.cuda.set_rng_state(states[1], device)
        yield


def draw_seed() -> int:
    """A seed from the global generator: fresh on each call, reproducible under a fixed seed."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


@contextlib.contextmanager
def same_draws(seed: int | None) -> Iterator[None]:
    """Run the block with the CPU and every initialised CUDA generator seeded with ``seed``,
    restoring their states after, so that each run of the block makes the same random draws
    and the global streams are left as they were. ``None`` runs the block as it is."""
    if seed is None:
        yield
        return
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Run the block, then put every generator back as it was (a check that evaluates a loss
    must not change the draws of the run it checks, whichever generator the loss uses)."""
    saved = capture()
    try:
        yield
    finally:
        restore(saved)
