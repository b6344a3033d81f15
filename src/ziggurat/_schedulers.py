"""How learning-rate schedulers are stepped.

Every ``torch.optim.lr_scheduler`` scheduler steps once per optimizer update, except
``ReduceLROnPlateau``, which needs a metric: it steps after each validation with the value the
engine selects from the validation dict (``EngineConfig.plateau_metric``, by default
``early_stopping_metric``). The user's scheduler and optimizer are used as given, never rebuilt.
"""

from __future__ import annotations

from typing import Any

from torch.optim.lr_scheduler import ReduceLROnPlateau


def steps_per_update(scheduler: Any) -> bool:
    """Whether ``scheduler.step()`` runs after every optimizer update (not metric-driven)."""
    return not isinstance(scheduler, ReduceLROnPlateau)


def steps_on_metric(scheduler: Any) -> bool:
    """Whether ``scheduler.step(metric)`` runs after every validation."""
    return isinstance(scheduler, ReduceLROnPlateau)
