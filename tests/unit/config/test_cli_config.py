"""``meshgate config validate`` and ``meshgate config diff``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshgate.cli import main
from meshgate.config import QUICKSTART_PATH
from tests.unit._meshes import OLD

NEW = OLD.replace('regions: ["us-west"]', 'regions: ["eu-central"]')


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(OLD)
    new.write_text(NEW)
    return old, new


def test_validate_ok(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    old, _ = files
    assert main(["config", "validate", str(old), str(QUICKSTART_PATH)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{old}: ok (2 regions, 2 rules)", f"{QUICKSTART_PATH}: ok (3 regions, 4 rules)"]
    # The quickstart is `meshgate up`'s file, which gives its regions a secret itself: for
    # `meshgate serve` it lacks one, which validate says as a warning (still exit 0).
    (warning,) = err.splitlines()
    line = QUICKSTART_PATH.read_text().splitlines().index("event_mesh:") + 1
    assert warning.startswith(f"{QUICKSTART_PATH}:{line}:1: warning: meshgate serve refuses a mesh of 3 regions")
    assert warning.endswith("(meshgate up gives its own regions a secret for each run)")


def test_validate_reports_every_error_of_every_file(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, _ = files
    bad = tmp_path / "bad.yaml"
    typo = "kind: embeded}"  # codespell:ignore embeded
    bad.write_text(OLD.replace('["us-west"]', '["us-wset"]').replace("kind: embedded}", typo, 1))
    missing = tmp_path / "missing.yaml"
    assert main(["config", "validate", str(bad), str(old), str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == f"{old}: ok (2 regions, 2 rules)\n"
    assert err.splitlines() == [
        f"{bad}:3:29: event_mesh.regions[0].kind: 'embeded' is not one of nats, kafka, embedded;"
        " did you mean 'embedded'?",
        f"{bad}:9:17: event_mesh.routing[1].regions[0]: unknown region 'us-wset'; did you mean 'us-west'?"
        " (regions: us-west, eu-central)",
        f"{missing}: cannot read the file: No such file or directory",
    ]


def test_validate_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["config", "validate"])
    assert info.value.code == 2
    capsys.readouterr()


def test_diff_text(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    old, new = files
    assert main(["config", "diff", str(old), str(new)]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == [
        f"--- {old}",
        f"+++ {new}",
        "rules:",
        "  ~ inventory/*: us-west -> eu-central (line 8 -> 8)",
        "topics whose destinations change (of 2 probe topics):",
        "  from us-west:",
        "    inventory/x: us-west -> eu-central, us-west",
        "  from eu-central:",
        "    inventory/x: eu-central, us-west -> eu-central",
        "routing changes",
    ]


def test_diff_json(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    old, new = files
    assert main(["config", "diff", str(old), str(new), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["old"] == str(old)
    assert data["routing_changed"] is True
    assert data["rules"]["changed"] == [
        {
            "pattern": "inventory/*",
            "old": {"index": 1, "pattern": "inventory/*", "regions": ["us-west"], "line": 8},
            "new": {"index": 1, "pattern": "inventory/*", "regions": ["eu-central"], "line": 8},
        }
    ]
    assert data["links"] == {"added": [], "removed": []}
    assert data["topics"] == [
        {"origin": "us-west", "topic": "inventory/x", "old": ["us-west"], "new": ["eu-central", "us-west"]},
        {"origin": "eu-central", "topic": "inventory/x", "old": ["eu-central", "us-west"], "new": ["eu-central"]},
    ]


def test_diff_without_change(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    old, _ = files
    assert main(["config", "diff", str(old), str(old)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no routing change"


def test_diff_of_an_invalid_file(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    old, new = files
    new.write_text("event_mesh:\n  regions: []\n")
    assert main(["config", "diff", str(old), str(new)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{new}:2:12: event_mesh.regions: expected a list of at least one region, got an empty list\n"


def test_diff_help_documents_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["config", "diff", "--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out
    assert "0  both files are valid" in out
