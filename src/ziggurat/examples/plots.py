"""Figures of the worked examples: what each one learned, and its metric against the baseline.

``ziggurat demo NAME --plot FILE.png`` draws :func:`draw` of the example's
:class:`~ziggurat.examples.result.Result` (its ``arrays``). matplotlib is an optional
dependency (``pip install 'ziggurat[plot]'``); figures are drawn on a
:class:`matplotlib.figure.Figure`, never through ``pyplot``, so no window or global state is
involved.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ziggurat import require_extra
from ziggurat.examples.result import Result

OURS, BASELINE, OTHER = "#1f77b4", "#7f7f7f", "#d62728"
"""Colours: the multilevel program, the baseline, the marked samples (noisy, shifted)."""


def _bars(ax: Any, result: Result) -> None:
    """Each metric of ``result``: baseline and ours side by side."""
    rows = result.rows
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r.baseline for r in rows], 0.4, label="baseline", color=BASELINE)
    ax.bar(x + 0.2, [r.ours for r in rows], 0.4, label="ours", color=OURS)
    ax.set_xticks(x, [r.metric.replace(" vs ", "\nvs ") for r in rows], fontsize=8)
    ax.set_title("metrics")
    ax.legend(fontsize=8)


def _weights(ax: Any, arrays: dict[str, Any], title: str) -> None:
    """Histogram of learned per-sample weights, the marked samples against the others."""
    w, marked = np.asarray(arrays["weights"]), np.asarray(arrays["marked"], dtype=bool)
    bins = np.linspace(0.0, 1.0, 26)
    first, second = arrays["labels"]
    ax.hist(w[marked], bins, alpha=0.7, color=OTHER, label=f"{first} (mean {w[marked].mean():.2f})")
    ax.hist(
        w[~marked], bins, alpha=0.7, color=OURS, label=f"{second} (mean {w[~marked].mean():.2f})"
    )
    ax.set_xlabel("learned weight")
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend(fontsize=8)


def _curves(ax: Any, arrays: dict[str, Any]) -> None:
    """The metric during training, the program against the baseline."""
    for key, label, colour in (("baseline_curve", "baseline", BASELINE), ("curve", "ours", OURS)):
        curve = np.asarray(arrays[key])
        ax.plot(curve[:, 0], curve[:, 1], marker="o", markersize=3, label=label, color=colour)
    ax.set_xlabel("training step")
    ax.set_ylabel(arrays["metric"])
    ax.set_title(f"{arrays['metric']} during training")
    ax.legend(fontsize=8)


def _reweight(fig: Any, result: Result) -> None:
    left, right = fig.subplots(1, 2)
    _weights(left, result.arrays, "learned weights of training samples")
    _curves(right, result.arrays)


def _transformer(fig: Any, result: Result) -> None:
    left, right = fig.subplots(1, 2)
    _weights(left, result.arrays, "learned weights of training sequences")
    _bars(right, result)


def _three_level(fig: Any, result: Result) -> None:
    left, right = fig.subplots(1, 2)
    _weights(left, result.arrays, "learned weights of source samples")
    _curves(right, result.arrays)


def _hpo(fig: Any, result: Result) -> None:
    left, right = fig.subplots(1, 2)
    a = result.arrays
    decays = np.asarray(a["learned_decays"])
    left.bar(np.arange(len(decays)), decays, color=OURS, label="learned, per feature")
    left.axhline(a["best_decay"], color=BASELINE, linestyle="--", label="grid best, shared")
    left.set_yscale("log")
    left.set_xlabel("feature")
    left.set_ylabel("weight decay")
    left.set_title("per-feature weight decays")
    left.legend(fontsize=8)
    right.plot(a["grid"], a["grid_validation_loss"], marker="o", color=BASELINE, label="grid")
    right.axhline(
        a["learned_validation_loss"], color=OURS, linestyle="--", label="learned per feature"
    )
    right.set_xscale("log")
    right.set_xlabel("single weight decay")
    right.set_ylabel("validation loss")
    right.set_title("validation curve")
    right.legend(fontsize=8)


def _maml(fig: Any, result: Result) -> None:
    left, right = fig.subplots(1, 2)
    a = result.arrays
    left.plot(a["x"], a["truth"], color="black", linewidth=2, label="true task")
    colours = {"ours": OURS, "random init": OTHER, "joint": BASELINE}
    for name, y in a["fits"].items():
        left.plot(a["x"], y, color=colours.get(name), label=f"adapted from {name}")
    left.scatter(a["support_x"], a["support_y"], color="black", zorder=3, label="support points")
    left.set_xlabel("x")
    left.set_ylabel("y")
    left.set_title("fits after the inner SGD steps, one test task")
    left.legend(fontsize=7)
    _bars(right, result)


def _fewshot(fig: Any, result: Result) -> None:
    left, right = fig.subplots(1, 2)
    acc = result.arrays["accuracies"]
    names = list(acc)
    left.boxplot([np.asarray(acc[n]) for n in names], showmeans=True)
    left.set_xticks(np.arange(1, len(names) + 1), names)
    left.set_ylabel("accuracy per test task")
    left.set_title("meta-test accuracy after adaptation")
    _bars(right, result)


def _cell(ax: Any, edges: list[tuple[int, int]], ops: list[str]) -> None:
    """The derived cell as a graph: nodes on a line, each edge labelled with its operation."""
    nodes = sorted({n for edge in edges for n in edge})
    for n in nodes:
        ax.scatter([n], [0], s=900, color="white", edgecolors="black", zorder=3)
        ax.text(n, 0, str(n), ha="center", va="center", zorder=4)
    for (i, j), op in zip(edges, ops, strict=True):
        height = 0.35 * (j - i)
        ax.annotate(
            "",
            xy=(j, 0.05),
            xytext=(i, 0.05),
            arrowprops={"arrowstyle": "->", "connectionstyle": f"arc3,rad=-{0.25 * (j - i)}"},
        )
        ax.text((i + j) / 2, 0.08 + height, op, ha="center", fontsize=8, color=OURS)
    ax.set_xlim(min(nodes) - 0.5, max(nodes) + 0.5)
    ax.set_ylim(-0.5, 1.0)
    ax.axis("off")
    ax.set_title("derived cell (node 0: input; output: nodes 1 + 2)")


def _nas(fig: Any, result: Result) -> None:
    heat, cell, bars = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 1.0, 1.0]})
    a = result.arrays
    weights, ops = np.asarray(a["weights"]), list(a["ops"])
    edges = [tuple(e) for e in a["edges"]]
    image = heat.imshow(weights, cmap="Blues", vmin=0, aspect="auto")
    heat.set_xticks(np.arange(len(ops)), ops, rotation=45, ha="right", fontsize=7)
    heat.set_yticks(np.arange(len(edges)), [f"{i}->{j}" for i, j in edges])
    for row, op in enumerate(a["derived"]):
        heat.add_patch(_box(ops.index(op), row))
    heat.set_title("softmax(alpha) per edge")
    fig.colorbar(image, ax=heat, fraction=0.05)
    _cell(cell, edges, list(a["derived"]))
    labels = ["derived", *(f"random {k + 1}" for k in range(len(a["random_scores"])))]
    scores = [a["ours"], *a["random_scores"]]
    colours = [OURS, *([BASELINE] * len(a["random_scores"]))]
    bars.bar(np.arange(len(scores)), scores, color=colours)
    bars.set_xticks(np.arange(len(scores)), labels, rotation=30, fontsize=8)
    bars.set_ylim(0, 1)
    bars.set_ylabel("test accuracy after retraining")
    bars.set_title("derived cell against random cells")


def _box(col: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor=OTHER, linewidth=2)


PLOTTERS: dict[str, Callable[[Any, Result], None]] = {
    "reweight": _reweight,
    "hpo": _hpo,
    "maml": _maml,
    "fewshot": _fewshot,
    "three_level": _three_level,
    "nas": _nas,
    "transformer": _transformer,
}
"""Example name -> the function that draws its result on a figure."""

SIZE = (10.0, 4.0)
"""Figure size in inches; at :data:`DPI` the PNG is 1000 x 400 pixels."""
DPI = 100


def draw(name: str, result: Result, path: str | Path) -> Path:
    """Draw the figure of example ``name`` from its ``result`` and write it to ``path``.

    The format follows the file's suffix (``.png``, ``.svg``, ``.pdf``).

    Raises:
        ValueError: for an unknown example name.
        ziggurat.MissingExtraError: when matplotlib is not installed.
    """
    if name not in PLOTTERS:
        raise ValueError(f"no figure for example {name!r}; choose one of {', '.join(PLOTTERS)}")
    figure = require_extra("matplotlib.figure", "ziggurat demo --plot", extra="plot")
    fig = figure.Figure(figsize=SIZE if name != "nas" else (13.0, 4.0), layout="constrained")
    PLOTTERS[name](fig, result)
    fig.suptitle(result.name, fontsize=10)
    out = Path(path)
    fig.savefig(out, dpi=DPI)
    return out
