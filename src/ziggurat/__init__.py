"""ziggurat: multilevel optimization and meta-learning for PyTorch, with verified hypergradients."""

from . import hpo as hpo
from . import hypergradient as hypergradient
from . import linalg as linalg
from . import optim as optim
from ._extras import MissingExtraError as MissingExtraError
from ._extras import require_extra as require_extra
from ._products import hvp as hvp
from ._products import hvp_fd as hvp_fd
from ._products import hvp_forward as hvp_forward
from ._products import mixed_vjp as mixed_vjp
from ._products import mixed_vjp_fd as mixed_vjp_fd
from ._second_order import DoubleBackwardError as DoubleBackwardError
from ._second_order import twice_differentiable as twice_differentiable
from ._types import InnerLoss as InnerLoss
from ._types import MatVec as MatVec
from ._types import Params as Params
from ._verification import EstimatorReport as EstimatorReport
from ._verification import VerifyReport as VerifyReport
from ._verification import verify as verify
from ._verification import verify_estimator as verify_estimator
from .configs import Config as Config
from .configs import EngineConfig as EngineConfig
from .engine import Engine as Engine

__version__ = "0.1.0"
