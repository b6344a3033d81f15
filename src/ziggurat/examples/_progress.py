"""An :class:`~ziggurat.Engine` that shows a progress bar with the current losses."""

from __future__ import annotations

from typing import Any

from ..engine import Engine


class ProgressEngine(Engine):
    """``Engine`` whose ``run`` draws a tqdm bar (iterations, rate, each level's last loss).

    Pass ``progress=False`` for a silent run; tqdm is imported only when a bar is drawn.
    """

    def __init__(self, *args: Any, progress: bool = True, desc: str = "", **kwargs: Any) -> None:
        self._bar: Any = None
        self._progress = progress
        self._desc = desc
        super().__init__(*args, **kwargs)
        self.config.progress = False  # this engine draws its own bar

    def run(self) -> dict[str, float] | None:
        if not self._progress:
            return super().run()
        from tqdm import tqdm

        self._bar = tqdm(total=self.config.train_iters, desc=self._desc, leave=False)
        try:
            return super().run()
        finally:
            self._bar.close()
            self._bar = None

    def train_step(self) -> None:
        super().train_step()
        if self._bar is None:
            return
        self._bar.update(1)
        if self.global_step % 10 == 0 or self.global_step == self.config.train_iters:
            self._bar.set_postfix(
                {p.name: f"{p.last_loss:.3f}" for p in self.problems}, refresh=False
            )


def progress_range(n: int, progress: bool, desc: str) -> Any:
    """``range(n)``, wrapped in a tqdm bar when ``progress``; for the plain baselines."""
    if not progress:
        return range(n)
    from tqdm import trange

    return trange(n, desc=desc, leave=False)
