"""Hyperparameter optimization by implicit differentiation, for ``nn.Module`` models."""

from ._history import History as History
from ._model import HyperModel as HyperModel
