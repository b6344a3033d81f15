"""Per-problem options (Betty's ``Config``), validated where they enter."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .. import _checks
from ..hypergradient import CONFIG_TYPES, PRODUCT_RULES, PRODUCT_TYPES, Method, from_name
from ._fields import assign, check_flags

METHOD_TYPES = CONFIG_TYPES
"""The names ``Config(type=...)`` accepts (defined once, with the presets)."""

METHOD_OPTIONS: dict[str, dict[str, str]] = {
    "darts": {"radius": "darts_alpha"},
    "sama": {"radius": "sama_adam_alpha"},
    "neumann": {"iterations": "neumann_iterations", "alpha": "neumann_alpha"},
    "cg": {"maxiter": "cg_iterations", "tol": "cg_tol", "warm_start": "cg_warm_start"},
    "exact": {},
    "first_order": {},
    "penalty": {
        "steps": "penalty_steps",
        "step": "penalty_step",
        "epsilon": "penalty_epsilon",
        "momentum": "penalty_momentum",
        "warm_start": "penalty_warm_start",
    },
    "auto": {
        "target": "target_error",
        "interval": "auto_interval",
        "drift": "auto_drift",
        "memory_budget_mb": "auto_memory_mb",
    },
}
"""For each ``type``, the preset's keyword options and the ``Config`` fields that set them.
``Config(curvature=...)`` adds the ``curvature=`` and ``mixed=`` options of the types in
``PRODUCT_TYPES``, from ``PRODUCT_RULES``."""

CURVATURES = tuple(PRODUCT_RULES)
"""The names ``Config(curvature=...)`` accepts (defined once, with the presets)."""

PRECISIONS = ("fp32", "bf16", "fp16")

# keywords from older releases and tutorials, mapped to the current fields
_LEGACY: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "fp16": ("precision", lambda v: "fp16" if v else "fp32"),
    "steps": ("unroll_steps", lambda v: v),  # checked as unroll_steps
}


@dataclass
class Config:
    """Options of one problem (level).

    ``type`` (or an explicit ``hypergradient`` method object, which takes precedence) selects
    the method used when *this* problem is the lower level of a hop, as in Betty. The
    method-specific fields (``darts_alpha``, ``neumann_*``, ``cg_*``, ``sama_*``) configure it;
    passing one that the chosen method does not read (``Config(cg_iterations=50)`` without
    ``type="cg"`` runs DARTS) is a ``UserWarning`` naming the options and the types that read
    them (a warning, not an error: Betty programs may set options of several methods).

    ``hypergradient_batches=B`` (a ziggurat option; default 1) averages the lower loss of those
    hops over more data: the batches of the last accumulation window (the last batch, without
    accumulation) and ``B - 1`` fresh batches drawn from this problem's loader (``get_batch``),
    for the solve and the mixed product alike (the stochastic hypergradient of Grazzi et al.,
    AISTATS 2021). The fresh batches advance the loader, so training continues after them and
    checkpoints resume bit-exactly; ``B = 1`` is the behaviour without the option.

    ``checkpoint_segments`` (``None``, ``"sqrt"`` or an int ``S``; a ziggurat option for
    ``IterativeProblem``) unrolls each inner loop in ``S`` checkpointed segments, ``sqrt`` of
    ``unroll_steps`` for ``"sqrt"``: memory ``O(S)`` states plus one segment's graph instead of
    the whole loop's, for one more gradient evaluation per step; same result.

    Differences from Betty, on purpose (the full list is in the README):

    * ``cg_alpha`` is accepted for Betty compatibility (checked > 0) and not used: conjugate
      gradient is invariant to scaling the system ``alpha H x = alpha b``, so the answer is the
      same for every value. (Betty 0.2.1 rescaled only part of its CG recurrence, which is
      wrong unless ``cg_alpha=1``.)
    * ``retain_graph`` and ``first_order`` are accepted for compatibility; ziggurat never needs
      ``retain_graph`` and chooses implicit or unrolled differentiation from the problem types.
    * ``allow_unused`` is accepted; unused parameters always receive a zero hypergradient.
    * ``darts_multitask`` / ``sama_multitask`` must stay False, and ``type="reinforce"`` is
      refused (see :func:`_check_betty_only`).

    ziggurat options for levels where double backward does not run: an FSDP2-sharded level
    (``EngineConfig(strategy="fsdp")``) and a loss with an operation that cannot be
    differentiated twice (a custom ``@once_differentiable`` function; the methods that need
    double backward refuse such a loss with a ``ValueError`` naming it). Fused
    ``scaled_dot_product_attention`` is not one of them: double-backward products evaluate it
    with its math kernel.

    * ``curvature="finite_difference"`` is the one switch for "only ordinary backward passes":
      ``neumann``, ``cg`` and ``exact`` then take both their Hessian-vector products and their
      mixed product by central differences of gradients (``FiniteDifference`` and
      ``MixedFiniteDifference``; step from the dtype and the norms), so the method is
      ``first_order_only``. The default ``"autograd"`` uses double backward. ``darts``,
      ``sama``, ``first_order`` and ``penalty`` are first-order already and ignore it.
    * ``type="penalty"`` is the fully first-order penalty method (F2SA, Kwon et al. 2023; BOME,
      Liu et al. 2022), which converges to the exact hypergradient as ``penalty_steps`` grows:
      ``penalty_steps`` gradient steps of size ``penalty_step`` (with ``penalty_momentum``) on
      the lower loss tilted by ``penalty_epsilon`` (``None``: from the dtype and the norms).
      ``penalty_step`` must be below ``2 / lambda_max`` of the lower loss's Hessian; the lower
      level's SGD learning rate is a safe value (the default 1.0 follows ``neumann_alpha``).

    ``type="auto"`` (a ziggurat option) chooses the method of each hop through this level by
    measurement, to the relative error ``target_error`` (:class:`ziggurat.hypergradient.Auto`):
    every ``auto_interval`` upper steps, and when the chosen solver's residual grows more than
    ``auto_drift`` times (``None``: never), it measures conjugate gradient at every iteration
    count, DARTS, SAMA and first-order against a conjugate-gradient reference on the current
    batch and picks the cheapest within the target; ``auto_memory_mb`` leaves out methods
    estimated to need more memory. Each decision is logged to every backend.
    """

    type: str = "darts"
    unroll_steps: int = 1
    first_order: bool = True
    retain_graph: bool = False
    allow_unused: bool = True
    gradient_accumulation: int = 1
    gradient_clipping: float = 0.0
    precision: str = "fp32"
    initial_dynamic_scale: float = 4096.0
    scale_factor: float = 2.0
    warmup_steps: int = 0
    log_step: int = -1
    log_local_step: bool = False
    darts_alpha: float = 0.01
    darts_multitask: bool = False
    sama_adam_alpha: float = 1.0
    sama_multitask: bool = False
    neumann_iterations: int = 1
    neumann_alpha: float = 1.0
    cg_iterations: int = 1
    cg_alpha: float = 1.0
    cg_tol: float = 1e-10
    cg_warm_start: bool = False
    curvature: str = "autograd"
    penalty_steps: int = 10
    penalty_step: float = 1.0
    penalty_epsilon: float | None = None
    penalty_momentum: float = 0.0
    penalty_warm_start: bool = False
    target_error: float = 1e-2
    auto_interval: int = 100
    auto_drift: float | None = 10.0
    auto_memory_mb: float | None = None
    hypergradient: Method | None = None
    hypergradient_batches: int = 1
    checkpoint_segments: int | str | None = None

    def __init__(self, **kwargs: Any) -> None:
        if "fp16" in kwargs:
            _checks.boolean("Config fp16", kwargs["fp16"])
        for old, (new, convert) in _LEGACY.items():
            if old in kwargs:
                kwargs.setdefault(new, convert(kwargs.pop(old)))
        assign(self, kwargs)
        self.validate()
        _warn_unused(self, kwargs)

    def validate(self) -> None:
        check_flags(self)
        _check_betty_only(self)
        _check_first_order_options(self)
        _check_auto_options(self)
        if self.hypergradient is None:
            _checks.one_of("Config type", self.type, METHOD_TYPES)
        elif not isinstance(self.hypergradient, Method):
            raise ValueError(
                "Config hypergradient must be a method object such as "
                "ziggurat.hypergradient.cg() (your own methods subclass "
                f"ziggurat.hypergradient.Method), got {self.hypergradient!r}"
            )
        _checks.int_at_least("Config unroll_steps", self.unroll_steps, 1)
        _checks.int_at_least("Config hypergradient_batches", self.hypergradient_batches, 1)
        segments = self.checkpoint_segments
        counted = isinstance(segments, int) and not isinstance(segments, bool) and segments >= 1
        if segments is not None and segments != "sqrt" and not counted:
            raise ValueError(
                f"Config checkpoint_segments must be None, 'sqrt' or an int >= 1, got {segments!r}"
            )
        _checks.int_at_least("Config gradient_accumulation", self.gradient_accumulation, 1)
        _checks.non_negative("Config gradient_clipping", self.gradient_clipping)
        _checks.one_of("Config precision", self.precision, PRECISIONS)
        _checks.int_at_least("Config warmup_steps", self.warmup_steps, 0)
        _checks.positive("Config darts_alpha", self.darts_alpha)
        _checks.positive("Config sama_adam_alpha", self.sama_adam_alpha)
        _checks.int_at_least("Config neumann_iterations", self.neumann_iterations, 0)
        _checks.positive("Config neumann_alpha", self.neumann_alpha)
        _checks.int_at_least("Config cg_iterations", self.cg_iterations, 1)
        _checks.positive("Config cg_alpha", self.cg_alpha)
        _checks.positive("Config cg_tol", self.cg_tol)
        _checks.positive("Config initial_dynamic_scale", self.initial_dynamic_scale)
        _checks.positive("Config scale_factor", self.scale_factor)
        if isinstance(self.log_step, bool) or not isinstance(self.log_step, int):
            raise ValueError(f"Config log_step must be an integer, got {self.log_step!r}")

    def method(self) -> Method:
        """The hypergradient method this problem uses as the lower level of a hop."""
        if self.hypergradient is not None:
            return self.hypergradient
        options = {key: getattr(self, field) for key, field in METHOD_OPTIONS[self.type].items()}
        if self.type in PRODUCT_TYPES:
            options.update(PRODUCT_RULES[self.curvature])
        if self.type == "auto":  # candidates that take products then take them from gradients
            options["first_order"] = self.curvature == "finite_difference"
        return from_name(self.type, **options)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the method object as its repr), for logs and checkpoints."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["hypergradient"] = None if self.hypergradient is None else repr(self.hypergradient)
        return out


def _readers() -> dict[str, tuple[str, ...]]:
    """Each method-specific field, and the ``type`` values whose method reads it."""
    out: dict[str, list[str]] = {}
    for kind, options in METHOD_OPTIONS.items():
        for field in options.values():
            out.setdefault(field, []).append(kind)
    return {field: tuple(kinds) for field, kinds in out.items()}


READERS = _readers()
"""Method-specific ``Config`` fields and the ``type`` values that read them. Not listed:
``cg_alpha`` (Betty's, never read, as documented on :class:`Config`) and ``curvature``, a
constraint ("ordinary backward passes only") that the first-order types meet already."""


def _warn_unused(config: Config, given: Iterable[str]) -> None:
    """A ``UserWarning`` for method options passed explicitly that the chosen method never
    reads (``Config(cg_iterations=50)`` runs DARTS). Betty programs may set options of other
    methods, so this warns instead of refusing."""
    explicit = config.hypergradient is not None
    unused = sorted(
        f for f in given if f in READERS and (explicit or config.type not in READERS[f])
    )
    if not unused:
        return
    if explicit:  # it takes precedence over type=, as documented
        warnings.warn(
            f"Config options {unused} have no effect: the explicit hypergradient="
            f"{config.hypergradient!r} is used instead; give these settings to the method "
            "object, or drop them",
            UserWarning,
            stacklevel=3,
        )
        return
    default = "" if "type" in given else " (the default)"
    readers = ", ".join(f"{f} by type=" + " or ".join(repr(k) for k in READERS[f]) for f in unused)
    warnings.warn(
        f"Config options {unused} have no effect: this Config has type={config.type!r}{default}"
        f", and they are read only by other methods ({readers}); set type=... to use them, or "
        "drop them",
        UserWarning,
        stacklevel=3,
    )


def _check_auto_options(config: Config) -> None:
    """``target_error`` and the ``auto_*`` fields."""
    target = config.target_error
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1:
        raise ValueError(
            f"Config target_error must be a relative error in (0, 1) (e.g. 1e-2), got {target!r}"
        )
    _checks.int_at_least("Config auto_interval", config.auto_interval, 1)
    drift = config.auto_drift
    if drift is not None and (
        isinstance(drift, bool) or not isinstance(drift, (int, float)) or not drift > 1
    ):
        raise ValueError(f"Config auto_drift must be None or a number > 1, got {drift!r}")
    if config.auto_memory_mb is not None:
        _checks.positive("Config auto_memory_mb", config.auto_memory_mb)


def _check_first_order_options(config: Config) -> None:
    """``curvature`` and the ``penalty_*`` fields."""
    _checks.one_of("Config curvature", config.curvature, CURVATURES)
    if config.curvature != "autograd" and config.hypergradient is not None:
        raise ValueError(
            f"Config curvature={config.curvature!r} applies to the method built from type=...; "
            "with an explicit hypergradient method, pass the products to it instead, e.g. "
            "cg(curvature=FiniteDifference(), mixed=MixedFiniteDifference())"
        )
    _checks.int_at_least("Config penalty_steps", config.penalty_steps, 1)
    _checks.positive("Config penalty_step", config.penalty_step)
    if config.penalty_epsilon is not None:
        _checks.positive("Config penalty_epsilon", config.penalty_epsilon)
    _checks.non_negative("Config penalty_momentum", config.penalty_momentum)
    if config.penalty_momentum >= 1.0:
        raise ValueError(f"Config penalty_momentum must be < 1, got {config.penalty_momentum!r}")


def _check_betty_only(config: Config) -> None:
    """Refuse Betty options that would otherwise be silently ignored."""
    for flag, radius in (("darts_multitask", "darts_alpha"), ("sama_multitask", "sama_adam_alpha")):
        if getattr(config, flag):
            raise ValueError(
                f"Config {flag}=True is not supported: in Betty it leaves the lower level's "
                f"parameters moved by the finite-difference perturbation (a step of norm "
                f"{radius}) after each upper step, but ziggurat's hypergradient methods never "
                "change parameters. Leave it False; an extra step of the lower level belongs in "
                "the program (e.g. param_callback)"
            )
    if config.type == "reinforce" and config.hypergradient is None:
        raise ValueError(
            "Config type='reinforce' is not a best-response method (in Betty 0.2.1 it was an "
            "empty stub that raised TypeError). For the gradient of an expectation over a "
            "sampling step, call ziggurat.hypergradient.reinforce(n)(log_prob, sample, "
            "reward, lam) where that gradient is needed"
        )
