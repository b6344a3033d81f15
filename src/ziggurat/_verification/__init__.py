"""Measuring hypergradients against exact answers: ``verify``, ``verify_estimator`` and the
tables of ``ziggurat check``.

Private: the public names are re-exported from :mod:`ziggurat`. A package called ``verify``
would shadow the function ``ziggurat.verify``.
"""

from ._cli_check import check_methods as check_methods
from ._cli_check import run_check as run_check
from ._estimator import Estimator as Estimator
from ._estimator import verify_estimator as verify_estimator
from ._reference import reference_tolerance as reference_tolerance
from ._reference import reference_vjp as reference_vjp
from ._report import CostUnits as CostUnits
from ._report import EstimatorReport as EstimatorReport
from ._report import EstimatorRow as EstimatorRow
from ._report import VerifyReport as VerifyReport
from ._report import VerifyRow as VerifyRow
from ._report import find_row as find_row
from ._timing import measure_units as measure_units
from ._verify import default_methods as default_methods
from ._verify import verify as verify
