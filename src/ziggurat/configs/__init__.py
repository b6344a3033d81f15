"""Options: :class:`Config` per problem, :class:`EngineConfig` for the run."""

from ._engine_config import EngineConfig as EngineConfig
from ._first_order import first_order_choices as first_order_choices
from ._problem_config import METHOD_OPTIONS as METHOD_OPTIONS
from ._problem_config import Config as Config
