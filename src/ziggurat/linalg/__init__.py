"""Linear solvers with one signature: ``solver(matvec, b, x0=None) -> SolveResult``."""

from ._cg import ConjugateGradient as ConjugateGradient
from ._cg import conjugate_gradient as conjugate_gradient
from ._damping import damped as damped
from ._dense import Dense as Dense
from ._dense import dense as dense
from ._dense import materialize as materialize
from ._fixed_point import FixedPoint as FixedPoint
from ._fixed_point import fixed_point as fixed_point
from ._fixed_point import heavy_ball_rate as heavy_ball_rate
from ._fixed_point import polyak_parameters as polyak_parameters
from ._identity import Identity as Identity
from ._identity import identity as identity
from ._minres import MinRes as MinRes
from ._minres import minres as minres
from ._neumann import Neumann as Neumann
from ._neumann import neumann as neumann
from ._result import LinearSolver as LinearSolver
from ._result import SolveResult as SolveResult
