"""``Problem``: one level of a multilevel program (the Betty-compatible surface).

A problem owns a module, an optimizer, an optional scheduler and its data. Users write
``training_step(batch)``; the engine schedules ``step()``. Gradients are written and optimizers
stepped in exactly one place, :meth:`Problem._apply_gradients`; all hypergradient mathematics is
delegated to the functional core (:func:`ziggurat.hypergradient.fold`). The parts a level is
made of live in their own modules: its clock (``_clock``), where its parameters live
(``_params``), its precision (``_precision``), the checks of its components (``_components``)
and the pieces of its checkpoint entry (``_state``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor, nn

from .. import _health
from .._schedulers import steps_per_update
from .._types import Params
from .._values import as_float
from ..configs import Config
from ..hypergradient import HopContext, HopInfo, Method
from . import _components, _output, _state
from ._betty_graph import not_provided
from ._betty_helpers import BettyHelpers
from ._clock import InnerLoopClock
from ._data import Loaders, to_device
from ._functional import module_substitutions
from ._hooks import Hooks
from ._hops import HopKey, HopMemory
from ._output import Metric, check_finite_gradients
from ._params import ModuleParameters
from ._precision import Precision, widen
from ._reparametrize import substituted_parameters
from ._runtime import Runtime, resolve
from ._total_gradient import total_gradient
from ._user_code import user_code


class Problem(Hooks, BettyHelpers):
    """One level of a multilevel program.

    Args:
        name: unique name; other problems and the engine reach this one as ``self.<name>``.
        config: a :class:`~ziggurat.configs.Config` (default options when omitted).
        module: the level's ``nn.Module``, or from ``configure_module()``.
        optimizer: its ``torch.optim`` optimizer, or from ``configure_optimizer()``. It must
            hold every module parameter with ``requires_grad=True`` (the level's parameters);
            freeze the others.
        scheduler: an optional learning-rate scheduler, or from ``configure_scheduler()``.
        train_data_loader: an iterable of batches, or from ``configure_train_data_loader()``.
            Several loaders may be given as a tuple; the batch is then a tuple of batches.
        extra_config: any object, available as ``self.cfg``.
        device: where the module and batches live; defaults to the engine's device.

    Hooks (:class:`~ziggurat.problems._hooks.Hooks`; all optional, documented no-ops unless
    stated): ``training_step`` (required), ``on_inner_loop_start``, ``grad_callback``,
    ``param_callback``, ``epoch_callback``, ``custom_optimizer_step`` (default:
    ``optimizer.step()``), ``param_groups`` and the ``configure_*`` family.
    ``module`` and ``optimizer`` are ``None`` until the engine initialises the problem when they
    come from those hooks.
    """

    params_live_in_module = True
    module: nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(
        self,
        name: str,
        config: Config | None = None,
        module: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        train_data_loader: Any = None,
        extra_config: Any = None,
        device: torch.device | str | None = None,
    ) -> None:
        _components.check_construction(type(self), name, config)
        self._name = name
        self._config = config if config is not None else Config()
        self.module = module  # type: ignore[assignment]  # resolved by initialize
        self.optimizer = optimizer  # type: ignore[assignment]
        self.scheduler = scheduler
        self.train_data_loader = train_data_loader
        self.cfg = extra_config
        self.device = torch.device(device) if device is not None else None
        self.engine: Runtime | None = None
        self.env: Any = None
        self.cur_batch: Any = None
        self.children: list[Problem] = []
        self.parents: list[Problem] = []
        self.paths: list[list[Problem]] = []
        self.ready: dict[str, bool] = {}
        self.last_hop_info: list[HopInfo] = []
        # (step, hop, decision) of the methods that choose themselves (auto), oldest first
        self.decisions: list[tuple[int, str, Any]] = []
        self._last_loss: Tensor | float = math.nan
        self._last_metrics: dict[str, Metric] = {}
        self._checks: list[_health.Check] = []  # of the open update window
        self._training = True
        self._method: Method | None = None
        self._cache: dict[str, Any] | None = None  # roll-back state
        self._hypergradient_norm: Tensor | float = math.nan
        # the parts a level is made of, each owning its state
        self._clock = InnerLoopClock()
        self._parameters = ModuleParameters()
        self._hops = HopMemory()
        self._loaders = Loaders(None, name)
        self._precision = Precision(
            self._config.precision,
            initial_scale=self._config.initial_dynamic_scale,
            growth_factor=self._config.scale_factor,
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """What ``self.<name>(...)`` computes in other problems: the module's forward."""
        return self.module(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def __getattr__(self, item: str) -> Any:
        # only reached when normal lookup fails: other problems by name
        if item == "env":
            raise AttributeError(item)
        owner = f"problem {self.__dict__.get('_name')!r}"
        engine = self.__dict__.get("engine")
        missing = not_provided(owner, item)
        if missing is not None and (engine is None or engine.problem_by_name(item) is None):
            raise missing
        return resolve(engine, item, owner)

    @property
    def name(self) -> str:
        return self._name

    @property
    def config(self) -> Config:
        return self._config

    @property
    def runtime(self) -> Runtime:
        """The engine running this problem; an error before one holds it."""
        if self.engine is None:
            raise RuntimeError(
                f"problem {self._name!r} is not part of an Engine yet; build "
                "Engine(problems=[...]) before stepping it"
            )
        return self.engine

    @property
    def last_loss(self) -> float:
        """The loss of the last step (NaN before any); kept as a tensor until read."""
        if isinstance(self._last_loss, Tensor):
            self._last_loss = float(self._last_loss)
        return self._last_loss

    @property
    def last_metrics(self) -> dict[str, float]:
        """The other entries ``training_step`` returned at the level's own last step, as
        floats (reading them is a host sync; they stay tensors until read)."""
        return {k: as_float(v) for k, v in self._last_metrics.items()}

    @property
    def last_hypergradient_norm(self) -> float:
        """Norm of the hypergradient of the last step (NaN before any, or without paths).

        Kept as a tensor until read, so a step that nobody logs costs no host sync for it.
        """
        if isinstance(self._hypergradient_norm, Tensor):
            self._hypergradient_norm = float(self._hypergradient_norm)
        return self._hypergradient_norm

    def set_hypergradient_norm(self, norm: Tensor | float) -> None:
        """Record the last step's hypergradient norm (read as :attr:`last_hypergradient_norm`)."""
        self._hypergradient_norm = norm

    def named_trainable_parameters(self) -> Params:
        """This level's trainable tensors, by name (what its optimizer updates)."""
        return self._parameters.named(self.module)

    @property
    def sharded(self) -> bool:
        """Whether the engine sharded this level's module with FSDP2 (``strategy="fsdp"``)."""
        return self._parameters.sharded

    def use_shards(self, shards: Params) -> None:
        """Make ``shards`` (the module's FSDP2-sharded parameters, DTensors) this level's
        trainable tensors (see :class:`~ziggurat.problems._params.ModuleParameters`)."""
        self._parameters.use_shards(shards)

    @property
    def swaps_params(self) -> bool:
        """Whether pure evaluations put values in with :meth:`swap_params` instead of
        substituting them through ``torch.func.functional_call``: true for dict-held
        parameters (``IterativeProblem``) and for FSDP2-sharded modules, whose unsharding hooks
        would override a functional substitution."""
        return not self.params_live_in_module or self.sharded

    def swap_params(self, new: Params) -> Params:
        """Put ``new`` in place of this level's parameters for a pure evaluation; return the
        values to put back (sharded modules: overwritten in place, without autograd; the hops
        connect gradients in ``w`` around the write, see ``problems._sharded_loss``)."""
        if not self.sharded:
            raise NotImplementedError(f"{type(self).__name__} keeps its parameters in its module")
        return self._parameters.overwrite(new)

    def _calling(self, hook: str) -> user_code:
        """A context for calling this level's ``hook``: an exception raised in it gets a note
        naming the level, the hook and the global step (see ``_user_code``)."""
        return user_code(f"problem {self._name!r}", hook, self._clock.global_step)

    def initialize(self, engine: Runtime) -> None:
        """Resolve components, move to the device and validate; called by the engine."""
        if type(self).training_step is Problem.training_step:
            self.training_step(None)  # raises the error that names the problem and the fix
        self.engine = engine
        self.device = self.device or engine.device
        overrides = type(self).custom_optimizer_step is not Problem.custom_optimizer_step
        _components.resolve(self, overrides_step=overrides)
        self._loaders = Loaders(self.train_data_loader, self._name)
        self._parameters.fix(self.module)
        self._precision.place(self.device)
        self._method = self._config.method()

    def get_batch(self) -> Any:
        """The next batch from the loader(s), moved to the device."""
        batch, new_epoch = self._loaders.next()
        if new_epoch:
            with self._calling("epoch_callback"):
                self.epoch_callback()
        return to_device(batch, self.device)

    def autocast(self) -> Any:
        """The autocast context of this problem's precision (a no-op for fp32)."""
        return self._precision.autocast()

    def evaluate(
        self, batch: Any, full_precision: bool = False
    ) -> tuple[Tensor, dict[str, Metric]]:
        """``training_step(batch)``'s scalar loss (widened to fp32) and metrics, under this
        problem's autocast unless ``full_precision``; changes no state of the problem. While it
        runs, each level's :meth:`module_substitution` is in its module's parameter slots."""
        out = self._training_output(batch, full_precision)
        loss, metrics = _output.split_output(out, self._name)
        return widen(loss), metrics

    def _training_output(self, batch: Any, full_precision: bool) -> Any:
        engine = self.engine
        if engine is None:
            pairs = module_substitutions([self])
        else:  # only unrolled levels have iterates to put into their modules
            pairs = module_substitutions(engine.problems) if engine.has_unrolled else []
        with substituted_parameters(pairs) if pairs else contextlib.nullcontext():
            if full_precision:
                with self._calling("training_step"):
                    return self.training_step(batch)
            with self._precision.autocast(), self._calling("training_step"):
                return self.training_step(batch)

    def module_substitution(self) -> tuple[nn.Module, Params] | None:
        """``(module, tensors)`` to put in the module's parameter slots while any level's loss
        is evaluated, or ``None`` (here) when the module holds the level's parameters itself."""
        return None

    def loss_of(self, batch: Any, full_precision: bool = False) -> Tensor:
        """:meth:`evaluate`'s loss alone: what pure losses and replays evaluate."""
        return self.evaluate(batch, full_precision)[0]

    def step(self, global_step: int | None = None) -> None:
        """One local step if every lower problem is ready; may trigger the upper problems.

        The rule: a problem with lower problems steps only once all of them have signalled
        readiness since its last step. After ``unroll_steps * gradient_accumulation`` local
        steps beyond ``warmup_steps``, a problem signals each upper problem (in ``l2u`` order),
        which then steps immediately, depth first.
        """
        if global_step is not None:
            self._clock.global_step = global_step
        if not all(self.ready.values()):
            return
        if self._clock.inner_loop_start:
            with self._calling("on_inner_loop_start"):
                self.on_inner_loop_start()
            self.begin_inner_loop()
            self._clock.inner_loop_start = False
        if self._training:
            self._clock.count += 1
        self.one_step_descent()
        if self._training:
            self._maybe_log()
            if self.last_hop_info:
                self._log_hypergradient()
            self._notify_parents()
        self.ready = dict.fromkeys(self.ready, False)

    @property
    def at_inner_loop_boundary(self) -> bool:
        """Whether no inner loop is open: every local step since the last signal to the upper
        levels has been signalled (warm-up steps count as open), no gradient-accumulation
        window is open and no roll-back cache is held. True before the first step."""
        clock = self._clock
        return clock.inner_loop_start and clock.window_closed and self._cache is None

    def clear_dependencies(self) -> None:
        """Forget children, parents, paths, readiness flags and hypergradient warm starts
        (the engine re-wires them; see ``Engine.set_dependency``)."""
        self.children, self.parents, self.paths = [], [], []
        self.ready = {}
        self._hops.forget()
        self.last_hop_info = []

    def begin_inner_loop(self) -> None:
        """Start of an inner loop: cache state for roll-back."""
        if self._rolls_back():
            self._cache = self.cache_states()

    def _rolls_back(self) -> bool:
        return bool(self.parents) and self.engine is not None and self.engine.roll_back

    def inner_loop_ends(self) -> bool:
        """Whether the local step just taken ends an inner loop (the uppers step next)."""
        cfg = self._config
        return self._clock.inner_loop_ends(
            cfg.unroll_steps, cfg.gradient_accumulation, cfg.warmup_steps
        )

    def _notify_parents(self) -> None:
        if not self.inner_loop_ends():
            return
        for parent in self.parents:
            parent.ready[self._name] = True
            parent.step(self._clock.global_step)
        self._clock.inner_loop_start = True
        if self._rolls_back() and self._cache is not None:
            self.step_after_roll_back()

    def step_after_roll_back(self) -> None:
        """Restore the cached state and redo one step on the last batch with the new uppers."""
        assert self._cache is not None
        self.recover_states(self._cache)
        self._cache = None
        self.one_step_descent(self.cur_batch, fresh=True)

    def _own_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer holding this process's state (its shard under ZeRO)."""
        local: torch.optim.Optimizer = getattr(self.optimizer, "local_optimizer", self.optimizer)
        return local

    def one_step_descent(self, batch: Any = None, fresh: bool = False) -> None:
        """Batch, loss, gradients (with hypergradients), and an update at accumulation ends."""
        self.cur_batch = self.get_batch() if batch is None else batch
        self._clock.add_batch(self.cur_batch)
        with self._checking():
            scaled, stats = self.get_loss(self.cur_batch)
            self._last_loss = stats["loss"]
            grads = self.gradients(scaled)
            boundary = fresh or self._clock.count % self._config.gradient_accumulation == 0
            # with roll-back the scheduler steps once, after the redone step (as in Betty)
            self._clock.window_closed = boundary
            rolls_back = self._rolls_back()
            self._apply_gradients(grads, boundary, step_scheduler=fresh or not rolls_back)

    def _checking(self) -> contextlib.AbstractContextManager[Any]:
        """Health checks of this level's steps: kept until its update (one host sync there),
        or skipped with ``EngineConfig(check_finite=False)``."""
        if self.runtime.check_finite:
            return _health.collecting(self._checks)
        return _health.silenced()

    def check_health(self) -> None:
        """Raise the first failed health check of the open update window (a NaN loss, a
        non-finite gradient or hypergradient, a diverged solve), with one host sync; the
        update and the checkpoints call it before they use the window's results."""
        where = f"problem {self._name!r}, global step {self._clock.global_step}"
        _health.raise_first(self._checks, note=f"(raised at the update of {where})")

    def hop_batches(self) -> list[Any]:
        """The batches of the last accumulation window: the lower loss of a hop is their mean.

        With ``gradient_accumulation=k`` the update averages ``k`` micro-batch gradients, so the
        best response the upper differentiates is that of the mean loss over the ``k`` batches.
        """
        return self._clock.window if self._clock.window else [self.cur_batch]

    def gradients(self, loss: Tensor) -> Params:
        """Direct gradient of ``loss`` plus, over every path, the folded hypergradient."""
        return total_gradient(self, loss)

    def hop_method(self) -> Method:
        """The method of hops where this problem is the lower level, built from its config
        when the engine initialised it (the object that runs)."""
        if self._method is None:
            self._method = self._config.method()
        return self._method

    def hop_context(
        self, method: Method, key: HopKey, first_order_only: bool = False
    ) -> HopContext:
        """Per-hop state: the previous solution, for methods that warm-start, the method's own
        state, for stateful ones, and the optimizer's preconditioner, for methods that need
        one. ``first_order_only`` says that second-order autograd cannot run at this hop."""
        wanted = method.needs_preconditioner
        preconditioner = self.optimizer_preconditioner() if wanted else None
        return self._hops.context(key, preconditioner, first_order_only)

    def optimizer_preconditioner(self) -> Params | None:
        """A diagonal built from this level's optimizer state for methods that need one
        (``Method.needs_preconditioner``), or ``None`` for the identity. Default: ``None``."""
        return None

    def remember_hop(self, key: HopKey, method: Method, info: HopInfo) -> None:
        """Keep a hop's solution when the method warm-starts from it, and its state when the
        method is stateful."""
        self._hops.remember(key, method, info)

    def _apply_gradients(self, grads: Params, boundary: bool, step_scheduler: bool = True) -> None:
        """The one place that writes ``.grad`` and steps the optimizer."""
        params = self.named_trainable_parameters()
        for k, g in grads.items():  # entries nothing reached are absent: .grad stays None
            p = params[k]
            g = g if g.dtype == p.dtype else g.to(p.dtype)
            p.grad = g if p.grad is None else p.grad + g
        with self._calling("grad_callback"):
            self.grad_callback()
        if not boundary:
            return
        if not any(p.grad is not None for p in params.values()):
            self.check_health()  # no gradient at all: no optimizer or scheduler step
            return
        precision, group = self._precision, self.runtime.distributed
        group.average_grads(params.values())  # one average over data-parallel ranks per update
        if not precision.owns_step():  # fp16's GradScaler skips overflowed steps itself
            written = {k: p.grad for k, p in params.items() if p.grad is not None}
            check_finite_gradients(written, self._name, self._clock.global_step, self.count)
        self.check_health()
        precision.unscale_(self.optimizer)
        if self._config.gradient_clipping > 0:
            nn.utils.clip_grad_norm_(list(params.values()), self._config.gradient_clipping)
        self._hops.last_grads = self._snapshot_grads(params) if self.reads_last_grads() else None
        if precision.owns_step():  # fp16: the default step (an override is refused)
            precision.step(self.optimizer)  # skipped when the unscaled gradients are not finite
        else:
            with self._calling("custom_optimizer_step"):
                self.custom_optimizer_step()
        with self._calling("param_callback"):
            self.param_callback()
        self.optimizer.zero_grad(set_to_none=True)
        group.sync_buffers(self.module)
        if self.scheduler is not None and step_scheduler and steps_per_update(self.scheduler):
            self.scheduler.step()

    def reads_last_grads(self) -> bool:
        """Whether a hop reads the gradients of this problem's last update. Default: no.

        Keeping them costs a copy of every gradient per update and that much memory, so only a
        problem whose hops read them (SAMA's Adam preconditioner) keeps them.
        """
        return False

    @staticmethod
    def _snapshot_grads(params: Params) -> Params:
        return _state.grads_of(params)

    def written_gradients(self) -> Params:
        """Copies of the gradients written since the last update (an open window's)."""
        return _state.grads_of(self.named_trainable_parameters())

    def checkpoint_state(self) -> dict[str, Any]:
        """This level's entry in an engine checkpoint (tensors and plain containers); a
        collective for an FSDP2-sharded level, whose entry holds full tensors."""
        return _state.entry(self)

    def rank_state(self) -> dict[str, Any]:
        """The entries of :meth:`checkpoint_state` that differ between data-parallel ranks."""
        return _state.rank_entries(self)

    def check_checkpoint_state(self, state: dict[str, Any], where: str) -> None:
        """``ValueError`` unless ``state`` (this level's saved entry) fits this level."""
        _state.check_entry(self, state, where)

    def data_state(self) -> list[dict[str, Any]]:
        """Where each data loader stands: the ``loaders`` of :meth:`checkpoint_state`."""
        return self._loaders.state()

    def load_data_state(self, states: list[dict[str, Any]]) -> None:
        """Continue the data loaders where a checked entry's ``loaders`` left them, or raise
        ``ValueError`` with every loader where it was (one that ends before its saved position;
        checked only now when it has no ``len``). Changes the global RNG state."""
        self._loaders.load(states)

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore a checked entry but its data loaders' positions, which
        :meth:`load_data_state` restores first (so a loader that got shorter changes nothing)."""
        _state.load_entry(self, state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r})"
