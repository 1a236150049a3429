"""The options every command shares (--log-level, --version) and what its help shows."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import meshgate
from meshgate.cli import build_parser, main
from meshgate.config import EXAMPLES_DIR

BRIEF = str(EXAMPLES_DIR / "brief.yaml")


def _walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                out += _walk(sub)
    return out


def _every_parser() -> list[argparse.ArgumentParser]:
    return _walk(build_parser())


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["status", "-g", "h:1"], "INFO"),
        (["--log-level", "warning", "status", "-g", "h:1"], "WARNING"),
        (["status", "-g", "h:1", "--log-level", "debug"], "DEBUG"),
        (["status", "--log-level", "ERROR", "-g", "h:1"], "ERROR"),
        # Given on both sides: the later one.
        (["--log-level", "DEBUG", "status", "-g", "h:1", "--log-level", "ERROR"], "ERROR"),
        # A level given before the command is not reset by the command's own default.
        (["--log-level", "DEBUG", "route", "-c", BRIEF, "orders/x"], "DEBUG"),
        (["config", "validate", BRIEF, "--log-level", "WARN"], "WARN"),
        (["config", "--log-level", "DEBUG", "validate", BRIEF], "DEBUG"),
    ],
)
def test_log_level_before_or_after_the_command(argv: list[str], level: str) -> None:
    assert build_parser().parse_args(argv).log_level == level


def test_an_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["status", "-g", "h:1", "--log-level", "LOUD"])
    assert exc.value.code == 2
    assert "unknown level 'LOUD'" in capsys.readouterr().err


def test_main_applies_a_log_level_given_after_the_command() -> None:
    # A child: logging.basicConfig does nothing in a process whose root logger has handlers.
    code = (
        "import logging; from meshgate.cli import main;"
        " rc = main(['bench', '--seconds', '0', '--log-level', 'debug']);"
        " print(rc, logging.getLogger().level)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout.split() == ["2", "10"], proc.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"meshgate {meshgate.__version__}\n"


def test_every_option_and_argument_has_a_help_text() -> None:
    missing = [
        f"{p.prog} {'/'.join(a.option_strings) or a.metavar or a.dest}"
        for p in _every_parser()
        for a in p._actions
        # The list of commands under COMMAND is the subparsers' help.
        if not isinstance(a, argparse._SubParsersAction) and not a.help
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        (["status"], "--json      print one JSON object"),
        (["trace"], "EVENT_ID    the event's id"),
        (["tail"], "earliest: every event the region still retains"),
    ],
)
def test_help_texts_that_were_missing(command: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert " ".join(needle.split()) in " ".join(capsys.readouterr().out.split())


def test_help_shows_no_markup() -> None:
    parsers = _every_parser()
    assert {"meshgate", "meshgate status", "meshgate config validate"} <= {p.prog for p in parsers}
    marked = [p.prog for p in parsers if "`" in p.format_help()]
    assert marked == []


def test_help_still_shows_the_literals_the_markup_was_around(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["publish", "--help"])
    assert "accepted id=ID seq=N route=a,b / duplicate ..." in capsys.readouterr().out


def test_python_dash_m_meshgate_help(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "meshgate", "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--version" in proc.stdout
    assert "--log-level LEVEL" in proc.stdout


@pytest.mark.parametrize("command", [["status"], ["publish", "orders/x", "d"], ["tail", "orders/>"], ["trace", "o-1"]])
def test_a_bare_port_for_the_gateway_is_a_usage_error_that_says_host_port(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command[0], "-g", "7401", *command[1:]])
    assert exc.value.code == 2
    assert "'7401' is a port only: give HOST:PORT, e.g. 127.0.0.1:7401" in capsys.readouterr().err


def test_serve_of_a_misspelt_region_suggests_the_region(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    quickstart = str(EXAMPLES_DIR / "quickstart.yaml")
    assert main(["serve", "-c", quickstart, "--region", "eu-centrl", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "region 'eu-centrl' is not in" in err
    assert err.rstrip().endswith("(regions: us-west, eu-central, ap-south); did you mean 'eu-central'?")
    assert list(tmp_path.iterdir()) == []  # refused before anything started
