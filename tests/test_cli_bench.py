"""``ziggurat bench`` is wired to the benchmark script of the source checkout."""

from __future__ import annotations

from pathlib import Path

from ziggurat import cli


def test_bench_parses_its_options() -> None:
    args = cli.build_parser().parse_args(["bench", "--betty", "/x/python", "--full"])
    assert args.func is cli._bench
    assert (args.betty, args.full) == ("/x/python", True)
    assert not cli.build_parser().parse_args(["bench"]).full


def test_bench_script_exists_where_the_cli_looks() -> None:
    script = Path(cli.__file__).resolve().parents[2] / "benchmarks" / "engine_compare.py"
    assert script.is_file()


def test_bench_refuses_a_betty_python_before_running_anything(capsys, monkeypatch) -> None:
    import subprocess
    import sys

    started: list[list[str]] = []
    real_run = subprocess.run

    def run(cmd, *args, **kwargs):  # only the probe may run, never the benchmark script
        if any(str(c).endswith("engine_compare.py") for c in cmd):
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
