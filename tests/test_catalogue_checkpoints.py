"""Catalogue of checkpoints that do not fit the program, and of resume and checkpoint-directory
misuse.

A checkpoint that does not fit is refused with a ``ValueError`` before anything changes; where
a mismatch can only be found while loading (a data loader without ``len`` that got shorter),
the engine is put back as it was. Each case asserts the type, the words of the message and
that the engine is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from systems_program import build, tensors
from ziggurat import Engine
from ziggurat.configs import Config, EngineConfig
from ziggurat.problems import ImplicitProblem

D = torch.float64


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Rows:
    """A re-iterable loader without ``len``: ``n`` single-row batches, shuffled per epoch by
    the global generator (like an iterable dataset)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __iter__(self):
        for i in torch.randperm(len(self.x)).tolist():
            yield self.x[i : i + 1]


class Lower(ImplicitProblem):
    def training_step(self, batch):
        return (self.module(batch) - self.upper(batch)).pow(2).mean()


class Upper(ImplicitProblem):
    def training_step(self, batch):
        return self.lower(batch).pow(2).mean()


def program(upper_loader, lower_loader, train_iters: int = 3, **lower_config) -> Engine:
    torch.manual_seed(0)
    levels = []
    for cls, name, loader, config in (
        (Upper, "upper", upper_loader, {}),
        (Lower, "lower", lower_loader, lower_config),
    ):
        module = nn.Linear(2, 1).double()
        levels.append(
            cls(
                name,
                Config(**config),
                module=module,
                optimizer=torch.optim.Adam(module.parameters(), lr=0.01),
                train_data_loader=loader,
            )
        )
    config = EngineConfig(train_iters=train_iters, valid_step=0, logger_type="none")
    return Engine(levels, config, {"u2l": {"upper": ["lower"]}, "l2u": {"lower": ["upper"]}})


X = torch.randn(6, 2, dtype=D, generator=torch.Generator().manual_seed(1))


def batches(n: int, size: int = 1) -> DataLoader:
    return DataLoader(X[:n], batch_size=size, shuffle=True)


def _unchanged(engine: Engine):
    """What a refused load must leave as it was: tensors, counters, the next batches and the
    global RNG state."""
    return {
        "tensors": tensors(engine),
        "steps": (engine.global_step, *(p.count for p in engine.problems)),
        "data": [p.data_state() for p in engine.problems],
        "rng": torch.get_rng_state(),
    }


def _assert_unchanged(engine: Engine, before) -> None:
    after = _unchanged(engine)
    assert_same(after["tensors"], before["tensors"])
    assert after["steps"] == before["steps"]
    assert torch.equal(after["rng"], before["rng"])
    for live, saved in zip(after["data"], before["data"], strict=True):
        assert [(s["epoch"], s["position"]) for s in live] == [
            (s["epoch"], s["position"]) for s in saved
        ]


# ------------------------------------------------------------------------------ data loaders
def test_a_loader_that_got_shorter_is_refused_before_any_change(tmp_path: Path) -> None:
    saved = program(batches(6), batches(6), train_iters=4)
    saved.run()
    saved.save(str(tmp_path / "c.pt"))
    target = program(batches(6), batches(3), train_iters=4)  # lower: 3 batches per epoch now
    target.run()
    before = _unchanged(target)
    with pytest.raises(
        ValueError,
        match=r"problem 'lower', data loader 0: saved after batch 4 of epoch 0, but the loader "
        r"now has 3 batch\(es\) per epoch; resume with the data",
    ):
        target.load(str(tmp_path / "c.pt"))
    _assert_unchanged(target, before)


def test_a_loader_without_len_that_got_shorter_is_put_back_with_everything_else(
    tmp_path: Path,
) -> None:
    """The shorter loader is found only while loading: the upper level's loader (restored
    first) and the RNG state are put back, so the program continues as if nothing happened."""
    saved = program(Rows(X), Rows(X), train_iters=4)
    saved.run()
    saved.save(str(tmp_path / "c.pt"))
    target, twin = (program(Rows(X), Rows(X[:3]), train_iters=6) for _ in range(2))
    target.config.train_iters = twin.config.train_iters = 2
    torch.manual_seed(4)
    target.run()
    torch.manual_seed(4)
    twin.run()
    before = _unchanged(target)
    with pytest.raises(
        ValueError,
        match=r"problem 'lower': the checkpoint's data loader was saved after batch 4 of epoch "
        r"0, but the loader now ends after 3 batch\(es\)",
    ):
        target.load(str(tmp_path / "c.pt"))
    _assert_unchanged(target, before)
    assert target.upper.data_state()[0]["epoch"] == 0
    target.config.train_iters = twin.config.train_iters = 6
    torch.manual_seed(5)
    target.run()
    torch.manual_seed(5)
    twin.run()
    assert_same(tensors(target), tensors(twin))


def test_a_loader_that_draws_from_another_number_of_generators_is_refused(tmp_path) -> None:
    saved = program(batches(6), batches(6))
    saved.run()
    saved.save(str(tmp_path / "c.pt"))
    seeded = DataLoader(X, batch_size=1, shuffle=True, generator=torch.Generator().manual_seed(3))
    target = program(batches(6), seeded)
    with pytest.raises(
        ValueError,
        match=r"'lower', data loader 0: the loader drew its order from 0 torch.Generator\(s\) "
        r"when saved and from 1 now",
    ):
        target.load(str(tmp_path / "c.pt"))


def test_another_number_of_loaders_is_refused(tmp_path) -> None:
    saved = program(batches(6), batches(6))
    saved.run()
    saved.save(str(tmp_path / "c.pt"))
    target = program(batches(6), (batches(6), batches(6)))
    with pytest.raises(
        ValueError, match=r"'lower': saved with 1 data loader\(s\), this level has 2"
    ):
        target.load(str(tmp_path / "c.pt"))


# --------------------------------------------------------------------- saved tensors' shapes
def _edited(tmp_path: Path, edit) -> tuple[Engine, str]:
    """A checkpoint of ``systems_program`` after 6 steps (CG warm starts, Adam state), edited
    by ``edit(state)``, and a fresh engine to load it into."""
    engine = build(6)
    engine.run()
    path = tmp_path / "c.pt"
    engine.save(str(path))
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    return build(6), str(path)


def _lower(state):
    return state["problems"]["lower"]


def _set_warm_start(state, tree) -> None:
    entry = _lower(state)
    assert entry["warm_starts"], "cg_warm_start keeps the last solution"
    entry["warm_starts"][0][1] = tree


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            lambda s: _lower(s).update(grads={"weight": torch.zeros(3, 3)}),
            r"the saved gradients have other shapes than this level's parameters \(weight: "
            r"saved \(3, 3\), now \(1, 4\)\)",
        ),
        (
            lambda s: _lower(s).update(grads={"gamma": torch.zeros(1)}),
            r"the saved gradients name tensors this level does not have \(\['gamma'\]",
        ),
        (
            lambda s: _lower(s).update(last_grads={"bias": torch.zeros(2)}),
            r"the saved last-update gradients have other shapes .*bias: saved \(2,\), now \(1,\)",
        ),
        (
            lambda s: _set_warm_start(s, {"weight": torch.zeros(4, 1), "bias": torch.zeros(1)}),
            r"the saved warm start of hop \('upper', 0, 1\) have other shapes .*weight: saved "
            r"\(4, 1\), now \(1, 4\)",
        ),
        (
            lambda s: _lower(s).update(kind="IterativeProblem"),
            r"saved as IterativeProblem, now Lower",
        ),
        (
            lambda s: _lower(s).pop("ready"),
            r"the entry lacks \['ready'\]; it is damaged or hand-edited",
        ),
    ],
    ids=["grad-shape", "grad-name", "last-grads", "warm-start", "kind", "missing-key"],
)
def test_saved_tensors_that_do_not_fit_the_parameters_are_refused_before_any_change(
    tmp_path, edit, words
) -> None:
    target, path = _edited(tmp_path, edit)
    target.config.train_iters = 2
    target.run()
    before = _unchanged(target)
    with pytest.raises(ValueError, match=r"checkpoint '.*c\.pt', problem 'lower': .*" + words):
        target.load(path)
    _assert_unchanged(target, before)


def test_an_open_accumulation_window_under_another_accumulation_is_refused(tmp_path) -> None:
    saved = program(batches(6), batches(6), train_iters=3, gradient_accumulation=2)
    saved.run()  # lower: 3 steps, the second window is open with one batch
    saved.save(str(tmp_path / "c.pt"))
    target = program(batches(6), batches(6), train_iters=3, gradient_accumulation=3)
    with pytest.raises(
        ValueError,
        match=r"'lower': saved inside a gradient-accumulation window \(1 of 2 batches\), this "
        r"level has gradient_accumulation=3; resume with gradient_accumulation=2",
    ):
        target.load(str(tmp_path / "c.pt"))
    program(batches(6), batches(6), train_iters=3, gradient_accumulation=2).load(
        str(tmp_path / "c.pt")
    )


# ------------------------------------------------------------------------ unrolled levels
def _unrolled(edit, tmp_path: Path):
    from _distributed_programs import build as build_program

    engine = build_program("unrolled", 0, 1, "default", 6)
    engine.run()
    path = tmp_path / "u.pt"
    engine.save(str(path))
    state = torch.load(path, weights_only=True)
    edit(state["problems"]["lower"]["iterative"])
    torch.save(state, path)
    return build_program("unrolled", 0, 1, "default", 6), str(path)


def _rename(tree: dict, old: str, new: str) -> None:
    tree[new] = tree.pop(old)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            lambda s: _rename(s["params"], "weight", "w"),
            r"the saved unrolled parameters \['bias', 'w'\] are not this level's "
            r"\['bias', 'weight'\]",
        ),
        (
            lambda s: s["params"].update(weight=torch.zeros(2, 2, dtype=D)),
            r"the saved unrolled parameters have other shapes .*weight: saved \(2, 2\)",
        ),
        (
            lambda s: next(iter(s["opt_buffers"].values())).update(bias=torch.zeros(3, dtype=D)),
            r"the saved optimizer buffers '.*' have other shapes .*bias: saved \(3,\)",
        ),
    ],
    ids=["names", "shapes", "buffers"],
)
def test_unrolled_state_that_does_not_fit_is_refused_before_any_change(
    tmp_path, edit, words
) -> None:
    target, path = _unrolled(edit, tmp_path)
    before = tensors(target)
    with pytest.raises(ValueError, match=r"problem 'lower': " + words):
        target.load(path)
    assert_same(tensors(target), before)
    assert target.global_step == 0
