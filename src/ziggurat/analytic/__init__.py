"""Bilevel and trilevel problems with closed-form answers.

They back the test suite, ``ziggurat check`` and the benchmarks. Every problem is built in
float64 by default. The bilevel ones (:class:`QuadraticBilevel`, :class:`RidgeHPO`,
:class:`LogisticHPO`) follow the :class:`BilevelFixture` protocol: pure losses, a point, and
the exact best-response product; so does :class:`TransformerReweighting`, whose lower level is
a transformer (no closed form: a dense solve, under attention's math kernel).
:class:`QuadraticTrilevel` exposes the closed forms of a
three-level chain, and :class:`BernoulliReward` a closed-form expected gradient, for
score-function estimators.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from .._types import Params
from ._quadratic import QuadraticBilevel as QuadraticBilevel
from ._quadratic import QuadraticTrilevel as QuadraticTrilevel
from ._quadratic import random_spd as random_spd
from ._regression import LogisticHPO as LogisticHPO
from ._regression import RidgeHPO as RidgeHPO
from ._reward import BernoulliReward as BernoulliReward
from ._transformer import TinyTransformer as TinyTransformer
from ._transformer import TransformerReweighting as TransformerReweighting


@runtime_checkable
class BilevelFixture(Protocol):
    """A bilevel problem whose best-response product is known exactly.

    The lower loss ``f(w, lam)`` is :meth:`inner`, the upper loss ``F(w, lam)`` is
    :meth:`outer`. :meth:`point` is ``(w*(lam0), lam0, v)`` with ``v = dF/dw`` there, and
    :meth:`exact_vjp` gives ``v^T dw*/dlam`` at ``lam0``: what every method is measured against.
    """

    def inner(self, w: Params, lam: Params) -> Tensor:
        """The lower loss ``f(w, lam)``, pure in both trees."""
        ...

    def outer(self, w: Params, lam: Params) -> Tensor:
        """The upper loss ``F(w, lam)``."""
        ...

    def point(self) -> tuple[Params, Params, Params]:
        """``(w*(lam0), lam0, v = dF/dw)``."""
        ...

    def exact_vjp(self, v: Params) -> Params:
        """``v^T dw*/dlam`` at ``lam0``, from the closed form."""
        ...
