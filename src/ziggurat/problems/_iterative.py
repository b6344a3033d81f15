"""``IterativeProblem``: a level differentiated through its own unrolled optimizer steps.

Its parameters are a dict of tensors that stays connected to the autograd graph from the start
of each inner loop: every step is an out-of-place update by the differentiable twin of the
user's ``torch.optim`` optimizer (:func:`ziggurat.optim.from_torch`), so an upper problem that
reads this one differentiates through the whole trajectory (Maclaurin et al. 2015; Finn et al.
2017). The graph is cut when the next inner loop starts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import _tree
from .._second_order import DoubleBackwardError, check_gradient_graph, twice_differentiable
from .._types import Params
from ..hypergradient import Method, Trajectory, segment_count
from ..optim import FunctionalOptimizer, OptState, from_torch
from . import _segments
from ._data import to_device
from ._double_backward import unrolled_error
from ._output import check_finite_gradients
from ._problem import Problem
from ._runtime import Runtime


class IterativeProblem(Problem):
    """A level whose parameters are unrolled differentiably (iterative differentiation).

    ``self.params`` holds the current parameters. At each inner-loop start they are re-read
    from the module (detached), so ``on_inner_loop_start`` may reset or copy module weights;
    assigning ``self.params`` inside that hook instead (e.g. to the meta-parameters of a
    MAML outer level) keeps them differentiable with respect to what they were built from.
    While any level's loss is evaluated (this level's steps, the replay of checkpointed
    segments, hypergradient evaluations, the upper levels' steps), ``self.params`` sit in the
    module's parameter slots (:meth:`Problem.evaluate`), so ``self.module(x)``,
    ``self.module.<name>``, ``self.module.parameters()``, ``self.parameters()`` and
    ``self(x)`` all read them. Between evaluations the module's own parameters are kept
    equal to ``self.params`` (detached), for validation and checkpoints. ``Config.type`` is
    not used: hops through this level follow its
    recorded trajectory (:class:`~ziggurat.hypergradient.Trajectory`). Only ``torch.optim``
    SGD, Adam and AdamW are supported.

    Gradient accumulation and ``Config.gradient_clipping`` (a differentiable global-norm clip)
    apply as for other problems; ``grad_callback`` runs after each gradient, which it can read
    as ``self.pending_grads``. ``precision="fp16"`` and ``custom_optimizer_step`` are refused:
    neither fits a differentiable update.

    Memory grows linearly with the inner loop's length, since the graph of every step stays
    alive until the upper level reads it. ``Config(checkpoint_segments="sqrt")`` (or an int
    ``S``) unrolls in ``S`` checkpointed segments instead (:mod:`._segments`): memory ``S``
    stored states plus one segment's graph, for one more gradient of every step; the result
    equals plain unrolling. It cannot be combined with ``roll_back``.

    The upper levels differentiate through these steps, a second-order product, so the level's
    training loss is evaluated under :func:`~ziggurat._second_order.twice_differentiable`
    (``scaled_dot_product_attention`` takes its math kernel, the one with a double backward;
    checkpointed segments too, whose replay must redraw the same dropout masks). An operation
    without a double backward is a ``ValueError`` at the first step that names it.
    """

    params_live_in_module = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._params: Params = {}
        self._params_assigned = False
        self._fopt: FunctionalOptimizer | None = None
        self._opt_state: OptState | None = None
        self._pending: Params | None = None
        self._segments: _segments.SegmentRecorder | None = None  # checkpointed unrolling

    @property
    def params(self) -> Params:
        return self._params

    @params.setter
    def params(self, value: Params) -> None:
        self._params = dict(value)
        self._params_assigned = True

    def initialize(self, engine: Runtime) -> None:
        if self.config.precision == "fp16":
            raise ValueError(
                f"problem {self.name!r}: IterativeProblem cannot use precision='fp16' (a "
                "GradScaler's skipped steps and rescaling are not differentiable updates); use "
                "precision='bf16' or 'fp32'"
            )
        if type(self).custom_optimizer_step is not Problem.custom_optimizer_step:
            raise ValueError(
                f"problem {self.name!r}: IterativeProblem updates its parameters with the "
                "differentiable twin of its optimizer, so custom_optimizer_step would never be "
                "called; remove the override, or make the level an ImplicitProblem"
            )
        super().initialize(engine)
        if self.scheduler is not None:
            self._refuse_scheduler()
        segments = self.config.checkpoint_segments
        if segments is not None and engine.roll_back:
            raise ValueError(
                f"problem {self.name!r}: checkpoint_segments cannot be combined with "
                "EngineConfig(roll_back=True) (a redone step would change a recorded segment); "
                "use one or the other"
            )
        if segments is not None:
            steps = self.config.unroll_steps
            self._segments = _segments.SegmentRecorder(-(-steps // segment_count(steps, segments)))
        self._fopt = from_torch(self.optimizer)
        self._params = _tree.leaves(super().named_trainable_parameters())
        self._opt_state = self._fopt.init(_tree.detach(self._params))

    def _refuse_scheduler(self) -> None:
        raise ValueError(
            f"problem {self.name!r}: IterativeProblem does not take a scheduler (its "
            "differentiable optimizer copies the torch optimizer's settings once); use an "
            "ImplicitProblem, or change the learning rate between runs"
        )

    def set_scheduler(self, scheduler: Any) -> None:
        """Refused once the engine is built (see :meth:`initialize`)."""
        if self.engine is not None and scheduler is not None:
            self._refuse_scheduler()
        super().set_scheduler(scheduler)

    def named_trainable_parameters(self) -> Params:
        return self._params

    def swap_params(self, new: Params) -> Params:
        old, self._params = self._params, dict(new)
        return old

    def module_substitution(self) -> tuple[nn.Module, Params]:
        return self.module, self._params

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # also outside evaluations (e.g. validation): the iterate, not the module's copy
        return torch.func.functional_call(self.module, self._params, args, kwargs)

    def hop_method(self) -> Method:
        return Trajectory()

    @property
    def checkpointed(self) -> bool:
        """Whether the inner loop is unrolled in checkpointed segments (``_segments``)."""
        return self._segments is not None

    def begin_inner_loop(self) -> None:
        if self._params_assigned:
            # a copy that stays in the graph of what it was built from: the inner steps then
            # differentiate their loss with respect to their own iterate only, even where the
            # loss also reads the tensor the loop started from (an upper level's parameters)
            self._params = {k: t.clone() if t.requires_grad else t for k, t in self._params.items()}
        else:
            live = {k: p for k, p in self.module.named_parameters() if k in self._params}
            # own storage: the module is overwritten in place after every step, and the graph
            # of the loop must keep the values it started from
            self._params = {k: p.detach().clone().requires_grad_(True) for k, p in live.items()}
        self._params_assigned = False
        assert self._opt_state is not None
        self._opt_state = self._opt_state.detach()
        self._pending = None
        if self._segments is not None:
            self._params, self._opt_state = self._segments.open(self._params, self._opt_state)

    def get_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        if not self._training:
            return super().get_loss(batch)
        if self._segments is not None:
            self._segments.record(batch, self.device or torch.device("cpu"))
        with twice_differentiable():
            return super().get_loss(batch)

    def gradients(self, loss: Tensor) -> Params:
        if self.paths:
            raise ValueError(
                f"problem {self.name!r}: an IterativeProblem cannot receive hypergradients from "
                "lower levels; make it an ImplicitProblem"
            )
        keep = not self.checkpointed  # a checkpointed segment keeps its graph on replay
        params = list(self._params.values())
        if not loss.requires_grad:
            grads: tuple[Tensor | None, ...] = (None,) * len(params)
        else:
            with twice_differentiable():
                grads = torch.autograd.grad(loss, params, create_graph=keep, allow_unused=True)
        if keep and loss.requires_grad:
            try:
                check_gradient_graph(grads, loss, "an unrolled step", self._params.values())
            except DoubleBackwardError as err:
                uppers = ", ".join(p.name for p in self.parents) or "its upper level"
                raise unrolled_error([self.name], uppers, err) from err
        if all(g is None for g in grads):
            raise ValueError(
                f"problem {self.name!r}: its loss does not depend on self.params (read by "
                "self(x), self.module(x), self.module.<name> and self.parameters() while the "
                "loss is evaluated), so the unrolled steps would not move; compute the loss "
                "from the model, not from tensors detached from it"
            )
        # data parallel: the step uses the global batch's gradient, and the upper level's
        # backward pass through it all-reduces its cotangents (exact, see systems._group)
        return self.runtime.distributed.average_differentiable(_tree.fill_none(grads, self._params))

    @property
    def pending_grads(self) -> Params | None:
        """The gradients accumulated for the next update (this level has no ``.grad``): what
        ``grad_callback`` can inspect."""
        return self._pending

    def _apply_gradients(self, grads: Params, boundary: bool, step_scheduler: bool = True) -> None:
        """Accumulate, then at a boundary clip (differentiably) and take one unrolled step."""
        self._pending = grads if self._pending is None else _tree.add(self._pending, grads)
        with self._calling("grad_callback"):
            self.grad_callback()
        if not boundary:
            return
        assert self._fopt is not None and self._opt_state is not None
        check_finite_gradients(self._pending, self.name, self._global_step, self.count)
        self.check_health()
        clipped = self._clip(self._pending)
        if self._segments is not None:
            self._checkpointed_update(self._segments, clipped)
        else:
            self._params, self._opt_state = self._fopt.step(self._params, clipped, self._opt_state)
        self._pending = None
        self._sync_module()
        with self._calling("param_callback"):
            self.param_callback()

    def _clip(self, grads: Params) -> Params:
        if self.config.gradient_clipping > 0:
            return _tree.clip_by_global_norm(grads, self.config.gradient_clipping)
        return grads

    def _checkpointed_update(self, segments: _segments.SegmentRecorder, grads: Params) -> None:
        """One graph-free update; a segment closes after its share of the inner loop's updates
        and when the inner loop ends (the upper levels then read the result)."""
        assert self._fopt is not None and self._opt_state is not None
        self._params, self._opt_state = segments.update(
            self._fopt, self._params, grads, self._opt_state
        )
        ends = self.inner_loop_ends()
        if not (ends or segments.full):
            return
        update = _segments.update_fn(
            self.loss_of,
            self.swap_params,
            self._fopt,
            self.config.gradient_accumulation,
            self._clip,
            self.device or torch.device("cpu"),
        )
        context = [
            t
            for p in self.runtime.problems
            if p is not self
            for t in p.trainable_parameters()
            if t.requires_grad
        ]
        self._params, self._opt_state = segments.close(
            update, self._params, self._opt_state, context
        )
        if not ends:
            self._params, self._opt_state = segments.open(self._params, self._opt_state)

    def _sync_module(self) -> None:
        with torch.no_grad():
            for k, p in self.module.named_parameters():
                if k in self._params:
                    p.copy_(self._params[k].detach())

    def cache_states(self) -> dict[str, Any]:
        return {"params": _tree.detach(self._params), "opt_state": self._opt_state}

    def recover_states(self, cache: dict[str, Any]) -> None:
        self._params = _tree.leaves(cache["params"])
        self._opt_state = cache["opt_state"]
        self._sync_module()

    def unrolled_state(self) -> dict[str, Any]:
        """What lives outside the module and torch optimizer, detached: the current ``params``
        and the differentiable optimizer's state (``step`` and buffers, e.g. Adam's moments).
        Part of :meth:`state_dict` and of the engine's checkpoints."""
        assert self._opt_state is not None
        return {
            "params": _tree.detach(self._params),
            "opt_step": self._opt_state.step,
            "opt_buffers": {b: _tree.detach(t) for b, t in self._opt_state.buffers.items()},
        }

    def load_unrolled_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`unrolled_state`'s output (tensors already on this problem's device);
        the parameters then start a new inner loop's graph."""
        self._check_unrolled_keys(state)
        # in this problem's order, which the tree operations expect
        self._params = _tree.leaves({k: state["params"][k] for k in self._params})
        buffers = {b: {k: t[k] for k in self._params} for b, t in state["opt_buffers"].items()}
        self._opt_state = OptState(int(state["opt_step"]), buffers)
        self._sync_module()

    def _check_unrolled_keys(self, state: dict[str, Any]) -> None:
        if sorted(state["params"]) != sorted(self._params):
            raise ValueError(
                f"problem {self.name!r}: the state's parameters {sorted(state['params'])} are "
                f"not this problem's {sorted(self._params)}"
            )

    def written_gradients(self) -> Params:
        """None: the gradients of an open window are :attr:`pending_grads`, saved with the
        unrolled state."""
        return {}

    def checkpoint_state(self) -> dict[str, Any]:
        """The base entry, with the unrolled state and pending gradients under ``iterative``
        (a roll-back cache is not saved: it is only held inside one engine iteration)."""
        state = super().checkpoint_state()
        pending = self._pending
        state["cache"] = None
        state["iterative"] = {
            **self.unrolled_state(),
            "pending": None if pending is None else _tree.detach(pending),
        }
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        unrolled = to_device(state["iterative"], self.device)
        self.load_unrolled_state(unrolled)
        self._pending = unrolled["pending"]

    def state_dict(self) -> dict[str, Any]:
        """``Problem.state_dict`` plus what lives outside the module and torch optimizer: the
        current ``params`` and the differentiable optimizer's state (``step`` and buffers,
        e.g. Adam's moments), as copies (see :meth:`unrolled_state`)."""
        unrolled = self.unrolled_state()
        out = super().state_dict()
        out["params"] = {k: t.clone() for k, t in unrolled["params"].items()}
        out["opt_state"] = {
            "step": unrolled["opt_step"],
            "buffers": {
                b: {k: t.clone() for k, t in tree.items()}
                for b, tree in unrolled["opt_buffers"].items()
            },
        }
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the parameters start a new inner loop's graph."""
        missing = [k for k in ("params", "opt_state") if k not in state]
        if missing:
            raise ValueError(
                f"problem {self.name!r}: the state has no {missing} entries, which an "
                "IterativeProblem needs (its parameters and optimizer state live outside the "
                "module); pass the dict that IterativeProblem.state_dict() returned"
            )
        unrolled = {
            "params": state["params"],
            "opt_step": state["opt_state"]["step"],
            "opt_buffers": state["opt_state"]["buffers"],
        }
        self._check_unrolled_keys(unrolled)
        super().load_state_dict(state)
        self.load_unrolled_state(to_device(unrolled, self.device or torch.device("cpu")))
        self._pending = None

    def zero_grad(self) -> None:
        """Discard the gradients of the open accumulation window."""
        self._pending = None

    def get_opt_state_for_param(self, param: Tensor) -> dict[str, Any]:
        """The differentiable optimizer's state for ``param`` (a module parameter or an entry
        of ``params``): ``step`` and the buffers of that tensor, as ``torch.optim`` names them.
        """
        assert self._opt_state is not None
        named = [*self.module.named_parameters(), *self._params.items()]
        name = next((k for k, t in named if t is param), None)
        if name is None or name not in self._params:
            raise ValueError(f"problem {self.name!r}: the tensor is not one of its parameters")
        state = self._opt_state
        return {"step": state.step, **{b: tree[name] for b, tree in state.buffers.items()}}
