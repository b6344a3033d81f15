"""Betty's public ``Problem`` API beyond the hooks and the step protocol: views of a level's
state and options, its mode, its ``state_dict``, logging, and the loss, gradient and
optimizer-state helpers Betty programs call (wiring and setters: ``_betty_graph``).

Mixed into :class:`~ziggurat.problems.Problem`, whose members these read are declared in the
class's ``TYPE_CHECKING`` block. None of them changes how a problem trains: the update still
writes gradients and steps the optimizer in one place (``Problem._apply_gradients``), and these
only read that state or act on request.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._types import Params
from ..configs import Config
from ..hypergradient import HopInfo
from ..logging import LoggerBase, flatten_stats
from . import _state
from ._betty_graph import BettyGraph
from ._clock import InnerLoopClock
from ._data import Loaders
from ._output import Metric, check_finite
from ._precision import DTYPES, Precision
from ._runtime import DecisionRecord, HypergradientRecord, Runtime

_DEFAULT_HOOKS = frozenset(
    {
        "configure_module",
        "configure_optimizer",
        "configure_scheduler",
        "configure_train_data_loader",
        "on_inner_loop_start",
        "grad_callback",
        "param_callback",
        "epoch_callback",
        "custom_optimizer_step",
        "param_groups",
    }
)
"""Hooks that ``Problem`` defines as documented no-ops and Betty's base class left undefined:
:meth:`BettyHelpers.is_implemented` counts them only where a subclass or the instance
defines them."""


class BettyHelpers(BettyGraph):
    """Betty's problem helpers, on ziggurat's state (mixed into ``Problem``, whose members
    they read are declared below for the type checker)."""

    if TYPE_CHECKING:
        _config: Config
        _name: str
        _clock: InnerLoopClock
        _precision: Precision
        _training: bool
        _loaders: Loaders
        engine: Runtime | None
        module: nn.Module
        optimizer: torch.optim.Optimizer
        scheduler: Any
        _last_metrics: dict[str, Metric]
        _last_loss: Tensor | float
        last_hop_info: list[HopInfo]
        decisions: list[tuple[int, str, Any]]
        _hypergradient_norm: Tensor | float

        @property
        def runtime(self) -> Runtime: ...
        def named_trainable_parameters(self) -> Params: ...
        def evaluate(self, batch: Any) -> tuple[Tensor, dict[str, Metric]]: ...
        def _own_optimizer(self) -> torch.optim.Optimizer: ...
        def _training_output(self, batch: Any, full_precision: bool) -> Any: ...

    @property
    def count(self) -> int:
        """Local steps taken in training mode."""
        return self._clock.count

    @property
    def _count(self) -> int:  # Betty's name, read by its programs
        return self._clock.count

    @property
    def _global_step(self) -> int:  # Betty's name, read by its programs
        return self._clock.global_step

    @property
    def leaf(self) -> bool:
        return not self.children

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The fp16 GradScaler (``None`` for other precisions and before initialisation)."""
        return self._precision.scaler

    @scaler.setter
    def scaler(self, scaler: torch.amp.GradScaler | None) -> None:
        self._precision.scaler = scaler

    @property
    def training(self) -> bool:
        return self._training

    def is_rank_zero(self) -> bool:
        """Whether this process is rank 0 of the engine's group (always, on one process)."""
        return self.engine is None or self.engine.is_rank_zero()

    def train(self) -> None:
        self._training = True
        if self.module is not None:
            self.module.train()

    def eval(self) -> None:
        self._training = False
        if self.module is not None:
            self.module.eval()

    def trainable_parameters(self) -> list[Tensor]:
        return list(self.named_trainable_parameters().values())

    def parameters(self) -> list[Tensor]:
        return list(self.module.parameters())

    def state_dict(self) -> dict[str, Any]:
        """Module, optimizer, scheduler and GradScaler state (a subset of a checkpoint)."""
        out = _state.module_and_optimizer(self.module, self.optimizer, sharded=False)
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None:
            out["scaler"] = self.scaler.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _state.load_module_and_optimizer(self.module, self.optimizer, state, sharded=False)
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    @property
    def gas(self) -> int:
        """``config.gradient_accumulation``: local steps per optimizer update."""
        return self._config.gradient_accumulation

    @property
    def gradient_clipping(self) -> float:
        """``config.gradient_clipping``: the global-norm bound (0 disables clipping)."""
        return self._config.gradient_clipping

    @property
    def warmup_steps(self) -> int:
        """``config.warmup_steps``: local steps before this problem first signals its uppers."""
        return self._config.warmup_steps

    @property
    def log_step(self) -> int:
        """``config.log_step``: the logging period in local steps (<= 0 disables it)."""
        return self._config.log_step

    @property
    def log_local_step(self) -> bool:
        """``config.log_local_step``: log against the local instead of the global step."""
        return self._config.log_local_step

    @property
    def precision(self) -> str:
        """``config.precision``: ``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        return self._config.precision

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of ``precision`` (losses are widened to fp32 all the same)."""
        return DTYPES[self._config.precision]

    @property
    def initial_dynamic_scale(self) -> float:
        """``config.initial_dynamic_scale``: the fp16 GradScaler's starting scale."""
        return self._config.initial_dynamic_scale

    @property
    def scale_factor(self) -> float:
        """``config.scale_factor``: the fp16 GradScaler's growth factor."""
        return self._config.scale_factor

    @property
    def epoch_counter(self) -> list[int]:
        """Epochs each loader has finished (a copy; the first loader's drive
        ``epoch_callback``)."""
        return [loader.epoch for loader in self._loaders.loaders]

    def gradient_accumulation_boundary(self) -> bool:
        """Whether the local step just taken ends a gradient-accumulation window (an update)."""
        return self._clock.count % self._config.gradient_accumulation == 0

    def is_implemented(self, fn_name: str) -> bool:
        """Whether the problem has a callable ``fn_name`` (another problem's name counts).

        A hook that ``Problem`` defines as a documented no-op (``grad_callback``,
        ``configure_module``, ...) counts only where it is overridden, which is where Betty's
        base class, which left those hooks undefined, answered ``True``.
        """
        if fn_name in _DEFAULT_HOOKS and fn_name not in vars(self):
            owners = [k for k in type(self).__mro__ if fn_name in vars(k)]
            return len(owners) > 1
        return callable(getattr(self, fn_name, None))

    def training_step_exec(self, batch: Any) -> Any:
        """``training_step(batch)``'s output as a step evaluates it: under this problem's
        autocast, with unrolled levels' parameters in their modules (see
        :meth:`~ziggurat.problems.Problem.evaluate`)."""
        return self._training_output(batch, False)

    def log(self, stats: dict[str, Any], global_step: int | None = None) -> None:
        """A console line and the engine's metric record of ``stats`` (scalars, tensors or
        lists of them) under this problem's name, at ``global_step``; at the local step when
        ``global_step`` is ``None`` or ``config.log_local_step`` is set."""
        local = global_step is None or self._config.log_local_step
        step = self._clock.count if local else global_step
        assert step is not None
        self.runtime.log_metrics(self._name, flatten_stats(stats), step)

    def _log_step(self) -> int:
        return self._clock.count if self._config.log_local_step else self._clock.global_step

    def _log_due(self) -> bool:
        every = self._config.log_step
        return every > 0 and self._clock.count % every == 0

    def _maybe_log(self) -> None:
        if self._log_due():  # tensors until here: reading them is the step's one host sync
            self.log({"loss": self._last_loss, **self._last_metrics}, self._clock.global_step)

    def _log_hypergradient(self) -> None:
        record = HypergradientRecord(
            self._name,
            self._log_step(),
            self._log_due(),
            self._hypergradient_norm,
            self.last_hop_info,
        )
        self.runtime.log_hypergradient(record)

    def record_decision(self, hop: str, decision: Any) -> None:
        """Keep (in :attr:`decisions`) and log a decision of a method that chooses itself
        (``auto``) at the hop ``hop`` (``"lower->upper"``)."""
        step = self._log_step()
        self.decisions.append((step, hop, decision))
        if self.engine is not None:
            self.runtime.log_decision(DecisionRecord(self._name, hop, step, decision))

    @property
    def logger(self) -> LoggerBase:
        """The engine's logger (``Engine.logger``); before an engine holds this problem, one
        that only writes console lines."""
        return LoggerBase() if self.engine is None else self.engine.logger

    def get_loss(self, batch: Any) -> tuple[Tensor, dict[str, Any]]:
        """The loss this problem differentiates on ``batch``, and what it logs.

        ``training_step(batch)`` under this problem's autocast, checked (a scalar, finite),
        divided by ``gradient_accumulation`` and scaled by the fp16 GradScaler if there is
        one; the dict holds the unscaled loss under ``"loss"`` and the other entries that
        ``training_step`` returned, as tensors where they are (no host sync). A non-finite
        loss is raised before the level's next update (:mod:`ziggurat._health`).
        """
        loss, metrics = self.evaluate(batch)
        check_finite(loss.detach(), self._name, self._global_step, self.count)  # read at update
        self._last_metrics = metrics  # the training step's own, never a hop's perturbed ones
        stats = {"loss": loss.detach(), **metrics}
        k = self._config.gradient_accumulation
        scaled = loss if k == 1 else loss / k  # dividing by 1 would add a node to the graph
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        return scaled, stats

    def meta_trainable_parameters(self) -> list[Tensor]:
        """The parameters hypergradients are differentiated through: all trainable ones.

        Betty let subclasses narrow this set, but honoured it in only some methods; here
        every method differentiates through every trainable parameter of the level, and an
        override is refused when the engine is built. To leave a tensor out of both training
        and hypergradients, set its ``requires_grad`` to False.
        """
        return self.trainable_parameters()

    def zero_grad(self) -> None:
        """Discard the gradients written so far (e.g. part of an accumulation window)."""
        for p in self.trainable_parameters():
            p.grad = None

    def clip_grad(self) -> Tensor | None:
        """Clip the written gradients to ``gradient_clipping`` in global norm, as the update
        does before each optimizer step; return the norm before clipping, or ``None`` when
        clipping is off."""
        if self._config.gradient_clipping <= 0:
            return None
        with_grad = [p for p in self.trainable_parameters() if p.grad is not None]
        return nn.utils.clip_grad_norm_(with_grad, self._config.gradient_clipping)

    def get_opt_param_group_for_param(self, param: Tensor) -> dict[str, Any]:
        """The optimizer's param group holding ``param`` (the live dict)."""
        for group in self.optimizer.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError(
            f"problem {self._name!r}: the tensor is not a parameter of this problem's optimizer"
        )

    def get_opt_state_for_param(self, param: Tensor) -> dict[str, Any]:
        """The optimizer's state for ``param``: the live dict, or an empty one while the
        optimizer holds none for it (before its first step; under ZeRO, on ranks that do not
        own it)."""
        self.get_opt_param_group_for_param(param)
        state: dict[str, Any] = self._own_optimizer().state.get(param, {})
        return state

    def cache_states(self) -> dict[str, Any]:
        """Module and optimizer state for roll-back (per rank: no collective is needed)."""
        return {
            "module": copy.deepcopy(self.module.state_dict()),
            "optimizer": copy.deepcopy(self._own_optimizer().state_dict()),
        }

    def recover_states(self, cache: dict[str, Any]) -> None:
        self.module.load_state_dict(cache["module"])
        self._own_optimizer().load_state_dict(cache["optimizer"])
