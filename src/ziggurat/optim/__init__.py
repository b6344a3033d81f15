"""Functional, differentiable optimizers for unrolled differentiation."""

from ._adam import Adam as Adam
from ._adam import adam as adam
from ._adam import adamw as adamw
from ._base import FunctionalOptimizer as FunctionalOptimizer
from ._base import OptState as OptState
from ._convert import from_torch as from_torch
from ._sgd import SGD as SGD
from ._sgd import sgd as sgd
from ._step import grad_step as grad_step
from ._step import gradient as gradient
