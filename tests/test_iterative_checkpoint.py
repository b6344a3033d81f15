"""Checkpointed unrolling of an ``IterativeProblem`` (``Config(checkpoint_segments=...)``)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from _modules import Vec
from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem, IterativeProblem

D = torch.float64
N = 4


OPTIMIZERS = {
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.05),
}


def program(
    segments,
    opt: str = "sgd-momentum",
    steps: int = 7,
    accum: int = 1,
    clip=0.0,
    read: str = "forward",
):
    """MAML-style: the inner loop starts at the upper level's parameters (live) and its loss
    reads them too, draws noise from the global RNG, and changes batch every step; two inner
    loops. The lower loss reads its weights as ``self.forward()`` or, with ``read="module"``,
    as ``self.module()``. Returns the upper level's two gradients and the engine."""
    torch.manual_seed(0)
    a = torch.randn(N, N, dtype=D)
    a = a @ a.T / N + torch.eye(N, dtype=D)
    grads: list[torch.Tensor] = []

    class Upper(ImplicitProblem):
        def training_step(self, batch):
            return 0.5 * (self.lower() - 1.0).pow(2).sum() + 0.1 * self.module().pow(2).sum()

        def grad_callback(self):
            grads.append(self.module.value.grad.clone())

    class Lower(IterativeProblem):
        def on_inner_loop_start(self):
            self.params = dict(self.upper.module.named_parameters())

        def training_step(self, batch):
            w = self.forward() if read == "forward" else self.module()
            noise = 0.01 * torch.randn(N, dtype=D)
            return 0.5 * w @ a @ w - w @ (torch.tanh(self.upper()) + batch + noise) + w.pow(4).sum()

    up, low = Vec(torch.tensor([0.5, -0.3, 0.2, 0.1], dtype=D)), Vec(torch.zeros(N, dtype=D))
    upper = Upper(
        name="upper",
        module=up,
        optimizer=torch.optim.SGD(up.parameters(), lr=0.1),
        train_data_loader=[torch.zeros(1)],
    )
    data = [torch.randn(N, dtype=D, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    config = Config(
        unroll_steps=steps,
        checkpoint_segments=segments,
        gradient_accumulation=accum,
        gradient_clipping=clip,
    )
    lower = Lower(
        name="lower",
        module=low,
        optimizer=OPTIMIZERS[opt](low.parameters()),
        train_data_loader=data,
        config=config,
    )
    engine = Engine(
        [upper, lower],
        EngineConfig(train_iters=2 * steps * accum, valid_step=0),
        {"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    )
    torch.manual_seed(1)
    engine.run()
    return torch.stack(grads), engine


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("accum,clip", [(1, 0.0), (2, 0.5)], ids=["plain", "accum-clip"])
def test_checkpointed_unrolling_equals_plain_unrolling(opt: str, accum: int, clip: float) -> None:
    """Both upper gradients, and the parameters both levels end with, equal plain unrolling's
    (float64) for every segment count, including one segment and one per update."""
    plain, plain_engine = program(None, opt, accum=accum, clip=clip)
    assert plain.shape == (2, N) and float(plain.abs().max()) > 0.1
    for segments in ("sqrt", 1, 3, 7):
        got, engine = program(segments, opt, accum=accum, clip=clip)
        torch.testing.assert_close(got, plain, atol=1e-12, rtol=0, msg=str(segments))
        for name in ("upper", "lower"):
            torch.testing.assert_close(
                engine.problem_by_name(name).module.value.detach(),
                plain_engine.problem_by_name(name).module.value.detach(),
                atol=1e-12,
                rtol=0,
            )


def test_checkpointed_unrolling_with_module_calls_equals_plain_unrolling() -> None:
    """A loss that calls ``self.module()`` is replayed on the segment's iterate too: both upper
    gradients equal plain unrolling of the ``self.forward()`` form (float64)."""
    plain, _ = program(None, "adam", accum=2, clip=0.5)
    assert float(plain.abs().max()) > 0.1
    for segments in (None, "sqrt", 3):
        got, _ = program(segments, "adam", accum=2, clip=0.5, read="module")
        torch.testing.assert_close(got, plain, atol=1e-12, rtol=0, msg=str(segments))


def test_the_inner_gradient_is_with_respect_to_the_iterate_only() -> None:
    """The loop starts at the upper parameters ``u`` and its loss ``|w|^2/2 - w.u`` also reads
    ``u``: each step is ``w <- w - lr (w - u)`` (the partial derivative in ``w``), so
    ``w_T = u`` exactly and the upper gradient of ``|w_T - 1|^2 / 2`` is ``u - 1``. Taking the
    gradient with respect to the tensor ``u`` itself at the first step (``w`` is ``u`` there)
    would have added ``-w = -u`` to it."""
    seen: list[torch.Tensor] = []

    class Upper(ImplicitProblem):
        def training_step(self, batch):
            return 0.5 * (self.lower() - 1.0).pow(2).sum()

        def grad_callback(self):
            seen.append(self.module.value.grad.clone())

    class Lower(IterativeProblem):
        def on_inner_loop_start(self):
            self.params = dict(self.upper.module.named_parameters())

        def training_step(self, batch):
            w = self.forward()
            return 0.5 * w.pow(2).sum() - w @ self.upper()

    for segments in (None, 2):
        seen.clear()
        u0 = torch.tensor([0.5, -2.0, 3.0], dtype=D)
        up, low = Vec(u0), Vec(torch.zeros(3, dtype=D))
        upper = Upper(name="upper", module=up, optimizer=torch.optim.SGD(up.parameters(), lr=0.0))
        lower = Lower(
            name="lower",
            module=low,
            optimizer=torch.optim.SGD(low.parameters(), lr=0.3),
            config=Config(unroll_steps=4, checkpoint_segments=segments),
        )
        for p in (upper, lower):
            p.train_data_loader = [torch.zeros(1)]
        Engine(
            [upper, lower],
            EngineConfig(train_iters=4, valid_step=0),
            {"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
        ).run()
        torch.testing.assert_close(seen[0], u0 - 1.0, atol=1e-12, rtol=0)


def _mlp_program(segments, steps: int) -> Engine:
    """An unrolled MLP on a batch of 256, stopped one step before its inner loop ends."""

    class Upper(ImplicitProblem):
        def training_step(self, batch):
            return self.lower(batch).pow(2).mean()

    class Lower(IterativeProblem):
        def training_step(self, batch):
            return (self(batch) - self.upper.module.value.sum()).pow(2).mean()

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1)).to(D)
    up = Vec(torch.zeros(2, dtype=D))
    x = torch.randn(256, 8, dtype=D)
    upper = Upper(name="upper", module=up, optimizer=torch.optim.SGD(up.parameters(), lr=0.1))
    lower = Lower(
        name="lower",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9),
        config=Config(unroll_steps=steps, checkpoint_segments=segments),
    )
    for p in (upper, lower):
        p.train_data_loader = [x]
    return Engine(
        [upper, lower],
        EngineConfig(train_iters=steps - 1, valid_step=0),
        {"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    )


class _Held:
    """A saved tensor, boxed so that it lives exactly as long as the graph that saved it."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


def _held_bytes(engine: Engine) -> int:
    """Bytes of the tensors autograd has saved for backward and still holds when ``engine``
    finishes (the inner loop is not over, so its graph is alive)."""
    boxes: weakref.WeakSet[_Held] = weakref.WeakSet()

    def pack(t: torch.Tensor) -> _Held:
        box = _Held(t)
        boxes.add(box)
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.t):
        # what run() does; run() itself refuses a run in which the upper level never steps
        for step in range(1, engine.config.train_iters + 1):
            engine.global_step = step
            engine.train_step()
    gc.collect()
    return sum(b.t.numel() * b.t.element_size() for b in boxes)


def test_checkpointed_unrolling_keeps_sqrt_t_states_instead_of_t_graphs() -> None:
    """T = 64 steps of an 8-64-1 MLP on 256 rows: plain unrolling keeps every step's graph
    (63 steps here); 8 segments keep 8 start states, whose size does not grow with T."""
    plain = _held_bytes(_mlp_program(None, 64))
    one_step = _held_bytes(_mlp_program(None, 2))
    checkpointed = _held_bytes(_mlp_program("sqrt", 64))
    assert plain > 40 * one_step
    assert checkpointed < plain / 10
    assert checkpointed < 3 * one_step


def test_bad_options_and_combinations_are_errors() -> None:
    with pytest.raises(ValueError, match=r"checkpoint_segments must be None, 'sqrt' or an int"):
        Config(checkpoint_segments=0)
    with pytest.raises(ValueError, match=r"checkpoint_segments must be None, 'sqrt' or an int"):
        Config(checkpoint_segments="half")
    engine = _mlp_program("sqrt", 4)
    engine.config.roll_back = True
    with pytest.raises(ValueError, match="'lower': checkpoint_segments cannot be combined"):
        engine.lower.initialize(engine)


def test_a_context_modified_in_place_before_differentiation_is_reported() -> None:
    """The upper level changes its own parameters in place before its loss is differentiated:
    the lower level's segments read them, so replaying would use other values."""
    engine = _mlp_program(2, 4)
    engine.config.train_iters = 4
    upper = engine.upper
    original = type(upper).training_step

    def meddling(self, batch):
        loss = original(self, batch)
        with torch.no_grad():
            self.module.value.add_(1.0)
        return loss

    type(upper).training_step = meddling
    with pytest.raises(RuntimeError, match="modified in place between the inner loop"):
        engine.run()


def test_finished_segments_are_freed_without_the_cyclic_collector(monkeypatch) -> None:
    """Three inner loops of 16 steps in 4 segments, the cyclic garbage collector off: once an
    upper step has differentiated through a loop, its segments' states are freed by reference
    counting (a plan that kept its outputs formed a cycle through their autograd node, and
    the states of every loop piled up until a collection)."""
    from ziggurat.problems import _segments

    ends: list[weakref.ref] = []
    close = _segments.close

    def recording(plan, start_w, start_state):
        w, state = close(plan, start_w, start_state)
        ends.extend(weakref.ref(t) for t in w.values())
        return w, state

    monkeypatch.setattr(_segments, "close", recording)
    engine = _mlp_program(4, 16)
    engine.config.train_iters = 3 * 16
    gc.collect()
    gc.disable()
    try:
        engine.run()
        alive = sum(r() is not None for r in ends)
    finally:
        gc.enable()
    per_segment = len(list(engine.lower.module.parameters()))
    assert len(ends) == 3 * 4 * per_segment
    assert alive <= 4 * per_segment  # at most the last loop's segments
