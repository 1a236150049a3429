"""The mesh loader on arbitrary and mutated files: a MeshConfig or a ConfigError placed in the text.

Whatever the text, ``load_config_text`` / ``load_config_bytes`` return a ``MeshConfig`` or
raise ``ConfigError`` whose every issue names the source and a line and column inside the
text (the place an operator's editor can jump to); no other exception ever escapes.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meshgate.config import EXAMPLES_DIR, ConfigError, MeshConfig, load_config_bytes, load_config_text

from ._budget import fuzz_settings

SOURCE = "mesh.yaml"
EXAMPLES = sorted(p.read_text(encoding="utf-8") for p in EXAMPLES_DIR.glob("*.yaml"))
# Variables the fuzzed files may reference; anything else is unset.
ENV = {"GW": "127.0.0.1:7000", "EMPTY": "", "NUM": "6", "TOPIC": "orders/*", "YAMLISH": "{a: [1"}

# Lines as an editor counts them: '\n' ends a line ('\r\n' too: the '\r' is the end of its text).
_LINE_BREAK = re.compile(r"\r?\n")


def lines_of(text: str) -> list[str]:
    return _LINE_BREAK.split(text)


def check(load: object, text: str) -> None:
    """``load()`` gives a config or a ConfigError whose issues all sit inside ``text``."""
    assert callable(load)
    try:
        config = load()
    except ConfigError as exc:
        assert exc.errors, "a ConfigError names at least one problem"
        lines = lines_of(text)
        for issue in exc.errors:
            assert issue.file == SOURCE
            assert issue.message.strip()
            assert 1 <= issue.line <= len(lines), (issue, len(lines))
            width = len(lines[issue.line - 1])
            assert 1 <= issue.column <= width + 1, (issue, width)
            assert str(issue).startswith(f"{SOURCE}:{issue.line}:{issue.column}: ")
        return
    assert isinstance(config, MeshConfig)
    assert config.source == SOURCE
    assert config.regions


# 24 mappings each merging the one inside it twice: 2**24 keys from 600 bytes.
MERGE_BOMB = "&a0 {x: 1}"
for _n in range(1, 25):
    MERGE_BOMB = f"&a{_n} {{<<: [{MERGE_BOMB}, *a{_n - 1}]}}"
MERGE_BOMB = "event_mesh: " + MERGE_BOMB


# --- arbitrary text ----------------------------------------------------------------------------

# YAML's structural characters, the mesh's keys and values, variables and awkward characters.
_TOKENS = [
    "event_mesh", "regions", "routing", "settings", "limits", "name", "brokers", "kind", "gateway",
    "metrics", "nats", "kafka", "topic", "embedded", "us-west", "eu", "orders/*", "a/>", "127.0.0.1:7400",
    ":", ": ", "- ", "-", "  ", "    ", "\n", "\r\n", "\t", "[", "]", "{", "}", ",", "'", '"', "#", "&a", "*a",
    "<<", "!!int", "!!binary", "!foo", "?", "|", ">", "---", "...", "%YAML 1.2", "${GW}", "${NOPE}",
    "${EMPTY:-x}", "${", "$${", "${1}", "${YAMLISH}", "null", "~", "true", "0x1F", "1e3", "15m", "1MiB",
    "\u00e9", "\u2028", "\x85", "\ufeff", "\x00", "\x07", "\ud7ff", "\U0001f600",
]  # fmt: skip
yamlish = st.lists(st.sampled_from(_TOKENS), max_size=60).map("".join)
any_text = st.one_of(yamlish, st.text(max_size=200))


@fuzz_settings(400)
@given(text=any_text)
@example(text="")
@example(text="\n\n")
@example(text="event_mesh:\n  regions: [")
@example(text="a: b\n---\nc: d")
@example(text="\ufeffevent_mesh: {}")
@example(text="x: \x00")
@example(text="a: *b")
@example(text="&a [*a, *a]")  # an alias inside its own anchor: was a RecursionError
@example(text="&a {<<: *a}")  # the same through a merge key
@example(text="[" * 3000 + "]" * 3000)  # deeper than PyYAML's recursive composer can go
@example(text="a:\n" + "".join(" " * i + "- \n" for i in range(0, 1000, 2)))
@example(text=MERGE_BOMB)  # was minutes of CPU: merges of merges expanded before being counted
@example(text="a: !!int x")  # each was an exception from PyYAML's constructor of the tag
@example(text="a: !!int")
@example(text="a: !!bool")
@example(text="a: !!timestamp")
@example(text="event_mesh:\n  regions:\n    - name: !!float x")
@example(text="\u2028event_mesh")  # YAML 1.1 breaks lines at LS/NEL/lone CR; places were past the end
@example(text="# \x85\nevent_mesh: [")
@example(text="a: 1\r\rb: *c")
def test_any_text_loads_or_fails_in_place(text: str) -> None:
    check(lambda: load_config_text(text, SOURCE, env=ENV), text)


@fuzz_settings(200)
@given(data=st.binary(max_size=200))
@example(data=b"event_mesh:\n  regions: \xff\n")
@example(data=b"\xef\xbb\xbfevent_mesh: {}")
def test_any_bytes_load_or_fail_in_place(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    check(lambda: load_config_bytes(data, SOURCE, env=ENV), text)


# --- mutated valid files -----------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A shipped example with a few edits of the kind people and merges make."""
    lines = draw(st.sampled_from(EXAMPLES)).split("\n")
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "indent", "dedent", "token", "cut", "swap", "tab"]))
        line = lines[i]
        if op == "drop" and len(lines) > 1:
            del lines[i]
        elif op == "dup":
            lines.insert(i, line)
        elif op == "indent":
            lines[i] = " " * draw(st.integers(1, 4)) + line
        elif op == "dedent":
            lines[i] = line[draw(st.integers(1, 4)) :]
        elif op == "token":
            at = draw(st.integers(0, len(line)))
            lines[i] = line[:at] + draw(st.sampled_from(_TOKENS)) + line[at:]
        elif op == "cut":
            lines[i] = line[: draw(st.integers(0, len(line)))]
        elif op == "swap" and len(lines) > 1:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "tab":
            lines[i] = line.replace("  ", "\t", 1)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def certs_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """ENV plus MESHGATE_CERTS: certificates made by `meshgate certs` for the mTLS example."""
    out = tmp_path_factory.mktemp("certs")
    example = EXAMPLES_DIR / "quickstart-mtls.yaml"
    made = subprocess.run(
        [sys.executable, "-m", "meshgate", "certs", "--out", str(out), "-c", str(example)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    return {**ENV, "MESHGATE_CERTS": str(out)}


@fuzz_settings(400)
@given(text=mutated())
def test_mutated_examples_load_or_fail_in_place(certs_env: dict[str, str], text: str) -> None:
    check(lambda: load_config_text(text, SOURCE, env=certs_env), text)


def test_the_examples_themselves_load(certs_env: dict[str, str]) -> None:
    # The base of the mutations: unmutated, every example is a valid config (the mTLS one with
    # the certificates `meshgate certs` makes for it).
    for text in EXAMPLES:
        assert isinstance(load_config_text(text, SOURCE, env=certs_env), MeshConfig)
