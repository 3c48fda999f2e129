"""The ``ltc-control`` dispatcher: every sub-command resolves to a real function and its ``--help`` runs."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

from ltc_control import cli


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_subcommand_resolves_to_a_function(name):
    module_name, func_name, help_ = cli.COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    assert callable(func) and inspect.isfunction(func)
    assert len(inspect.signature(func).parameters) >= 1, "sub-commands take argv"
    assert help_.strip()


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_subcommand_help_runs(name, capsys):
    try:
        code = cli.main([name, "--help"])
    except SystemExit as exc:  # argparse's --help exits
        code = exc.code
    assert code in (0, None)
    out = capsys.readouterr().out
    assert "usage" in out.lower()


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    assert cli.main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "no-such-command" in err and "valid commands" in err


def test_console_script_runs_in_a_fresh_process():
    proc = subprocess.run(
        [sys.executable, "-m", "ltc_control.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "commands:" in proc.stdout


def test_bench_finds_the_checkouts_benchmarks():
    folder = cli.bench_folder()
    assert folder is not None and (folder / "ltc_speed.py").is_file()
    for name, (file, func, _) in cli.BENCHMARKS.items():
        assert (folder / file).is_file(), name
        assert callable(getattr(cli.load_benchmark(name), func)), name


def test_bench_without_a_checkout_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "bench_folder", lambda: None)
    assert cli.main(["bench", "ltc", "--configs", "ncp19"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "source checkout" in err
