"""The release surface: one version, and a one-line message for every missing extra."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

import ziggurat
from ziggurat import MissingExtraError, require_extra
from ziggurat.cli import main
from ziggurat.configs import EngineConfig
from ziggurat.examples import EXAMPLES

ROOT = Path(__file__).resolve().parents[1]


def test_version_comes_from_one_place() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'(?m)^dynamic = \["version"\]', pyproject)
    assert not re.search(r'(?m)^version\s*=\s*"', pyproject)  # no literal version string
    assert re.search(r'(?m)^version = \{attr = "ziggurat.__version__"\}', pyproject)
    assert importlib.metadata.version("ziggurat") == ziggurat.__version__


def test_changelog_has_no_duplicate_sections() -> None:
    """Keep a Changelog: each release heading once, each change type once per release."""
    releases: list[str] = []
    kinds: dict[str, list[str]] = {}
    for line in (ROOT / "CHANGELOG.md").read_text().splitlines():
        if line.startswith("## "):
            releases.append(line)
            kinds[line] = []
        elif line.startswith("### "):
            assert releases, f"{line!r} before any release heading"
            kinds[releases[-1]].append(line)
    assert releases and releases[0] == "## [Unreleased]"
    assert len(set(releases)) == len(releases), releases
    allowed = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    for release, found in kinds.items():
        assert len(set(found)) == len(found), f"{release}: {found}"
        assert {k.removeprefix("### ") for k in found} <= allowed, f"{release}: {found}"


def _block(monkeypatch: pytest.MonkeyPatch, *roots: str) -> None:
    """Make ``import root`` (and its submodules) fail as if the package were not installed."""
    for name in list(sys.modules):
        if name.partition(".")[0] in roots or name in roots:
            monkeypatch.setitem(sys.modules, name, None)
    for root in roots:
        monkeypatch.setitem(sys.modules, root, None)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_require_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _block(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError) as info:
        require_extra("matplotlib.figure", "drawing", extra="plot")
    assert str(info.value) == (
        "drawing needs matplotlib, which is not installed; pip install 'ziggurat[plot]'"
    )
    assert isinstance(info.value, ImportError)  # `except ImportError` still catches it


@pytest.mark.parametrize(
    ("backend", "module", "extra"),
    [
        ("tensorboard", "torch.utils.tensorboard", "tensorboard"),
        ("wandb", "wandb", "wandb"),
        ("mlflow", "mlflow", "mlflow"),
    ],
)
def test_a_missing_logger_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, backend: str, module: str, extra: str
) -> None:
    from ziggurat.logging import logger

    monkeypatch.chdir(tmp_path)
    _block(monkeypatch, module)
    with pytest.raises(MissingExtraError, match=rf"pip install 'ziggurat\[{extra}\]'$") as info:
        logger(backend)
    _one_line(str(info.value))
    assert EngineConfig(logger_type=backend).logger_type == backend


def test_demo_without_scikit_learn_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _block(monkeypatch, "sklearn")
    assert main(["demo", "hpo", "--quiet", "--steps", "1"]) == 2
    out = capsys.readouterr()
    line = _one_line(out.err)
    assert line == (
        "ziggurat demo: error: ziggurat.datasets.breast_cancer needs scikit-learn, which is not "
        "installed; pip install 'ziggurat[examples]'"
    )


def test_demo_plot_without_matplotlib_fails_before_training(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _block(monkeypatch, "matplotlib")
    trained = []
    monkeypatch.setattr("ziggurat.examples.reweight.run", lambda **kw: trained.append(kw))
    assert main(["demo", "--quiet", "--plot", str(tmp_path / "out.png")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.endswith("pip install 'ziggurat[plot]'"), line
    assert trained == [] and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_without_its_extras_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Without scikit-learn and tqdm, each demo (with its progress bar) stops on one line."""
    _block(monkeypatch, "sklearn", "tqdm")
    # enough steps for every example's own check (the transformer's is one upper step, 40):
    # the missing package stops it before any training
    assert main(["demo", name, "--steps", "100"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("ziggurat demo: error: ")
    assert "pip install 'ziggurat[" in line, line
