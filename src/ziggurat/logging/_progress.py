"""A tqdm progress bar over global steps, showing the latest loss of every problem."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._extras import missing


class Progress:
    """``EngineConfig(progress=True)``: step count, rate (tqdm's it/s) and latest losses."""

    def __init__(self, total: int, initial: int) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError as error:
            raise missing("EngineConfig(progress=True)", "tqdm") from error
        self.bar: Any = tqdm(total=total, initial=initial, desc="ziggurat", unit="step")

    def update(self, losses: Mapping[str, float]) -> None:
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
