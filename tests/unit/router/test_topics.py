"""Topic and pattern syntax: the contract's rules, each refusal's message, and the reference matcher."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.router import pattern_matches, pattern_regex, validate_pattern, validate_topic

LEVEL_RULE = "a level is 1 to 64 characters of A-Z a-z 0-9 - _"


@pytest.mark.parametrize(
    "topic",
    ["orders/created", "inventory/eu/sku-991", "a", "A_b-9", "/".join(["l"] * 16), "x" * 64, "x/" + "y" * 64],
)
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) is None


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("", "topic is empty; a topic is 1 to 16 levels separated by '/', e.g. 'orders/created'"),
        ("a//b", f"topic 'a//b': level 2 is empty; {LEVEL_RULE}"),
        ("/".join(["a"] * 17), f"topic {'/'.join(['a'] * 17)!r} has 17 levels; at most 16"),
        ("/a", "topic '/a' starts with '/'; remove it ('/' only separates levels)"),
        ("a/", "topic 'a/' ends with '/'; remove it ('/' only separates levels)"),
        ("a/" + "x" * 65, f"topic {'a/' + 'x' * 65!r}: level 2 has 65 characters; at most 64"),
        ("orders/new order", f"topic 'orders/new order': level 2 has ' ' at position 4; {LEVEL_RULE}"),
        ("orders.created", f"topic 'orders.created': level 1 has '.' at position 7; {LEVEL_RULE}"),
        ("orders/*", "topic 'orders/*': level 2 is the wildcard '*'; wildcards are for patterns, a topic names one"),
        ("orders/>", "topic 'orders/>': level 2 is the wildcard '>'; wildcards are for patterns, a topic names one"),
        ("caf\u00e9", f"topic 'caf\u00e9': level 1 has '\u00e9' at position 4; {LEVEL_RULE}"),  # codespell:ignore caf
    ],
)
def test_invalid_topic_messages(topic: str, message: str) -> None:
    assert validate_topic(topic) == message


def test_long_topics_are_cut_in_messages() -> None:
    message = validate_topic("a." * 1000)
    assert message is not None
    assert len(message) < 200
    assert "..." in message


def test_non_string_topic() -> None:
    assert validate_topic(5) == "topic must be a string, got int"  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", ["orders/*", "orders/>", ">", "*", "*/*/>", "a/b", "/".join(["*"] * 16)])
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) is None


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (
            "a/>/b",
            "pattern 'a/>/b': '>' is level 2 of 3; '>' (one or more levels) may only be the last level,"
            " use '*' for exactly one level",
        ),
        (
            "ord*/x",
            "pattern 'ord*/x': level 1 'ord*' mixes a wildcard with other characters;"
            " a wildcard is a whole level, '*' or '>'",
        ),
        (
            "a/**",
            "pattern 'a/**': level 2 '**' mixes a wildcard with other characters;"
            " a wildcard is a whole level, '*' or '>'",
        ),
        ("a//*", f"pattern 'a//*': level 2 is empty; {LEVEL_RULE}"),
        ("/".join(["*"] * 17), f"pattern {'/'.join(['*'] * 17)!r} has 17 levels; at most 16"),
        ("", "pattern is empty; a pattern is 1 to 16 levels separated by '/', e.g. 'orders/created'"),
        ("a b/>", f"pattern 'a b/>': level 1 has ' ' at position 2; {LEVEL_RULE}"),
    ],
)
def test_invalid_pattern_messages(pattern: str, message: str) -> None:
    assert validate_pattern(pattern) == message


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        # The examples of the contract.
        ("orders/*", "orders/created", True),
        ("orders/*", "orders/a/b", False),
        ("orders/>", "orders/created", True),
        ("orders/>", "orders/a/b", True),
        ("orders/>", "orders", False),
        ("orders/created", "orders/created", True),
        ("orders/created", "orders/updated", False),
        ("*", "orders", True),
        ("*", "orders/x", False),
        (">", "a/b/c", True),
        ("*/created", "orders/created", True),
        ("a/b/c", "a/b", False),
    ],
)
def test_pattern_matches_examples(pattern: str, topic: str, expected: bool) -> None:
    assert pattern_matches(pattern, topic) is expected
    assert (pattern_regex(pattern).fullmatch(topic) is not None) is expected


# Small alphabets so that random patterns and topics match often.
levels = st.sampled_from(["a", "b", "c"])
topics = st.lists(levels, min_size=1, max_size=5).map("/".join)
patterns = st.lists(st.sampled_from(["a", "b", "*"]), min_size=1, max_size=5).flatmap(
    lambda ls: st.sampled_from(["/".join(ls), "/".join([*ls[:-1], ">"])])
)


@settings(max_examples=300, deadline=None)
@given(pattern=patterns, topic=topics)
def test_pattern_regex_agrees_with_reference(pattern: str, topic: str) -> None:
    assert validate_pattern(pattern) is None
    assert validate_topic(topic) is None
    assert (pattern_regex(pattern).fullmatch(topic) is not None) == pattern_matches(pattern, topic)


_REFERENCE_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,15}")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab/*>.- ", max_size=12))
def test_validation_is_exact(s: str) -> None:
    # A message exactly when the plain regex of the contract refuses the string.
    assert (validate_topic(s) is None) == bool(_REFERENCE_TOPIC.fullmatch(s))
    levels_ = s.split("/")
    valid_pattern = bool(s) and all(
        (lv in ("*", ">") or _REFERENCE_TOPIC.fullmatch(lv) is not None) and (lv != ">" or i == len(levels_) - 1)
        for i, lv in enumerate(levels_)
    )
    assert (validate_pattern(s) is None) == (valid_pattern and len(levels_) <= 16)
