"""Topic and pattern validation and the trie router, fuzzed against a reference written from DESIGN.md.

The reference below is built from the contract's sentences alone (no regex, no code of the
router): "a topic is 1 to 16 levels separated by '/'; a level is 1 to 64 of A-Z a-z 0-9 - _;
a pattern is the same, except that a level may be '*' (exactly one level) and the last level
may be '>' (one or more levels)", and "destinations = the union of the regions of every rule
whose topic matches; the origin always keeps its copy".
"""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meshgate.config import RouteRule
from meshgate.router import (
    InvalidPatternError,
    InvalidTopicError,
    Router,
    UnknownRegionError,
    pattern_regex,
    validate_pattern,
    validate_topic,
)

from ._budget import fuzz_settings

# --- the reference, from the contract's words ------------------------------------------------

_LEVEL_CHARS = frozenset(string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_")


def ref_level(level: str) -> bool:
    return 1 <= len(level) <= 64 and all(c in _LEVEL_CHARS for c in level)


def ref_topic(s: str) -> bool:
    levels = s.split("/")
    return 1 <= len(levels) <= 16 and all(ref_level(level) for level in levels)


def ref_pattern(s: str) -> bool:
    levels = s.split("/")
    if not 1 <= len(levels) <= 16:
        return False
    last = len(levels) - 1
    return all(level == "*" or (level == ">" and i == last) or ref_level(level) for i, level in enumerate(levels))


def ref_matches(pattern: str, topic: str) -> bool:
    """'*' takes exactly one level, a final '>' one or more, anything else itself."""
    p, t = pattern.split("/"), topic.split("/")

    def walk(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(t)
        if p[i] == ">":
            return len(t) - j >= 1
        if j == len(t):
            return False
        return p[i] in ("*", t[j]) and walk(i + 1, j + 1)

    return walk(0, 0)


def ref_route(rules: list[RouteRule], topic: str, origin: str) -> tuple[str, ...]:
    return tuple(sorted({origin, *(r for rule in rules if ref_matches(rule.topic, topic) for r in rule.regions)}))


# --- strategies --------------------------------------------------------------------------------

# Near misses: separators, wildcards in the wrong place, a dot (the broker's separator), space,
# control and non-ASCII characters, and letters/digits that are valid.
_EDGY = "ab/*>.-_ \t\n\x00é\u0661Z9"
edgy_text = st.text(alphabet=_EDGY, max_size=24)
# Levels around the 64-character bound, in counts around the 16-level bound.
long_level = st.integers(min_value=62, max_value=66).map(lambda n: "x" * n)
level = st.one_of(st.sampled_from(["a", "b", "c", "*", ">", "", "a.b", "A-_9"]), long_level)
joined_levels = st.lists(level, min_size=0, max_size=18).map("/".join)
any_text = st.one_of(edgy_text, joined_levels, st.text(max_size=40))

# Valid topics and patterns over a small vocabulary, so rules and topics overlap often.
_WORDS = ["a", "b", "c", "orders", "x-1"]
topic_levels = st.lists(st.sampled_from(_WORDS), min_size=1, max_size=5)
valid_topic = topic_levels.map("/".join)


@st.composite
def valid_pattern(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from([*_WORDS, "*", "*"]), min_size=1, max_size=5))
    if draw(st.booleans()):
        if len(levels) == 16 or draw(st.booleans()):
            levels[-1] = ">"
        else:
            levels.append(">")
    return "/".join(levels)


@st.composite
def topic_near(draw: st.DrawFn, pattern: str) -> str:
    """A topic the pattern is likely to match: wildcards filled in, sometimes one level off."""
    levels: list[str] = []
    for lv in pattern.split("/"):
        if lv == "*":
            levels.append(draw(st.sampled_from(_WORDS)))
        elif lv == ">":
            levels.extend(draw(st.lists(st.sampled_from(_WORDS), min_size=0, max_size=3)))
        else:
            levels.append(lv)
    if draw(st.integers(0, 3)) == 0 and levels:
        levels.pop(draw(st.integers(0, len(levels) - 1)))
    if draw(st.integers(0, 3)) == 0:
        levels.append(draw(st.sampled_from(_WORDS)))
    return "/".join(levels) or "a"


ORIGINS = ("r1", "r2", "r3")
# "x" is only ever a destination: the router keeps names it has never seen as an origin apart.
DESTINATIONS = (*ORIGINS, "x")


# --- validation --------------------------------------------------------------------------------


@fuzz_settings(1500)
@given(s=any_text)
@example(s="a/" * 15 + "a")
@example(s="a/" * 16 + "a")
@example(s="x" * 64)
@example(s="x" * 65)
@example(s="orders/>")
@example(s="orders/*/x")
@example(s="a\n")
@example(s="\u0661")
def test_validation_agrees_with_the_contract(s: str) -> None:
    topic, pattern = validate_topic(s), validate_pattern(s)
    # The documented result: None exactly when valid, else a non-empty reason.
    assert (topic is None) == ref_topic(s)
    assert (pattern is None) == ref_pattern(s)
    for reason in (topic, pattern):
        assert reason is None or (isinstance(reason, str) and reason.strip())


@fuzz_settings(300)
@given(
    value=st.one_of(
        st.binary(max_size=20), st.integers(), st.none(), st.floats(), st.lists(st.text(max_size=3), max_size=3)
    )
)
def test_validation_of_non_strings_says_so(value: object) -> None:
    for check, what in ((validate_topic, "topic"), (validate_pattern, "pattern")):
        reason = check(value)  # type: ignore[arg-type]
        assert reason == f"{what} must be a string, got {type(value).__name__}"


@fuzz_settings(60)
@given(core=any_text, size=st.integers(min_value=1_000, max_value=200_000))
def test_reasons_stay_short_whatever_the_input(core: str, size: int) -> None:
    # A megabyte of garbage must not become a megabyte of log line or gRPC status message: the
    # input is shown cut to 80 characters, whose repr may take up to 10 each ('\\U0001fbcb').
    s = (core or "a") * (size // max(1, len(core)) + 1)
    for reason in (validate_topic(s), validate_pattern(s)):
        if reason is not None:
            assert len(reason) <= 2_500, reason[:200]


@fuzz_settings(800)
@given(pattern=valid_pattern(), data=st.data())
def test_pattern_regex_agrees_with_reference(pattern: str, data: st.DataObject) -> None:
    assert ref_pattern(pattern), pattern
    topic = data.draw(st.one_of(topic_near(pattern), valid_topic))
    assert ref_topic(topic), topic
    assert bool(pattern_regex(pattern).fullmatch(topic)) == ref_matches(pattern, topic)


# --- the router --------------------------------------------------------------------------------

rule_specs = st.lists(
    st.tuples(valid_pattern(), st.lists(st.sampled_from(DESTINATIONS), min_size=1, max_size=3, unique=True)),
    max_size=20,
)


def make_rules(specs: list[tuple[str, list[str]]]) -> list[RouteRule]:
    return [RouteRule(index=i, topic=p, regions=tuple(rs)) for i, (p, rs) in enumerate(specs)]


@fuzz_settings(400)
@given(specs=rule_specs, data=st.data(), cache_size=st.sampled_from([0, 1, 3, 65_536]))
@example(specs=[("a/>", ["r2"]), ("a", ["x"])], data=None, cache_size=0)
def test_router_agrees_with_reference(
    specs: list[tuple[str, list[str]]], data: st.DataObject | None, cache_size: int
) -> None:
    rules = make_rules(specs)
    router = Router(regions=ORIGINS, rules=rules, cache_size=cache_size)
    near = [topic_near(r.topic) for r in rules]
    topic_strategy = st.one_of(valid_topic, *near)
    topics = data.draw(st.lists(topic_strategy, min_size=1, max_size=12)) if data is not None else ["a", "a/b"]
    for topic in topics * 2:  # twice: the second pass may be served by the decision cache
        for origin in ORIGINS:
            expected = ref_route(rules, topic, origin)
            assert router.route(topic, origin) == expected, (topic, origin)
            explanation = router.explain(topic, origin)
            assert explanation.destinations == expected
            assert explanation.rules == tuple(r for r in rules if ref_matches(r.topic, topic))


@fuzz_settings(500)
@given(specs=rule_specs, topic=any_text, origin=st.sampled_from([*DESTINATIONS, "", "nowhere"]))
def test_router_refuses_only_with_its_documented_errors(
    specs: list[tuple[str, list[str]]], topic: str, origin: str
) -> None:
    router = Router(regions=ORIGINS, rules=make_rules(specs))
    reason = validate_topic(topic)
    if reason is not None:
        with pytest.raises(InvalidTopicError) as bad_topic:
            router.route(topic, origin)
        assert bad_topic.value.reason == reason
        with pytest.raises(InvalidTopicError):
            router.explain(topic, origin)
    elif origin not in ORIGINS:
        with pytest.raises(UnknownRegionError) as unknown:
            router.route(topic, origin)
        assert unknown.value.region == origin
        with pytest.raises(UnknownRegionError):
            router.explain(topic, origin)
    else:
        assert router.route(topic, origin) == ref_route(make_rules(specs), topic, origin)


@fuzz_settings(500)
@given(patterns=st.lists(st.one_of(any_text, valid_pattern()), min_size=1, max_size=6))
def test_router_refuses_invalid_patterns_by_rule(patterns: list[str]) -> None:
    rules = make_rules([(p, ["r1"]) for p in patterns])
    first_bad = next((r for r in rules if not ref_pattern(r.topic)), None)
    if first_bad is None:
        Router(regions=ORIGINS, rules=rules)
        return
    with pytest.raises(InvalidPatternError) as refused:
        Router(regions=ORIGINS, rules=rules)
    assert refused.value.rule == first_bad
    assert refused.value.reason == validate_pattern(first_bad.topic)
