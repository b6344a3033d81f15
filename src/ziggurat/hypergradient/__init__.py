"""Hypergradient methods: best-response vector-Jacobian products and their fold along paths."""

from ._base import HopContext as HopContext
from ._base import HopInfo as HopInfo
from ._base import HopResult as HopResult
from ._base import Method as Method
from ._base import best_response_vjp as best_response_vjp
from ._first_order import FirstOrder as FirstOrder
from ._implicit import DoubleBackward as DoubleBackward
from ._implicit import ForwardOverReverse as ForwardOverReverse
from ._implicit import Implicit as Implicit
from ._implicit import MixedAutograd as MixedAutograd
from ._implicit import MixedFiniteDifference as MixedFiniteDifference
from ._path import Hop as Hop
from ._path import fold as fold
from ._presets import PRESETS as PRESETS
from ._presets import cg as cg
from ._presets import darts as darts
from ._presets import exact as exact
from ._presets import first_order as first_order
from ._presets import from_name as from_name
from ._presets import neumann as neumann
from ._presets import sama as sama
from ._presets import unrolled as unrolled
from ._sama import Sama as Sama
from ._sama import adam_preconditioner as adam_preconditioner
from ._unrolled import Unrolled as Unrolled
from ._unrolled import unroll as unroll
