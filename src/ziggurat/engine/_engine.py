"""``Engine``: owns the problems, validates their dependencies and runs the program."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._values import as_float
from ..configs import EngineConfig
from ..envs import Env
from ..logging import BoundLogger, LoggerBase
from ..problems import DecisionRecord, HypergradientRecord, Problem, resolve, user_code
from ..systems import Group, make_group
from ..utils import log_from_loss_dict
from . import _checkpoint, _compat, _prepare, _program_checks, _run, _wiring
from ._graph import Graph, parse

log = logging.getLogger("ziggurat")


class Engine:
    """Runs a multilevel program.

    Args:
        problems: every problem (level) of the program.
        config: an :class:`~ziggurat.configs.EngineConfig`.
        dependencies: ``{"u2l": {upper: [lower, ...]}, "l2u": {lower: [upper, ...]}}`` with
            problems or their names; validated before any step (see ``ziggurat.engine._graph``).
        env: an optional environment object, reachable as ``problem.env``.

    Each iteration steps the lowest problems; upper problems step when their lower problems
    finish an inner loop (see :meth:`Problem.step`). ``validation()`` (override it) runs every
    ``valid_step`` iterations and its dict is logged. Problems are attributes by name.

    The engine is the runtime its problems run in: it implements
    :class:`ziggurat.problems.Runtime`, the interface the problem layer declares.
    """

    # every attribute __init__ and initialize set (a problem name must not shadow one)
    config: EngineConfig
    problems: list[Problem]
    env: Any
    global_step: int
    validation_history: list[dict[str, float]]
    stopped_early: bool
    graph: Graph
    distributed: Group
    device: torch.device
    leaves: list[Problem]
    has_unrolled: bool

    def __init__(
        self,
        problems: Sequence[Problem],
        config: EngineConfig | None = None,
        dependencies: Mapping[str, Any] | None = None,
        env: Any = None,
    ) -> None:
        if config is not None and not isinstance(config, EngineConfig):
            raise TypeError(f"config must be an EngineConfig, got {type(config).__name__}")
        if isinstance(problems, Problem):
            raise TypeError(
                f"problems must be a list of Problem instances, got the single problem "
                f"{problems.name!r}; pass problems=[{problems.name}]"
            )
        if not problems:
            raise ValueError(
                "Engine got no problems: pass problems=[...] with every level of the program"
            )
        for p in problems:
            if not isinstance(p, Problem):
                raise TypeError(f"problems must be Problem instances, got {type(p).__name__}")
        self.config = config if config is not None else EngineConfig()
        self.problems = list(problems)
        self.env = env
        self.global_step = 0
        self.validation_history: list[dict[str, float]] = []
        self.stopped_early = False
        self._by_name = {p.name: p for p in self.problems}
        self.graph = parse([p.name for p in self.problems], dependencies)
        _wiring.check_names(self, self.problems)
        self._check_strategy(self.graph)
        cfg = self.config
        self.distributed = make_group(
            cfg.strategy, cfg.backend, self._pick_device(), cfg.process_group_timeout
        )
        self.device = self.distributed.device
        self._run = _run.RunServices(
            self.config,
            self.distributed,
            self.problems,
            lambda: self.global_step,
            self.save,
            self.load,
        )
        self.initialize()

    def _pick_device(self) -> torch.device:
        strategy = self.config.strategy
        if strategy == "gpu" and not torch.cuda.is_available():
            raise ValueError("EngineConfig strategy='gpu' but CUDA is not available; use 'cpu'")
        if strategy in ("gpu", "default") and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")

    def _check_strategy(self, graph: Graph) -> None:
        _prepare.check_strategy(self.config.strategy, self.problems, graph)

    def initialize(self) -> None:
        """Wire parents, children and paths, then initialise every problem."""
        for p in self.problems:
            p.env = self.env
        _compat.check_overrides(self.problems)
        self.leaves = _wiring.wire(self._by_name, self.graph)
        for p in self.problems:
            p.initialize(self)
        _compat.check_problems(self.problems)
        _program_checks.check_disjoint_parameters(self.problems)
        # attributes the problems set while initialising may shadow a name too
        _wiring.check_names(self, self.problems)
        # unrolled levels keep a graph that several backward passes traverse
        self.has_unrolled = any(not p.params_live_in_module for p in self.problems)
        _prepare.prepare_problems(self.distributed, self.problems)
        if isinstance(self.env, Env):
            self.env.engine = self
            self.env.configure_device(self.device)
            with user_code(type(self.env).__name__, "initialize"):
                self.env.initialize()

    def set_dependency(self, dependencies: Mapping[str, Any]) -> None:
        """Replace the dependencies of a constructed (or running) program.

        ``dependencies`` has the form and validation of the constructor's; the set of problems
        stays the same. Parents, children, hypergradient paths and the lowest levels are
        re-derived, every readiness flag is cleared (an upper level waits for a full inner
        loop of each of its new lower levels) and hypergradient warm starts are dropped.
        Parameters, optimizer and scheduler state, step counters and data positions are kept,
        and no ``configure_*`` hook runs again.

        Raises:
            RuntimeError: a problem is inside an inner loop (see
                :attr:`Problem.at_inner_loop_boundary`); call it between iterations, e.g. from
                ``validation()`` or an overridden ``train_step``, when every lower level has
                just signalled its upper levels.
            ValueError: the new dependencies are invalid (nothing is changed).
        """
        _wiring.check_boundary(self.problems)
        graph = parse([p.name for p in self.problems], dependencies)
        self._check_strategy(graph)
        _prepare.check_sharding(self.problems, graph)
        self.graph = graph
        for p in self.problems:
            p.clear_dependencies()
        self.leaves = _wiring.wire(self._by_name, graph)

    @property
    def train_iters(self) -> int:
        """``config.train_iters``: iterations of the lowest levels (read-only view)."""
        return self.config.train_iters

    @property
    def valid_step(self) -> int:
        """``config.valid_step``: the validation period in iterations (read-only view)."""
        return self.config.valid_step

    @property
    def check_finite(self) -> bool:
        """``config.check_finite``: levels check their window before each update."""
        return self.config.check_finite

    @property
    def roll_back(self) -> bool:
        """``config.roll_back``: levels with uppers redo their last step after the uppers step."""
        return self.config.roll_back

    def is_rank_zero(self) -> bool:
        """Whether this process is rank 0 (always, on one process)."""
        return self.distributed.is_main

    def cleanup(self) -> None:
        """Close the metrics backend if values were logged after ``run``, and destroy the
        ``torch.distributed`` process group if this engine created it.

        A group the program initialised itself is left alone, and on one process this does
        nothing. Call it once, after the last ``run``, ``save`` or ``load``.
        """
        self._run.close_logger()
        self.distributed.close()

    def problem_by_name(self, name: str) -> Problem | None:
        """The problem called ``name``, or ``None``."""
        return self.__dict__.get("_by_name", {}).get(name)

    def problem_names(self) -> list[str]:
        """Every problem's name, in the order given."""
        return list(self.__dict__.get("_by_name", {}))

    def __getattr__(self, item: str) -> Any:
        return resolve(self, item, "Engine")

    def run(self) -> dict[str, float] | None:
        """Train for ``train_iters`` iterations; returns the last validation dict, if any.

        Raises:
            ValueError: a level would never step in ``train_iters`` iterations (its lower
                levels would not finish an inner loop: ``unroll_steps`` larger than
                ``train_iters``, say), before any step; to advance a program by fewer
                iterations, call :meth:`train_step` after increasing ``global_step``.
        """
        _run.check_plateau_schedulers(self.config, self.problems)
        _program_checks.check_every_level_steps(self.graph, self.problems, self.config.train_iters)
        validates = type(self).validation is not Engine.validation
        _run.check_early_stopping(self.config, type(self).__name__, validates)
        self.train()
        last = None
        with self._run.session():  # resumes, with the console open to say what it loaded
            while self.global_step < self.config.train_iters and not self.stopped_early:
                self.global_step += 1  # here, not in train_step: overrides need not count
                self.train_step()
                if self._validation_due():
                    last = self.do_validation()
                self._run.after_step()
        return last

    def save(self, path: str) -> None:
        """Write a checkpoint of the whole program to ``path`` atomically.

        Under data parallelism, call it on every rank: each computes the state (consolidating
        ZeRO optimizer state is a collective), rank 0 writes it, and every rank returns once
        the file is complete (or raises if rank 0 could not write it).
        """
        for p in self.problems:  # no NaN of an open window reaches the file
            p.check_health()
        state = self.checkpoint_state()
        error: BaseException | None = None
        if self.distributed.is_main:
            try:
                _checkpoint.write_atomic(state, path)
            except BaseException as caught:  # re-raised once the other ranks know
                error = caught
        failed = self.distributed.broadcast_flag(error is not None)
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(f"rank 0 failed to write the checkpoint {path!r}")

    def load(self, path: str) -> None:
        """Restore a checkpoint written by :meth:`save`; rejected before any change if it is
        damaged or of a different program.

        Under data parallelism, call it on every rank: each reads the file (after a barrier,
        so that a checkpoint being saved is complete) and restores its own RNG and data state.
        """
        self.distributed.barrier()
        state = _checkpoint.read_checkpoint(path)
        _checkpoint.check_compatible(self.problems, state, path)
        run = _checkpoint.load_engine_state(self.problems, self.distributed, state)
        self.global_step = int(run["global_step"])
        self.validation_history = [dict(v) for v in run["validation_history"]]
        self.stopped_early = bool(run["stopped_early"])

    def checkpoint_state(self) -> dict[str, Any]:
        """What :meth:`save` writes: every problem's entry, the run's counters and configs,
        and every generator's state (a collective under data parallelism)."""
        run = {
            "global_step": self.global_step,
            "validation_history": [dict(v) for v in self.validation_history],
            "stopped_early": self.stopped_early,
            "config": self.config.to_dict(),
        }
        return _checkpoint.engine_state(self.problems, self.distributed, run)

    def train_step(self) -> None:
        """One iteration at ``self.global_step``: step every lowest problem (uppers follow when
        their turn comes). ``run`` advances ``global_step`` before each call, as Betty does, so
        an override (e.g. one that steps an environment first) only calls ``super()``."""
        for leaf in self.leaves:
            leaf.step(self.global_step)

    def _validation_due(self) -> bool:
        every = self.config.valid_step
        return every > 0 and self.global_step % every == 0

    def validation(self) -> dict[str, Any] | None:
        """Override to evaluate the program; the returned dict is logged. Default: nothing."""
        return None

    def do_validation(self) -> dict[str, float] | None:
        """Validate on the main rank; every rank learns its early-stopping decision."""
        group = self.distributed
        values = self._validate() if group.is_main or group.validates_on_every_rank else None
        # every rank steps its plateau schedulers on rank 0's values, so learning rates agree
        values = self.distributed.broadcast_object(values)
        if values is not None:
            _run.step_plateau_schedulers(self.config, self.problems, values)
        self.stopped_early = self.distributed.broadcast_flag(self.stopped_early)
        return values

    def _validate(self) -> dict[str, float] | None:
        self.eval()
        try:
            with user_code(type(self).__name__, "validation", self.global_step):
                stats = self.validation()
        finally:
            self.train()
        if stats is None and self.config.early_stopping:
            raise ValueError(
                f"validation() returned None at global step {self.global_step}, but "
                "EngineConfig early_stopping=True needs its metric "
                f"{self.config.early_stopping_metric!r}; return a dict with it"
            )
        if stats is None:
            return None
        if not isinstance(stats, Mapping):
            raise TypeError(f"validation() must return a dict or None, got {type(stats).__name__}")
        values = {k: as_float(v) for k, v in stats.items()}
        self.validation_history.append(values)
        self.log_metrics("validation", values, self.global_step)
        self._check_early_stopping(values)
        return values

    def _check_early_stopping(self, values: dict[str, float]) -> None:
        if not self.config.early_stopping:
            return
        metric = self.config.early_stopping_metric
        if metric not in values:
            raise KeyError(
                f"early stopping metric {metric!r} is not in the validation dict (keys "
                f"{sorted(values)}); return it from validation() or set early_stopping_metric"
            )
        series = [v[metric] for v in self.validation_history]
        sign = 1.0 if self.config.early_stopping_mode == "min" else -1.0
        best_at = min(range(len(series)), key=lambda i: sign * series[i])
        if len(series) - 1 - best_at >= self.config.early_stopping_tolerance:
            self.stopped_early = True
            log.info(
                "early stopping at global step %d (best %s=%g)",
                self.global_step,
                metric,
                series[best_at],
            )

    def train(self) -> None:
        for p in self.problems:
            p.train()

    def eval(self) -> None:
        for p in self.problems:
            p.eval()

    def log_metrics(self, source: str, values: Mapping[str, float], step: int) -> None:
        """A console line through the ``ziggurat`` logger, and the scalars to the backend
        (on rank 0 only under data parallelism)."""
        if not self.distributed.is_main:
            return
        log.info("[%s] [global step %d] %s", source, step, log_from_loss_dict(values))
        self._run.logger().log(source, values, step)

    @property
    def logger(self) -> LoggerBase:
        """Betty's ``engine.logger``: ``info``/``warning``/... console lines, and
        ``log(stats, tag=None, step=None)`` through :meth:`log_metrics` (the console line and
        this run's metrics backend; ``step`` defaults to the global step)."""
        return BoundLogger(self.log_metrics, lambda: self.global_step)

    def log_hypergradient(self, record: HypergradientRecord) -> None:
        """Per upper step: each hop's method, solver iterations, residual; the norm."""
        self._run.log_hypergradient(record)

    def log_decision(self, record: DecisionRecord) -> None:
        """A decision of ``auto``: its table on the console, its numbers and its table as
        text in the metrics backend."""
        self._run.log_decision(record)
