"""``meshgate route -c FILE TOPIC [--from REGION] [--json]``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshgate.cli import main
from meshgate.config import EXAMPLES_DIR

BRIEF = str(EXAMPLES_DIR / "brief.yaml")


def test_route_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "-c", BRIEF, "orders/created"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "orders/created from us-west -> eu-central, us-west",
        "  rule #0 orders/* (line 8) -> us-west, eu-central",
    ]


def test_route_from_another_region(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "-c", BRIEF, "inventory/x", "--from", "eu-central"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "inventory/x from eu-central -> eu-central, us-west",
        "  rule #1 inventory/* (line 10) -> us-west",
    ]


def test_route_unmatched_topic_stays(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "-c", BRIEF, "payments/x", "--from", "eu-central"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "payments/x from eu-central -> eu-central",
        "  no rule matches: the event stays in eu-central",
    ]


def test_route_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "-c", BRIEF, "orders/created", "--from", "eu-central", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "topic": "orders/created",
        "origin": "eu-central",
        "destinations": ["eu-central", "us-west"],
        "rules": [{"index": 0, "pattern": "orders/*", "regions": ["us-west", "eu-central"], "line": 8}],
    }


def test_route_invalid_topic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "-c", BRIEF, "orders//x"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "meshgate route: topic 'orders//x': level 2 is empty; a level is 1 to 64 characters of A-Z a-z 0-9 - _\n"
    )


def test_route_unknown_region(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "-c", BRIEF, "orders/x", "--from", "mars"]) == 1
    assert capsys.readouterr().err == (
        f"meshgate route: unknown region 'mars' in {BRIEF}; regions: us-west, eu-central\n"
    )


def test_route_invalid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("event_mesh:\n  regions:\n    - name: a\n      kind: embedded\n      gateway: 1.2.3.4\n")
    assert main(["route", "-c", str(bad), "orders/x"]) == 1
    assert capsys.readouterr().err == (
        f"{bad}:5:16: event_mesh.regions[0].gateway: '1.2.3.4': the port is missing; expected HOST:PORT,"
        " e.g. 1.2.3.4:7401\n"
    )


def test_route_requires_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["route", "orders/x"])
    assert info.value.code == 2
    capsys.readouterr()
