"""Problems: one per level of a multilevel program.

The layer declares what it needs from the program that runs it (:class:`Runtime`, implemented
by ``ziggurat.Engine``) and never imports the engine.
"""

from ..hypergradient import Trajectory as Trajectory
from ._higher import HigherIterativeProblem as HigherIterativeProblem
from ._implicit import ImplicitProblem as ImplicitProblem
from ._iterative import IterativeProblem as IterativeProblem
from ._problem import Problem as Problem
from ._runtime import DecisionRecord as DecisionRecord
from ._runtime import HypergradientRecord as HypergradientRecord
from ._runtime import Level as Level
from ._runtime import Runtime as Runtime
from ._runtime import resolve as resolve
from ._user_code import user_code as user_code
