"""Catalogue of checkpoints that do not fit the program, and of resume and checkpoint-directory
misuse.

A checkpoint that does not fit is refused with a ``ValueError`` before anything changes; where
a mismatch can only be found while loading (a data loader without ``len`` that got shorter),
the engine is put back as it was. Each case asserts the type, the words of the message and
that the engine is unchanged.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
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


# ------------------------------------------------------------------------- resume, directories
RESUMES = """
import os, sys
from systems_program import build
root = sys.argv[1]
missing, empty, other = (os.path.join(root, n) for n in ("missing", "empty", "other"))
build(3, checkpoint_dir=missing, checkpoint_step=3, resume=True).run()
build(4, checkpoint_dir=missing, checkpoint_step=3, resume=True).run()
os.mkdir(empty)
build(2, checkpoint_dir=empty, resume=True).run()
os.mkdir(other)
open(os.path.join(other, "notes.txt"), "w").close()
build(2, checkpoint_dir=other, resume=True).run()
"""


def test_resume_says_on_the_default_console_what_it_loaded_or_why_it_found_nothing(tmp_path):
    """A new process with the default EngineConfig (console logger): the lines must reach
    stderr, which they did not when resuming ran before the console handler existed."""
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(here)])}
    done = subprocess.run(
        [sys.executable, "-c", RESUMES, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = [line.split("] ", 2)[1:] for line in done.stderr.splitlines() if "resume:" in line]
    missing, empty, other = (tmp_path / n for n in ("missing", "empty", "other"))
    assert lines == [
        [
            "[WARNING",
            f"resume: no checkpoint in {missing} (the directory did not exist (it is created "
            "now)); starting from scratch at global step 0",
        ],
        [
            "[INFO",
            f"resume: loaded {missing / 'step-000000003.pt'}, continuing at global step 3",
        ],
        [
            "[WARNING",
            f"resume: no checkpoint in {empty} (the directory is empty); starting from scratch "
            "at global step 0",
        ],
        [
            "[WARNING",
            f"resume: no checkpoint in {other} (the directory holds no step-*.pt file (it holds "
            "notes.txt)); starting from scratch at global step 0",
        ],
    ], done.stderr


def test_resume_without_a_directory_is_refused_when_configured() -> None:
    with pytest.raises(ValueError, match=r"EngineConfig resume=True needs checkpoint_dir"):
        EngineConfig(resume=True)


def test_the_directory_is_created_and_checked_when_the_run_starts(tmp_path) -> None:
    (tmp_path / "file").write_text("not a directory")
    engine = build(4, checkpoint_dir=str(tmp_path / "file" / "ckpt"), checkpoint_step=4)
    with pytest.raises(
        ValueError, match=r"EngineConfig checkpoint_dir='.*file/ckpt' cannot be created"
    ):
        engine.run()
    assert engine.global_step == 0  # before the first step, not at the first save
    later = tmp_path / "later"
    build(2, checkpoint_dir=str(later), checkpoint_step=4).run()
    assert later.is_dir() and list(later.iterdir()) == []  # no save yet; lock released


def _lock(directory: Path, pid: int, host: str | None = None) -> None:
    directory.mkdir(exist_ok=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01 00:00:00"}
    (directory / ".ziggurat.lock").write_text(json.dumps(owner))


def test_a_second_run_writing_the_same_directory_is_refused_naming_the_first(tmp_path) -> None:
    ckpt = tmp_path / "ckpt"

    class Nested(type(build(1))):
        def validation(self):  # while this run holds the directory, start another there
            build(2, checkpoint_dir=str(ckpt), checkpoint_step=1).run()

    first = build(2, checkpoint_dir=str(ckpt), checkpoint_step=1)
    first.__class__ = Nested
    first.config.valid_step = 1
    with pytest.raises(
        ValueError,
        match=rf"checkpoint_dir='{ckpt}' is in use by another run \(process {os.getpid()} on "
        rf"host '{socket.gethostname()}', started .*\): two runs writing one directory would "
        r"overwrite and delete each other's checkpoints",
    ):
        first.run()
    assert not (ckpt / ".ziggurat.lock").exists()  # the first run released it on its error


@pytest.mark.parametrize("host", [None, "elsewhere"], ids=["live-process", "other-host"])
def test_a_lock_of_a_live_process_or_another_host_is_respected(tmp_path, host) -> None:
    ckpt = tmp_path / "ckpt"
    _lock(ckpt, os.getppid(), host)
    engine = build(3, checkpoint_dir=str(ckpt), checkpoint_step=3)
    with pytest.raises(ValueError, match=rf"in use by another run \(process {os.getppid()} "):
        engine.run()
    assert engine.global_step == 0 and json.loads((ckpt / ".ziggurat.lock").read_text())


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ckpt = tmp_path / "ckpt"
    _lock(ckpt, gone.pid)
    with caplog.at_level("WARNING", logger="ziggurat"):
        build(3, checkpoint_dir=str(ckpt), checkpoint_step=3).run()
    assert (
        f"checkpoint_dir {ckpt}: taking over the lock of process {gone.pid} (started "
        "2026-01-01 00:00:00), which is no longer running" in caplog.text
    )
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-000000003.pt"]


def test_keep_last_deletes_older_checkpoints_but_never_the_new_one_or_other_files(
    tmp_path,
) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("notes.txt", "step-000000001.pt.bak", "best.pt"):
        (ckpt / name).write_text("mine")
    build(10, checkpoint_dir=str(ckpt), checkpoint_step=2, keep_last=2).run()
    kept = ["best.pt", "notes.txt", "step-000000001.pt.bak", "step-000000008.pt"]
    assert sorted(p.name for p in ckpt.iterdir()) == [*kept, "step-000000010.pt"]
    (ckpt / "step-000000100.pt").write_bytes((ckpt / "step-000000010.pt").read_bytes())
    build(2, checkpoint_dir=str(ckpt), checkpoint_step=2, keep_last=1).run()
    assert sorted(p.name for p in ckpt.iterdir()) == [*kept[:3], "step-000000002.pt"]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"keep_last": 0, "checkpoint_step": 1}, r"keep_last must be an integer >= 1, got 0"),
        ({"keep_last": 2.5, "checkpoint_step": 1}, r"keep_last must be an integer >= 1"),
        ({"keep_last": 2}, r"keep_last=2 prunes periodic checkpoints, but checkpoint_step=0"),
    ],
)
def test_keep_last_is_validated(tmp_path, options, words) -> None:
    with pytest.raises(ValueError, match=words):
        EngineConfig(checkpoint_dir=str(tmp_path), **options)


def test_a_fresh_run_beside_earlier_checkpoints_says_so(tmp_path, caplog) -> None:
    ckpt = tmp_path / "ckpt"
    build(3, checkpoint_dir=str(ckpt), checkpoint_step=3).run()
    with caplog.at_level("WARNING", logger="ziggurat"):
        build(2, checkpoint_dir=str(ckpt), checkpoint_step=3).run()
    assert (
        f"checkpoint_dir {ckpt} already holds 1 checkpoint(s), the latest step-000000003.pt, "
        "and resume=False: this run starts from scratch" in caplog.text
    )


def _directory_worker(rank: int, world: int, init_file: str, ckpt: str, out: str) -> None:
    """One rank: a DDP run with periodic checkpoints and ``keep_last=2``, then a run refused
    because another process holds the directory (every rank must raise, none may wait)."""
    import torch.distributed as dist

    from _distributed_programs import build as build_program

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        options = {"checkpoint_dir": ckpt, "checkpoint_step": 1, "logger_type": "none"}
        build_program("darts", rank, world, "ddp", train_iters=4, keep_last=2, **options).run()
        dist.barrier()
        if rank == 0:
            _lock(Path(ckpt), os.getppid())  # the test process: alive, on this host
        dist.barrier()
        refused = ""
        try:
            build_program("darts", rank, world, "ddp", train_iters=4, **options).run()
        except ValueError as error:
            refused = str(error)
        torch.save(refused, os.path.join(out, f"refused-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_under_data_parallelism_rank_zero_keeps_the_directory_and_every_rank_refuses(
    tmp_path,
) -> None:
    import torch.multiprocessing as mp

    ckpt = tmp_path / "ckpt"
    mp.spawn(
        _directory_worker,
        args=(2, str(tmp_path / "init"), str(ckpt), str(tmp_path)),
        nprocs=2,
    )
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == [".ziggurat.lock", "step-000000003.pt", "step-000000004.pt"]
    refused = [torch.load(tmp_path / f"refused-rank{r}.pt") for r in range(2)]
    words = rf"checkpoint_dir='{ckpt}' is in use by another run \(process {os.getpid()} on host"
    assert re.match(r"EngineConfig " + words, refused[0]), refused[0]
    assert re.match(r"rank 0: EngineConfig " + words, refused[1]), refused[1]


def test_the_keys_the_entry_check_requires_are_the_keys_a_level_writes() -> None:
    from ziggurat.problems._state import ENTRY_KEYS

    engine = build(2)
    assert [list(p.checkpoint_state()) for p in engine.problems] == [list(ENTRY_KEYS)] * 2
