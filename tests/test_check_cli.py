"""``ziggurat check`` end to end: a subprocess, every method row, figures as documented."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ziggurat._verification import check_methods

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "hypergradients.md"

Table = dict[str, dict[str, list[str]]]  # block letter -> method -> figures (as printed)


FIGURE = re.compile(r"^([-+0-9.e]+|nan|yes|no)$")


def parse(text: str) -> Table:
    """The blocks ``(a)``...``(d)`` of a ``check`` print-out: method -> the printed figures.

    Method names may contain spaces (``reinforce(8, none)``); the figures are the trailing
    fields that are numbers (or ``nan``, ``yes``, ``no``).
    """
    tables: Table = {}
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        letter = re.match(r"\(([a-z])\)", lines[0])
        assert letter, lines[0]
        dash = next(i for i, line in enumerate(lines) if set(line) == {"-"})
        rows = {}
        for line in lines[dash + 1 :]:
            fields = line.split()
            k = len(fields)
            while k > 0 and FIGURE.match(fields[k - 1]):
                k -= 1
            rows[" ".join(fields[:k])] = fields[k:]
        tables[letter.group(1)] = rows
    return tables


def documented() -> Table:
    """The print-out quoted under "Measured error" in ``docs/hypergradients.md``."""
    text = DOC.read_text()
    section = text.split("## Measured error", 1)[1]
    block = section.split("```", 2)[1]
    return parse(block.split("\n", 1)[1])


@pytest.fixture(scope="module")
def run() -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "ziggurat.cli", "check"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_exits_zero_with_every_block(run) -> None:
    assert run.returncode == 0, run.stderr
    assert sorted(parse(run.stdout)) == ["a", "b", "c", "d"]
    assert run.stdout.count("cost units: G = ") == 3


def test_every_method_has_a_row(run) -> None:
    tables = parse(run.stdout)
    implicit = list(check_methods((1.0, 2.0)))
    assert list(tables["a"]) == implicit
    assert list(tables["b"]) == [*implicit, "cg(tol=1e-10)+GN", "fixed_point(tol=1e-10)+GN"]
    assert list(tables["c"]) == [
        "cg(tol=1e-10)",
        "cg(tol=1e-10)+GN",
        "stochastic(1x32)",
        "stochastic(16x32)",
        "darts",
    ]
    assert list(tables["d"]) == [
        "reinforce(8, none)",
        "reinforce(8, constant(5))",
        "reinforce(8, leave-one-out)",
    ]
    for letter in "abc":
        for name, figures in tables[letter].items():
            g, h = float(figures[-2]), float(figures[-1])
            assert g >= 0 and h >= 0 and math.isfinite(g) and math.isfinite(h), name


def close(got: str, doc: str, rel: float, floor: float) -> bool:
    """Equal to ``rel`` relative, or both below ``floor`` (rounding-level figures)."""
    a, b = float(got), float(doc)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return max(abs(a), abs(b)) < floor or abs(a - b) <= rel * abs(b)


def near(got: str, doc: str, tol: float) -> bool:
    a, b = float(got), float(doc)
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def test_figures_match_docs_hypergradients_md(run) -> None:
    """Errors, cosines, norm ratios, iterations and residuals are deterministic at seed 0:
    the documented table must be today's output (timings and cost columns excluded)."""
    got, doc = parse(run.stdout), documented()
    assert list(got) == list(doc)
    for letter in "abc":
        assert list(got[letter]) == list(doc[letter]), letter
        for name, g in got[letter].items():
            d = doc[letter][name]
            where = f"({letter}) {name}"
            assert close(g[0], d[0], 0.02, 1e-8), where  # rel. error
            assert near(g[1], d[1], 2e-5), where  # cosine
            assert close(g[2], d[2], 2e-3, 0.0), where  # norm ratio
            assert g[3] == d[3], where  # iterations
            assert close(g[4], d[4], 0.02, 1e-8), where  # residual
    assert list(got["d"]) == list(doc["d"])
    for name, g in got["d"].items():
        d = doc["d"][name]
        for i in range(3):  # error of the mean, standard error, max |z|
            assert close(g[i], d[i], 0.02, 0.0), (name, i)
        assert g[3] == d[3] == "yes", name


def test_reinforce_rows_are_unbiased_and_baselines_help(run) -> None:
    rows = parse(run.stdout)["d"]
    err = {name: float(f[0]) for name, f in rows.items()}
    se = {name: float(f[1]) for name, f in rows.items()}
    for name in rows:
        assert err[name] < 3.5 * se[name], name
    assert se["reinforce(8, leave-one-out)"] < 0.5 * se["reinforce(8, none)"]
    assert se["reinforce(8, constant(5))"] < 0.5 * se["reinforce(8, none)"]


def test_a_closed_pipe_is_not_an_error() -> None:
    """``ziggurat check | head -3``: the reader leaves before the table is written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "ziggurat.cli", "check"]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # nobody reads: the print raises BrokenPipeError
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err
