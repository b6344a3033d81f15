"""Problems: one per level of a multilevel program."""

from ._higher import HigherIterativeProblem as HigherIterativeProblem
from ._implicit import ImplicitProblem as ImplicitProblem
from ._iterative import IterativeProblem as IterativeProblem
from ._iterative import Trajectory as Trajectory
from ._problem import Problem as Problem
