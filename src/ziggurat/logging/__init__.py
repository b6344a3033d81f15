"""Metric loggers (console, TensorBoard, Weights & Biases, MLflow) and the progress bar.

Betty's names are here too: ``get_logger``, ``logger``, ``LoggerBase``, ``TensorBoardLogger``,
``WandBLogger`` (see ``_betty``).
"""

from ._backends import MetricLogger as MetricLogger
from ._backends import make_logger as make_logger
from ._betty import BoundLogger as BoundLogger
from ._betty import LoggerBase as LoggerBase
from ._betty import MlflowLogger as MlflowLogger
from ._betty import TensorBoardLogger as TensorBoardLogger
from ._betty import WandBLogger as WandBLogger
from ._betty import flatten_stats as flatten_stats
from ._betty import get_logger as get_logger
from ._betty import logger as logger
from ._progress import Progress as Progress
