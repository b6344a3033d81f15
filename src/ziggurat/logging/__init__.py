"""Metric loggers (console, TensorBoard, Weights & Biases, MLflow) and the progress bar."""

from ._backends import MetricLogger as MetricLogger
from ._backends import make_logger as make_logger
from ._progress import Progress as Progress
