"""``ziggurat bench`` is wired to the benchmark script of the source checkout."""

from __future__ import annotations

from pathlib import Path

from ziggurat import cli

ROOT = Path(__file__).resolve().parents[1]


def test_bench_parses_its_options() -> None:
    args = cli.build_parser().parse_args(["bench", "--betty", "/x/python", "--full"])
    assert args.func is cli._bench
    assert (args.betty, args.full) == ("/x/python", True)
    assert not cli.build_parser().parse_args(["bench"]).full


def test_bench_runs_the_module_of_the_checkout_it_is_started_in(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert cli._bench_checkout() == ROOT
    assert (ROOT / "benchmarks" / "engine_compare.py").is_file()
    assert cli._BENCH_MODULE == "benchmarks.engine_compare"


def test_bench_outside_a_checkout_is_one_line_error(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "root of a source checkout" in err[0], err
    assert "benchmarks.engine_compare" in err[0] and str(tmp_path) in err[0]


def test_bench_refuses_a_betty_python_before_running_anything(capsys, monkeypatch) -> None:
    import subprocess
    import sys

    monkeypatch.chdir(ROOT)  # a checkout: only the betty probe may stop the benchmark

    started: list[list[str]] = []
    real_run = subprocess.run

    def run(cmd, *args, **kwargs):  # only the probe may run, never the benchmark script
        if any("engine_compare" in str(c) for c in cmd):
            started.append(cmd)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    assert cli.main(["bench", "--betty", "/nonexistent/python"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'/nonexistent/python' is not an executable" in err[0]
    # this interpreter has no betty installed
    assert cli.main(["bench", "--betty", sys.executable]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot import betty" in err and "betty-ml==0.2.1" in err
    assert started == []
