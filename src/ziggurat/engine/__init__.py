"""The engine that runs multilevel programs."""

from ._engine import Engine as Engine
