"""What :meth:`HyperModel.fit` records."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class History:
    """Per-step records of a hyperparameter optimization run.

    ``val_loss`` and ``train_loss`` are measured after each round of inner training: one entry
    per outer step plus one for the final hyperparameters. The other lists have one entry per
    hypergradient step.

    Attributes:
        val_loss: validation loss after inner training.
        train_loss: training loss (with the regulariser) after inner training.
        hyper_norm: Euclidean norm of all hyperparameters before the step.
        hypergrad_norm: norm of the hypergradient used by the step.
        iterations: linear-solver iterations the hypergradient method spent.
        residual: the solver's relative residual (``nan`` when it does not measure one).
    """

    val_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    hyper_norm: list[float] = field(default_factory=list)
    hypergrad_norm: list[float] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    residual: list[float] = field(default_factory=list)

    @property
    def best_val_loss(self) -> float:
        return min(self.val_loss)
