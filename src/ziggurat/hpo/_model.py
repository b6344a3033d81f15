"""A compact hyperparameter-optimization front end over an ``nn.Module``.

The training loss is ``loss(module(x'), y') + regularizer(params, hyper)`` with
``(x', y') = transform((x, y), hyper)``: hyperparameters may enter through a penalty, through the
data pipeline, or both. :meth:`HyperModel.fit` alternates inner training (ordinary
``torch.optim`` steps on the module) with hypergradient steps on the hyperparameters, where the
hypergradient ``dF/dhyper = v^T dw*/dhyper`` with ``v = dF/dw`` comes from implicit
differentiation of the pure training loss built with ``torch.func.functional_call``
(Pedregosa 2016, "Hyperparameter optimization with approximate gradient"; Lorraine et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from .. import _checks, _rng, _tree
from .._types import Params
from ..hypergradient import HopInfo, Method, cg
from ._history import History
from ._inputs import (
    Batch,
    build_optimizer,
    check_batch,
    check_hyper,
    check_method,
    require_callable,
)
from ._progress import progress_steps

OptimizerFactory = Callable[[Iterable[Tensor]], torch.optim.Optimizer]


def _default_inner_optimizer(params: Iterable[Tensor]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-2)


class HyperModel:
    """An ``nn.Module`` with declared hyperparameters, a training loss and a validation loss.

    Args:
        module: the model; its trainable parameters are the lower-level variables ``w``.
        hyper: name -> initial value; the module keeps leaf copies in :attr:`hyper`.
        loss: ``loss(outputs, targets) -> scalar``, used for training and, by default,
            validation.
        regularizer: ``regularizer(params, hyper) -> scalar`` added to the training loss;
            ``params`` maps the module's parameter names to tensors.
        transform: ``transform((inputs, targets), hyper) -> (inputs, targets)`` applied to
            training batches only (e.g. an augmentation whose strength is a hyperparameter).
            It must be differentiable in ``hyper``; a random transform makes the
            hypergradient stochastic, with the same draws in every loss evaluation of one
            :meth:`hypergradient` call (see there).
        val_loss: ``val_loss(outputs, targets) -> scalar``; defaults to ``loss``.

    At least one of ``regularizer`` and ``transform`` must be given, or the hyperparameters
    would not enter the training loss.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        hyper: Mapping[str, Tensor],
        loss: Callable[[Tensor, Tensor], Tensor],
        regularizer: Callable[[Params, Params], Tensor] | None = None,
        transform: Callable[[Batch, Params], Batch] | None = None,
        val_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ValueError(f"HyperModel module must be a torch.nn.Module, got {module!r}")
        require_callable("loss", loss)
        require_callable("regularizer", regularizer, optional=True)
        require_callable("transform", transform, optional=True)
        require_callable("val_loss", val_loss, optional=True)
        if regularizer is None and transform is None:
            raise ValueError(
                "HyperModel needs a regularizer or a transform (or both): the hyperparameters "
                "must enter the training loss, got neither"
            )
        if not any(p.requires_grad for p in module.parameters()):
            raise ValueError("HyperModel module has no trainable parameters")
        self.module = module
        self.hyper = check_hyper(hyper)
        self.loss, self.regularizer, self.transform = loss, regularizer, transform
        self.validation_loss = loss if val_loss is None else val_loss

    def params(self) -> Params:
        """The module's trainable parameters, detached: the current ``w``."""
        return {n: p.detach() for n, p in self.module.named_parameters() if p.requires_grad}

    def train_loss(self, params: Params, hyper: Params, batch: Batch) -> Tensor:
        """``loss(module_params(x'), y') + regularizer(params, hyper)``, pure in both trees."""
        x, y = batch if self.transform is None else self.transform(batch, hyper)
        out = torch.func.functional_call(self.module, params, (x,))
        value = self.loss(out, y)
        if self.regularizer is not None:
            value = value + self.regularizer(params, hyper)
        return value

    def val_loss(self, params: Params, batch: Batch) -> Tensor:
        """The validation loss of ``params`` on ``batch`` (no transform, no regulariser)."""
        out = torch.func.functional_call(self.module, params, (batch[0],))
        return self.validation_loss(out, batch[1])

    def hypergradient(
        self, train: Batch, val: Batch, *, method: Method | None = None
    ) -> tuple[Params, HopInfo]:
        """``dF/dhyper`` at the module's current parameters, taken as the inner optimum.

        ``F`` (the validation loss) does not read the hyperparameters, so the hypergradient is
        the best-response product ``v^T dw*/dhyper`` with ``v = dF/dw``.

        A random ``transform`` sees the same random draws in every evaluation of the training
        loss within this call: a seed is drawn once from the global generator and each
        evaluation runs under :func:`torch.random.fork_rng` seeded with it. Without that, the
        two sides of a finite-difference mixed product (DARTS, SAMA) would difference two
        different augmentations, an error far larger than the product itself. Successive
        calls draw fresh seeds, and a fixed global seed makes them reproducible.
        """
        train, val = check_batch("train", train), check_batch("val", val)
        check_method("hypergradient", method)
        method = cg(50, 1e-10) if method is None else method
        w, lam = self.params(), _tree.detach(self.hyper)
        w_ = _tree.leaves(w)
        v = _tree.fill_none(
            torch.autograd.grad(self.val_loss(w_, val), list(w_.values()), allow_unused=True), w_
        )
        seed = _rng.draw_seed() if self.transform is not None else None

        def inner(p: Params, h: Params) -> Tensor:
            with _rng.same_draws(seed):
                return self.train_loss(p, h, train)

        result = method(inner, w, lam, _tree.detach(v))
        return result.vjp, result.info

    def train_inner(self, optimizer: torch.optim.Optimizer, train: Batch, steps: int) -> None:
        """``steps`` calls of ``optimizer.step(closure)`` on the training loss, hyper fixed."""
        hyper = _tree.detach(self.hyper)
        params: Params = dict(self.module.named_parameters())

        def closure() -> float:
            optimizer.zero_grad()
            value = self.train_loss(params, hyper, train)
            value.backward()
            return float(value.detach())

        for _ in range(steps):
            optimizer.step(closure)

    def _record(self, history: History, train: Batch, val: Batch) -> None:
        with torch.no_grad():
            w, hyper = self.params(), _tree.detach(self.hyper)
            history.val_loss.append(float(self.val_loss(w, val)))
            history.train_loss.append(float(self.train_loss(w, hyper, train)))

    def fit(
        self,
        train: Batch,
        val: Batch,
        *,
        outer_steps: int = 20,
        inner_steps: int = 50,
        method: Method | None = None,
        inner_optimizer: OptimizerFactory = _default_inner_optimizer,
        hyper_lr: float = 0.05,
        hyper_optimizer: OptimizerFactory | None = None,
        progress: bool | None = None,
    ) -> History:
        """Alternate ``inner_steps`` optimizer steps on the module with one hyper step.

        Args:
            train: ``(inputs, targets)`` tensors of the inner (training) loss; inner training
                is full-batch.
            val: ``(inputs, targets)`` tensors of the outer (validation) loss.
            outer_steps: hypergradient steps.
            inner_steps: ``optimizer.step(closure)`` calls per round of inner training. The
                module's parameters and the optimizer state carry over between rounds (warm
                start), so later rounds start near the previous optimum.
            method: a hypergradient method; default ``cg(maxiter=50, tol=1e-10)``.
            inner_optimizer: ``params -> torch.optim.Optimizer``; default Adam, lr 1e-2.
            hyper_lr: learning rate of the default hyper optimizer (Adam).
            hyper_optimizer: ``hyper tensors -> torch.optim.Optimizer`` replacing the default.
            progress: ``True`` shows a tqdm progress bar and raises ``ImportError`` when tqdm
                is missing (``pip install 'ziggurat[progress]'``); ``None`` (the default) shows
                the bar when tqdm is installed and otherwise prints one line
                ``hpo step i/n: val_loss x`` to stderr every ``max(1, outer_steps // 10)``
                steps; ``False`` reports nothing.

        Returns:
            The :class:`History`; the module and :attr:`hyper` hold the final values.
        """
        train, val = check_batch("train", train), check_batch("val", val)
        _checks.int_at_least("fit outer_steps", outer_steps, 1)
        _checks.int_at_least("fit inner_steps", inner_steps, 1)
        _checks.positive("fit hyper_lr", hyper_lr)
        check_method("fit", method)
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        inner_opt = build_optimizer("inner_optimizer", inner_optimizer, trainable, "the module's")
        hypers = list(self.hyper.values())
        outer_opt = (
            torch.optim.Adam(hypers, lr=hyper_lr)
            if hyper_optimizer is None
            else build_optimizer("hyper_optimizer", hyper_optimizer, hypers, "HyperModel.hyper")
        )
        history = History()
        steps = progress_steps(
            outer_steps, progress, history
        )  # a missing tqdm fails before training
        for _ in steps:
            self.train_inner(inner_opt, train, inner_steps)
            self._record(history, train, val)
            grad, info = self.hypergradient(train, val, method=method)
            history.hyper_norm.append(float(_tree.norm(_tree.detach(self.hyper))))
            history.hypergrad_norm.append(float(_tree.norm(grad)))
            history.iterations.append(info.iterations)
            history.residual.append(info.residual)
            outer_opt.zero_grad()
            for name, tensor in self.hyper.items():
                tensor.grad = grad[name].to(tensor.dtype)
            outer_opt.step()
        self.train_inner(inner_opt, train, inner_steps)
        self._record(history, train, val)
        return history
