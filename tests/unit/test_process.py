"""``meshgate._process.find_executable``: the lookup nats-server and tansu share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshgate._process import find_executable


def _binary(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_the_variable_wins_and_candidates_are_not_looked_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    looked: list[str] = []

    def candidates() -> Iterator[Path]:
        looked.append("yes")
        yield tmp_path

    chosen = _binary(tmp_path / "chosen")
    monkeypatch.setenv("MG_TEST_BIN", str(chosen))
    assert find_executable("sh", "MG_TEST_BIN", candidates()) == chosen
    assert looked == []


def test_a_variable_naming_no_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_TEST_BIN", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"MG_TEST_BIN=.*missing is not a file"):
        find_executable("sh", "MG_TEST_BIN", [_binary(tmp_path / "other")])


def test_first_candidate_file_then_path_then_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MG_TEST_BIN", raising=False)
    second = _binary(tmp_path / "second")
    assert find_executable("sh", "MG_TEST_BIN", [tmp_path / "absent", tmp_path, second]) == second
    on_path = _binary(tmp_path / "mg-test-tool")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_executable("mg-test-tool", "MG_TEST_BIN", [tmp_path / "absent"]) == on_path
    assert find_executable("mg-test-nothing", "MG_TEST_BIN") is None
