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
