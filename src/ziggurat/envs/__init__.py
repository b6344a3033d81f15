"""``Env``: an environment (task sampler, simulator) shared by the problems of a program.

Betty programs subclass ``Env``, give it to ``Engine(env=...)``, reach it as ``self.env`` inside
problems, and drive it from an overridden ``Engine.train_step`` (e.g. sampling a new task every
few steps for meta-learning). The engine calls :meth:`Env.configure_device` and then
:meth:`Env.initialize` once, and the environment reaches problems by name (``self.inner``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..problems import Runtime, resolve


class Env:
    """Base class for environments; every hook is a documented no-op."""

    def __init__(self) -> None:
        self.engine: Runtime | None = None
        self.device: torch.device | None = None

    def configure_device(self, device: torch.device) -> None:
        """Called by the engine with the device the problems run on."""
        self.device = device

    def initialize(self) -> None:
        """Called once, after the problems are initialised. No-op."""

    def step(self, *args: Any, **kwargs: Any) -> Any:
        """Advance the environment; override it. Default: nothing."""
        return None

    def __getattr__(self, item: str) -> Any:
        return resolve(self.__dict__.get("engine"), item, type(self).__name__)
