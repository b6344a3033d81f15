"""``ziggurat demo NAME --plot FILE`` and the documentation's figures script."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ziggurat.cli import main
from ziggurat.examples import EXAMPLES
from ziggurat.examples.plots import DPI, PLOTTERS, SIZE

image = pytest.importorskip("matplotlib.image", reason="install ziggurat[plot]")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _check_figure(path: Path, size: tuple[int, int]) -> None:
    """A PNG of ``size`` (width, height) pixels with drawn content, not a blank canvas."""
    pixels = image.imread(path)
    assert (pixels.shape[1], pixels.shape[0]) == size
    rgb = pixels[..., :3]
    ink = (rgb.min(axis=2) < 0.9).mean()  # share of pixels that are not (near) white
    colour = (rgb.max(axis=2) - rgb.min(axis=2) > 0.2).mean()  # share of coloured pixels
    assert ink > 0.03, f"{path.name}: only {ink:.1%} of the pixels are drawn"
    assert colour > 0.005, f"{path.name}: no data drawn in colour ({colour:.2%})"


def test_demo_plot_writes_the_reweight_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    assert main(["demo", "reweight", "--steps", "20", "--quiet", "--plot", str(out)]) == 0
    assert f"figure: {out}" in capsys.readouterr().out
    _check_figure(out, (round(SIZE[0] * DPI), round(SIZE[1] * DPI)))


def test_a_blank_figure_fails_the_check(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    blank = tmp_path / "blank.png"
    Figure(figsize=SIZE).savefig(blank, dpi=DPI)
    with pytest.raises(AssertionError, match="pixels are drawn"):
        _check_figure(blank, (1000, 400))


def test_every_example_has_a_figure() -> None:
    assert set(PLOTTERS) == set(EXAMPLES)


def test_the_figures_script_draws_every_example(tmp_path: Path) -> None:
    """``python -m docs.figures --fast``: every example runs and its figure is drawn."""
    from docs.figures import generate, table_path

    written = generate(out=tmp_path, fast=True)
    assert [p.name for p in written] == [f"{name}.png" for name in EXAMPLES]
    for name, path in zip(EXAMPLES, written, strict=True):
        _check_figure(path, tuple(int(v) for v in image.imread(path).shape[1::-1]))
        table = table_path(name, tmp_path).read_text().splitlines()
        assert table[0].startswith(f"{name}: ") and table[1].startswith("metric")


def test_docs_show_only_figures_the_script_writes() -> None:
    """Every figure a page shows is committed and written by the script, and every example's
    figure is shown on its tutorial page; committed figures stay small."""
    from docs.figures import OUT, figure_path

    shown = set()
    for page in DOCS.rglob("*.md"):
        for ref in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text()):
            shown.add((page.parent / ref).resolve())
    written = {figure_path(name).resolve() for name in EXAMPLES}
    assert shown, "no page shows a figure"
    assert shown <= written, sorted(str(p) for p in shown - written)
    for name in EXAMPLES:
        page = (DOCS / "tutorials" / f"{name}.md").read_text()
        assert f"../figures/{name}.png" in page, f"{name}.md does not show its figure"
        assert f'--8<-- "docs/figures/{name}.txt"' in page, f"{name}.md does not show its table"
        assert (DOCS / "figures" / f"{name}.txt").is_file(), name
    for path in written:
        assert path.is_file() and path.parent == OUT.resolve(), path
        assert path.stat().st_size < 150_000, f"{path.name} is {path.stat().st_size} bytes"
