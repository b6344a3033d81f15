"""A version-2 checkpoint written by the release that introduced the format still loads, is
written back entry for entry, and continues bit-exactly (``fixtures/checkpoint_v2.pt``, made
by ``checkpoint_v2_program.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from checkpoint_v2_program import CONTINUE, SAVED_AT, build, parameters
from ziggurat.engine import _checkpoint

FIXTURES = Path(__file__).parent / "fixtures"


def assert_identical(a: Any, b: Any, where: str = "state") -> None:
    """Equal containers, bit-identical tensors (dtype and shape included)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict) and where.endswith("['config']"):
        # a record of the options, not read on loading: options added since keep their defaults
        assert set(b) <= set(a), f"{where}: saved options {sorted(set(b) - set(a))} are gone"
        for k in b:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_version_two_fixture_is_written_back_entry_for_entry() -> None:
    saved = _checkpoint.read_checkpoint(str(FIXTURES / "checkpoint_v2.pt"))
    assert saved["version"] == 2
    engine = build(SAVED_AT)
    engine.load(str(FIXTURES / "checkpoint_v2.pt"))
    assert engine.cls_cg.at_inner_loop_boundary is False  # an open accumulation window
    assert_identical(engine.checkpoint_state(), saved)


def test_version_two_fixture_continues_bit_exactly() -> None:
    engine = build(SAVED_AT + CONTINUE)
    engine.load(str(FIXTURES / "checkpoint_v2.pt"))
    engine.run()
    want = torch.load(FIXTURES / "checkpoint_v2_continued.pt", weights_only=True)
    assert_identical(parameters(engine), want)
