"""``Problem``: one level of a multilevel program (the Betty-compatible surface).

A problem owns a module, an optimizer, an optional scheduler and its data. Users write
``training_step(batch)``; the engine schedules ``step()``. Gradients are written and optimizers
stepped in exactly one place, :meth:`Problem._apply_gradients`; all hypergradient mathematics is
delegated to the functional core (:func:`ziggurat.hypergradient.fold`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .. import _tree
from .._types import Params
from ..configs import Config
from ..hypergradient import HopContext, HopInfo, Method
from ._data import CyclingLoader, to_device
from ._helpers import ProblemHelpers
from ._hypergrad import HopKey, total_gradient
from ._schedulers import steps_per_update

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("ziggurat")


_RESERVED = frozenset(dir(object)) | {
    "engine",
    "module",
    "optimizer",
    "scheduler",
    "config",
    "scaler",
}


class Problem(ProblemHelpers):
    """One level of a multilevel program.

    Args:
        name: unique name; other problems and the engine reach this one as ``self.<name>``.
        config: a :class:`~ziggurat.configs.Config` (default options when omitted).
        module, optimizer, scheduler, train_data_loader: the components; each may instead come
            from ``configure_module()``, ``configure_optimizer()``, ``configure_scheduler()`` and
            ``configure_train_data_loader()``. Several loaders may be given as a tuple; the batch
            is then a tuple of batches. The optimizer must hold every module parameter with
            ``requires_grad=True`` (the level's parameters); freeze the others.
        extra_config: any object, available as ``self.cfg``.
        device: where the module and batches live; defaults to the engine's device.

    Hooks (all optional, documented no-ops unless stated): ``on_inner_loop_start``,
    ``grad_callback``, ``param_callback``, ``epoch_callback``, ``custom_optimizer_step``
    (default: ``optimizer.step()``), ``param_groups`` and the ``configure_*`` family.
    """

    params_live_in_module = True

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
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"problem name must be a Python identifier, got {name!r}")
        if name in _RESERVED or hasattr(type(self), name):
            raise ValueError(
                f"problem name {name!r} clashes with an attribute of {type(self).__name__}; "
                "choose another name"
            )
        if config is not None and not isinstance(config, Config):
            raise TypeError(
                f"problem {name!r}: config must be a Config, got {type(config).__name__}"
            )
        self._name = name
        self._config = config if config is not None else Config()
        self.module = module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_data_loader = train_data_loader
        self.cfg = extra_config
        self.device = torch.device(device) if device is not None else None
        self.engine: Engine | None = None
        self.env: Any = None
        self.cur_batch: Any = None
        self.children: list[Problem] = []
        self.parents: list[Problem] = []
        self.paths: list[list[Problem]] = []
        self.ready: dict[str, bool] = {}
        self.last_hop_info: list[HopInfo] = []
        self.last_loss: float = math.nan
        self.last_metrics: dict[str, float] = {}
        self._count = 0
        self._global_step = 0
        self._inner_loop_start = True
        self._training = True
        self._loaders: list[CyclingLoader] = []
        self._warm_starts: dict[HopKey, Params] = {}
        self._cache: dict[str, Any] | None = None
        self._last_grads: Params | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self._hypergradient_norm: Tensor | float = math.nan
        self._window: list[Any] = []  # batches of the current accumulation window
        self._window_closed = True
        self._shards: Params | None = None  # FSDP2-sharded parameters (strategy="fsdp")

    # ------------------------------------------------------------------ user hooks
    def training_step(self, batch: Any) -> Tensor | dict[str, Any]:
        """Return this level's loss on ``batch`` (a scalar, or a dict with ``"loss"``)."""
        raise NotImplementedError(
            f"problem {self._name!r} ({type(self).__name__}) must define training_step(self, batch)"
        )

    def configure_module(self) -> nn.Module | None:
        """Build the module when none was passed. Default: none."""
        return None

    def configure_optimizer(self) -> torch.optim.Optimizer | None:
        """Build the optimizer when none was passed. Default: none."""
        return None

    def configure_scheduler(self) -> Any:
        """Build the learning-rate scheduler when none was passed. Default: none."""
        return None

    def configure_train_data_loader(self) -> Any:
        """Build the data loader(s) when none was passed. Default: none."""
        return None

    def on_inner_loop_start(self) -> None:
        """Called before the first step after each update of the upper problems. No-op."""

    def grad_callback(self) -> None:
        """Called after gradients (hypergradients included) are written, before clipping. No-op."""

    def param_callback(self) -> None:
        """Called after each optimizer step. No-op."""

    def epoch_callback(self) -> None:
        """Called when the first data loader starts a new epoch. No-op."""

    def custom_optimizer_step(self, *args: Any, **kwargs: Any) -> Any:
        """Apply the written gradients, once per update. Default: ``self.optimizer.step()``.

        Runs after the gradients are unscaled and clipped; the optimizer's ``zero_grad`` and
        ``param_callback`` follow. An override cannot be combined with ``precision="fp16"``
        (refused when the engine is built), whose GradScaler takes the step itself.
        """
        assert self.optimizer is not None
        return self.optimizer.step()

    def param_groups(self) -> list[dict[str, Any]] | None:
        """Parameter groups for ``configure_optimizer`` to build the optimizer from.

        The optimizer is never rebuilt from them: when this returns groups, the engine checks
        at construction that the optimizer holds exactly these groups and options. Default:
        none.
        """
        return None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """What ``self.<name>(...)`` computes in other problems: the module's forward."""
        assert self.module is not None
        return self.module(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ names
    def __getattr__(self, item: str) -> Any:
        # only reached when normal lookup fails: resolve other problems by name
        if item.startswith("_") or item == "env":
            raise AttributeError(item)
        engine = self.__dict__.get("engine")
        if engine is not None:
            found = engine.problem_by_name(item)
            if found is not None:
                return found
            known = sorted(engine.problem_names())
            raise AttributeError(
                f"problem {self.__dict__['_name']!r} has no attribute or problem named {item!r}; "
                f"known problems: {known}"
            )
        raise AttributeError(
            f"{type(self).__name__} {self.__dict__.get('_name')!r} has no attribute {item!r} "
            "(other problems are reachable by name once an Engine holds this problem)"
        )

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return self._name

    @property
    def config(self) -> Config:
        return self._config

    @property
    def count(self) -> int:
        """Local steps taken in training mode."""
        return self._count

    @property
    def leaf(self) -> bool:
        return not self.children

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

    # ------------------------------------------------------------------ parameters
    def named_trainable_parameters(self) -> Params:
        """This level's trainable tensors, by name (what its optimizer updates)."""
        if self._shards is not None:
            return dict(self._shards)
        assert self.module is not None
        return {k: p for k, p in self.module.named_parameters() if p.requires_grad}

    @property
    def sharded(self) -> bool:
        """Whether the engine sharded this level's module with FSDP2 (``strategy="fsdp"``)."""
        return self._shards is not None

    def use_shards(self, shards: Params) -> None:
        """Make ``shards`` (the module's FSDP2-sharded parameters, DTensors) this level's
        trainable tensors.

        They are kept here because, between a forward pass and the end of its backward pass,
        the module's own attributes hold the unsharded (all-gathered) parameters instead.
        """
        self._shards = {k: p for k, p in shards.items() if p.requires_grad}

    def trainable_parameters(self) -> list[Tensor]:
        return list(self.named_trainable_parameters().values())

    def parameters(self) -> list[Tensor]:
        assert self.module is not None
        return list(self.module.parameters())

    @property
    def swaps_params(self) -> bool:
        """Whether pure evaluations put values in with :meth:`swap_params` instead of
        substituting them through ``torch.func.functional_call``.

        True for dict-held parameters (``IterativeProblem``) and for FSDP2-sharded modules,
        whose unsharding hooks would override a functional substitution.
        """
        return not self.params_live_in_module or self.sharded

    def swap_params(self, new: Params) -> Params:
        """Put ``new`` in place of this level's parameters for a pure evaluation; return the
        values to put back.

        A sharded module's parameters (DTensors) are overwritten in place, without autograd:
        only first-order methods run on sharded levels, and they never differentiate a pure
        loss with respect to its ``w``.
        """
        if not self.sharded:
            raise NotImplementedError(f"{type(self).__name__} keeps its parameters in its module")
        live = self.named_trainable_parameters()
        with torch.no_grad():
            old = {k: live[k].detach().clone() for k in new}
            for k, t in new.items():
                live[k].copy_(t)
        return old

    # ------------------------------------------------------------------ setup
    def initialize(self, engine: Engine) -> None:
        """Resolve components, move to the device and validate; called by the engine."""
        if type(self).training_step is Problem.training_step:
            self.training_step(None)  # raises the error that names the problem and the fix
        self.engine = engine
        self.device = self.device or engine.device
        if self.module is None:
            self.module = self.configure_module()
        self._check_component("module", self.module, nn.Module, "an nn.Module")
        assert self.module is not None
        before = {id(p) for p in self.module.parameters()}
        self.module.to(self.device)
        moved = {id(p) for p in self.module.parameters()} != before
        if self.optimizer is None:
            self.optimizer = self.configure_optimizer()
        self._check_component(
            "optimizer", self.optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer"
        )
        self._check_optimizer_holds_parameters(replaced=moved)
        if self.scheduler is None:
            self.scheduler = self.configure_scheduler()
        if self.train_data_loader is None:
            self.train_data_loader = self.configure_train_data_loader()
        self._setup_loaders()
        self._check_custom_step()
        self._check_precision()
        self.scaler = self._make_scaler()

    def _check_component(self, what: str, value: Any, kind: type, kind_name: str) -> None:
        if value is None:
            raise ValueError(
                f"problem {self._name!r} has no {what}: pass {what}= or define configure_{what}()"
            )
        if not isinstance(value, kind):
            raise TypeError(
                f"problem {self._name!r}: got {type(value).__name__} as its {what}; expected "
                f"{kind_name} (from {what}= or configure_{what}())"
            )

    def _check_optimizer_holds_parameters(self, replaced: bool = False) -> None:
        """Every trainable parameter of the module must be in the optimizer.

        A level's gradients (direct and hypergradient) are written on every trainable
        parameter, and its hops differentiate through all of them; one the optimizer does not
        hold would never be cleared or stepped by it (its ``.grad`` would grow without bound
        and enter clipping) or, in an unrolled level, would still be updated.
        """
        assert self.module is not None and self.optimizer is not None
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        missing = [
            k for k, p in self.module.named_parameters() if p.requires_grad and id(p) not in held
        ]
        if missing and replaced:
            raise ValueError(
                f"problem {self._name!r}: moving its module to {self.device} replaced its "
                "parameter tensors (module.to does so between incompatible tensor types), so "
                "its optimizer holds the old ones; build the optimizer in configure_optimizer(), "
                "which runs after the move, or move the module before building the optimizer"
            )
        if missing:
            shown = ", ".join(repr(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(
                f"problem {self._name!r}: {len(missing)} trainable parameter(s) of its module are "
                f"not in its optimizer ({shown}); a level trains and differentiates through "
                "every parameter with requires_grad=True. Add them to the optimizer, or freeze "
                "them with requires_grad_(False) before building the engine"
            )

    def _check_custom_step(self) -> None:
        overridden = type(self).custom_optimizer_step is not Problem.custom_optimizer_step
        if overridden and self._config.precision == "fp16":
            raise ValueError(
                f"problem {self._name!r} overrides custom_optimizer_step, which cannot be "
                "combined with precision='fp16': the GradScaler must take the step itself, to "
                "skip it when the unscaled gradients are not finite. Use precision='bf16' or "
                "'fp32', or remove the override"
            )

    def _setup_loaders(self) -> None:
        loaders = self.train_data_loader
        if loaders is None:
            self._loaders = []
            return
        many = isinstance(loaders, tuple)
        self._loaders = [CyclingLoader(ld, self._name) for ld in (loaders if many else (loaders,))]
        self._multi_loader = many

    def _check_precision(self) -> None:
        assert self.device is not None
        if self._config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError(
                f"problem {self._name!r}: precision='fp16' needs a CUDA device (GradScaler); "
                f"this problem runs on {self.device.type}. Use precision='bf16' or 'fp32'"
            )

    def _make_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 (CUDA only): a GradScaler scales the loss and unscales before the update."""
        if self._config.precision != "fp16":
            return None
        return torch.amp.GradScaler(
            "cuda",
            init_scale=self._config.initial_dynamic_scale,
            growth_factor=self._config.scale_factor,
        )

    # ------------------------------------------------------------------ data and loss
    def get_batch(self) -> Any:
        """The next batch from the loader(s), moved to the device."""
        if not self._loaders:
            raise ValueError(
                f"problem {self._name!r} has no data: pass train_data_loader=, define "
                "configure_train_data_loader(), or override get_batch()"
            )
        batches = []
        for i, loader in enumerate(self._loaders):
            batch, wrapped = loader.next()
            if wrapped and i == 0:
                self.epoch_callback()
            batches.append(batch)
        batch = tuple(batches) if self._multi_loader else batches[0]
        return to_device(batch, self.device)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of this problem's precision (a no-op for fp32)."""
        assert self.device is not None
        if self._config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self._config.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def loss_of(self, batch: Any, full_precision: bool = False) -> Tensor:
        """Run ``training_step`` and return its scalar loss, checked; under this problem's
        autocast unless ``full_precision``."""
        with contextlib.nullcontext() if full_precision else self.autocast():
            out = self.training_step(batch)
        loss, metrics = self._split_output(out)
        self.last_metrics = metrics
        # a reduced-precision loss is widened so gradients, cotangents and solves stay fp32
        return loss.float() if loss.dtype in (torch.bfloat16, torch.float16) else loss

    def _split_output(self, out: Any) -> tuple[Tensor, dict[str, float]]:
        metrics: dict[str, float] = {}
        if isinstance(out, dict):
            if "loss" not in out:
                raise ValueError(
                    f"problem {self._name!r}: training_step returned a dict without 'loss' "
                    f"(keys {sorted(out)}); add the loss under 'loss'"
                )
            metrics = {k: _as_float(v) for k, v in out.items() if k != "loss"}
            out = out["loss"]
        if not isinstance(out, Tensor):
            raise TypeError(
                f"problem {self._name!r}: training_step must return a tensor or a dict with "
                f"'loss', got {type(out).__name__}"
            )
        if out.numel() != 1:
            raise ValueError(
                f"problem {self._name!r}: training_step returned a loss of shape "
                f"{tuple(out.shape)}; return a scalar (e.g. loss.mean())"
            )
        return out.reshape(()), metrics

    def _check_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"problem {self._name!r}: loss is {loss} at global step "
                f"{self._global_step}, local step {self._count}; lower the learning rate, "
                "clip gradients (Config(gradient_clipping=...)) or check the data"
            )

    # ------------------------------------------------------------------ scheduling
    def step(self, global_step: int | None = None) -> None:
        """One local step if every lower problem is ready; may trigger the upper problems.

        The rule: a problem with lower problems steps only once all of them have signalled
        readiness since its last step. After ``unroll_steps * gradient_accumulation`` local
        steps beyond ``warmup_steps``, a problem signals each upper problem (in ``l2u`` order),
        which then steps immediately, depth first.
        """
        if global_step is not None:
            self._global_step = global_step
        if not all(self.ready.values()):
            return
        if self._inner_loop_start:
            self.on_inner_loop_start()
            self.begin_inner_loop()
            self._inner_loop_start = False
        if self._training:
            self._count += 1
        self.one_step_descent()
        if self._training:
            self._maybe_log()
            if self.last_hop_info and self.engine is not None:
                self.engine.log_hypergradient(self)
            self._notify_parents()
        self.ready = dict.fromkeys(self.ready, False)

    @property
    def at_inner_loop_boundary(self) -> bool:
        """Whether no inner loop is open: every local step since the last signal to the upper
        levels has been signalled (warm-up steps count as open), no gradient-accumulation
        window is open and no roll-back cache is held. True before the first step."""
        return self._inner_loop_start and self._window_closed and self._cache is None

    def clear_dependencies(self) -> None:
        """Forget children, parents, paths, readiness flags and hypergradient warm starts
        (the engine re-wires them; see ``Engine.set_dependency``)."""
        self.children, self.parents, self.paths = [], [], []
        self.ready = {}
        self._warm_starts = {}
        self.last_hop_info = []

    def begin_inner_loop(self) -> None:
        """Start of an inner loop: cache state for roll-back."""
        if self._rolls_back():
            self._cache = self.cache_states()

    def _rolls_back(self) -> bool:
        return bool(self.parents) and self.engine is not None and self.engine.config.roll_back

    def inner_loop_ends(self) -> bool:
        """Whether the local step just taken ends an inner loop (the uppers step next)."""
        period = self._config.unroll_steps * self._config.gradient_accumulation
        return self._count % period == 0 and self._count > self._config.warmup_steps

    def _notify_parents(self) -> None:
        if not self.inner_loop_ends():
            return
        for parent in self.parents:
            parent.ready[self._name] = True
            parent.step(self._global_step)
        self._inner_loop_start = True
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
        assert self.optimizer is not None
        local: torch.optim.Optimizer = getattr(self.optimizer, "local_optimizer", self.optimizer)
        return local

    def cache_states(self) -> dict[str, Any]:
        """Module and optimizer state for roll-back (per rank: no collective is needed)."""
        assert self.module is not None
        return {
            "module": copy.deepcopy(self.module.state_dict()),
            "optimizer": copy.deepcopy(self._own_optimizer().state_dict()),
        }

    def recover_states(self, cache: dict[str, Any]) -> None:
        assert self.module is not None
        self.module.load_state_dict(cache["module"])
        self._own_optimizer().load_state_dict(cache["optimizer"])

    # ------------------------------------------------------------------ one step
    def one_step_descent(self, batch: Any = None, fresh: bool = False) -> None:
        """Batch, loss, gradients (with hypergradients), and an update at accumulation ends."""
        self.cur_batch = self.get_batch() if batch is None else batch
        if self._window_closed:
            self._window = []
        self._window.append(self.cur_batch)
        scaled, stats = self.get_loss(self.cur_batch)
        self.last_loss = stats["loss"]
        grads = self.gradients(scaled)
        boundary = fresh or self._count % self._config.gradient_accumulation == 0
        # with roll-back the scheduler steps once, after the redone step (as in Betty)
        self._window_closed = boundary
        self._apply_gradients(grads, boundary, step_scheduler=fresh or not self._rolls_back())

    def hop_batches(self) -> list[Any]:
        """The batches of the last accumulation window: the lower loss of a hop is their mean.

        With ``gradient_accumulation=k`` the update averages ``k`` micro-batch gradients, so the
        best response the upper differentiates is that of the mean loss over the ``k`` batches.
        """
        return self._window if self._window else [self.cur_batch]

    def gradients(self, loss: Tensor) -> Params:
        """Direct gradient of ``loss`` plus, over every path, the folded hypergradient."""
        return total_gradient(self, loss)

    def hop_method(self) -> Method:
        """The method for hops where this problem is the lower level (from its config)."""
        return self._config.method()

    def hop_context(self, method: Method, key: HopKey) -> HopContext:
        """Per-hop state: the previous solution, for solvers that warm-start."""
        return HopContext(warm_start=self._warm_starts.get(key))

    def remember_hop(self, key: HopKey, method: Method, info: HopInfo) -> None:
        """Keep a hop's solution when the method warm-starts from it."""
        if method.warm_starts and info.solution is not None:
            self._warm_starts[key] = _tree.detach(info.solution)

    # ------------------------------------------------------------------ the update
    def _apply_gradients(self, grads: Params, boundary: bool, step_scheduler: bool = True) -> None:
        """The one place that writes ``.grad`` and steps the optimizer."""
        params = self.named_trainable_parameters()
        for k, p in params.items():
            g = grads[k].to(p.dtype)
            p.grad = g if p.grad is None else p.grad + g
        self.grad_callback()
        if not boundary:
            return
        assert self.optimizer is not None
        if self.engine is not None:  # one average over data-parallel ranks per update
            self.engine.distributed.average_grads(params.values())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self._config.gradient_clipping > 0:
            nn.utils.clip_grad_norm_(list(params.values()), self._config.gradient_clipping)
        self._last_grads = self._snapshot_grads(params) if self.reads_last_grads() else None
        if self.scaler is not None:  # fp16: the default step (an override is refused)
            self.scaler.step(self.optimizer)  # skipped when the unscaled gradients are not finite
            self.scaler.update()
        else:
            self.custom_optimizer_step()
        self.param_callback()
        self.optimizer.zero_grad(set_to_none=True)
        if self.engine is not None and self.module is not None:
            self.engine.distributed.sync_buffers(self.module)
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
        return {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}

    # ------------------------------------------------------------------ logging
    def _maybe_log(self) -> None:
        every = self._config.log_step
        if every <= 0 or self._count % every != 0:
            return
        step = self._count if self._config.log_local_step else self._global_step
        stats = {"loss": self.last_loss, **self.last_metrics}
        if self.engine is not None:
            self.engine.log_metrics(self._name, stats, step)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        assert self.module is not None and self.optimizer is not None
        out: dict[str, Any] = {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None:
            out["scaler"] = self.scaler.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.module is not None and self.optimizer is not None
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r})"


def _as_float(value: Any) -> float:
    if isinstance(value, Tensor):
        return float(value.detach().float().mean())
    return float(value)
