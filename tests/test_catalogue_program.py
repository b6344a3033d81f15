"""Catalogue of bad programs: options, dependency graphs, modules, losses, data and user code.

Each case asserts the exception type and the words of its message that name the problem, the
level and the fix (or the correct result where the input is valid). Cases the hypergradient
health checks cover (non-finite values, diverged solves, structurally-zero paths) live with
those checks.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from ziggurat.configs import Config, EngineConfig
from ziggurat.hypergradient import cg

D = torch.float64
X = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(0))


def quiet(**options):
    return EngineConfig(valid_step=0, logger_type="none", progress=False, **options)


# ------------------------------------------------------------------------------------ options
@pytest.mark.parametrize(
    ("options", "words"),
    [
        (
            {"cg_iterations": 50},
            r"Config options \['cg_iterations'\] have no effect: this Config has type='darts' "
            r"\(the default\).*cg_iterations by type='cg'",
        ),
        (
            {"type": "darts", "neumann_iterations": 3, "cg_tol": 1e-3},
            r"\['cg_tol', 'neumann_iterations'\] have no effect: this Config has "
            r"type='darts', .*cg_tol by type='cg', neumann_iterations by type='neumann'",
        ),
        (
            {"type": "first_order", "darts_alpha": 0.1},
            r"\['darts_alpha'\].*type='first_order'.*darts_alpha by type='darts'",
        ),
        (
            {"type": "neumann", "penalty_steps": 4},
            r"\['penalty_steps'\].*penalty_steps by type='penalty'",
        ),
        (
            {"hypergradient": cg(3), "cg_iterations": 5},
            r"\['cg_iterations'\] have no effect: the explicit hypergradient=.* is used instead",
        ),
    ],
    ids=["cg-without-type", "two-methods", "first-order", "penalty", "explicit-method"],
)
def test_method_options_the_method_never_reads_warn(options, words) -> None:
    with pytest.warns(UserWarning, match=words):
        Config(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"type": "cg", "cg_iterations": 5, "cg_tol": 1e-6, "cg_alpha": 0.5},
        {"type": "neumann", "neumann_iterations": 2, "neumann_alpha": 0.1},
        {"type": "darts", "darts_alpha": 0.1, "curvature": "finite_difference"},
        {"type": "darts", "hypergradient": cg(3)},
        {},
    ],
    ids=["cg", "neumann", "darts-curvature", "explicit-over-type", "defaults"],
)
def test_options_the_method_reads_do_not_warn(options) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Config(**options)
