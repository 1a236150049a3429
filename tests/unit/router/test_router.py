"""The trie router against the plain reference matcher, plus its errors and cache."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.config import EXAMPLES_DIR, MeshConfig, RegionConfig, RouteRule, load_config_text
from meshgate.router import (
    Explanation,
    InvalidPatternError,
    InvalidTopicError,
    Router,
    UnknownRegionError,
    pattern_matches,
)

from .test_topics import patterns, topics

REGIONS = ("r1", "r2", "r3", "r4")

# The contract's example as shipped (tests/unit/config pins the file to the contract's text).
BRIEF = (EXAMPLES_DIR / "brief.yaml").read_text()


def make_rules(specs: list[tuple[str, list[str]]]) -> list[RouteRule]:
    return [RouteRule(index=i, topic=p, regions=tuple(rs)) for i, (p, rs) in enumerate(specs)]


rule_specs = st.lists(
    st.tuples(patterns, st.lists(st.sampled_from(REGIONS), min_size=1, max_size=3, unique=True)),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(specs=rule_specs, topic_list=st.lists(topics, min_size=1, max_size=10), origin=st.sampled_from(REGIONS))
def test_router_agrees_with_reference(specs: list[tuple[str, list[str]]], topic_list: list[str], origin: str) -> None:
    rules = make_rules(specs)
    cached = Router(regions=REGIONS, rules=rules)
    uncached = Router(regions=REGIONS, rules=rules, cache_size=0)
    for topic in topic_list * 2:  # twice: the second pass is served by the cache
        matching = [r for r in rules if pattern_matches(r.topic, topic)]
        expected = tuple(sorted({origin, *(region for r in matching for region in r.regions)}))
        assert cached.route(topic, origin) == expected
        assert uncached.route(topic, origin) == expected
        assert cached.explain(topic, origin) == Explanation(
            topic=topic, origin=origin, destinations=expected, rules=tuple(matching)
        )


def test_brief_example_routes_as_written() -> None:
    router = Router.from_config(load_config_text(BRIEF))
    assert router.route("orders/created", "us-west") == ("eu-central", "us-west")
    assert router.route("orders/created", "eu-central") == ("eu-central", "us-west")
    assert router.route("inventory/x", "eu-central") == ("eu-central", "us-west")
    assert router.route("inventory/x", "us-west") == ("us-west",)
    # Unmatched, or matched only by level count: the event stays in its origin.
    assert router.route("payments/x", "eu-central") == ("eu-central",)
    assert router.route("orders/a/b", "eu-central") == ("eu-central",)
    assert router.route("orders", "us-west") == ("us-west",)


def test_explain_lists_rules_in_file_order() -> None:
    rules = make_rules([("a/>", ["r2"]), ("*/b", ["r3"]), ("a/b", ["r1"]), ("x/y", ["r4"])])
    explanation = Router(regions=REGIONS, rules=rules).explain("a/b", "r4")
    assert explanation.destinations == ("r1", "r2", "r3", "r4")
    assert [r.index for r in explanation.rules] == [0, 1, 2]


def test_invalid_topic_is_refused_with_the_reason() -> None:
    router = Router(regions=REGIONS, rules=[])
    with pytest.raises(InvalidTopicError) as info:
        router.route("a//b", "r1")
    assert info.value.topic == "a//b"
    assert "level 2 is empty" in info.value.reason
    with pytest.raises(InvalidTopicError):
        router.explain("orders/*", "r1")


def test_unknown_origin_names_the_known_regions() -> None:
    router = Router(regions=REGIONS, rules=make_rules([("a", ["r1"])]))
    with pytest.raises(UnknownRegionError) as info:
        router.route("a", "mars")
    assert info.value.region == "mars"
    assert str(info.value) == "unknown region 'mars'; regions: r1, r2, r3, r4"
    with pytest.raises(UnknownRegionError):
        router.explain("a", "mars")


def test_invalid_pattern_in_code_built_config() -> None:
    config = MeshConfig(
        regions=(RegionConfig(name="r1"),), routing=(RouteRule(index=0, topic="a/>/b", regions=("r1",)),)
    )
    with pytest.raises(InvalidPatternError) as info:
        Router.from_config(config)
    assert info.value.rule.index == 0
    assert "'>' is level 2 of 3" in str(info.value)


def test_cache_is_bounded() -> None:
    router = Router(regions=REGIONS, rules=make_rules([("t/*", ["r2"])]), cache_size=8)
    for i in range(100):
        assert router.route(f"t/{i}", "r1") == ("r1", "r2")
    assert len(router._cache) <= 8
    with pytest.raises(ValueError, match="cache_size"):
        Router(regions=REGIONS, rules=[], cache_size=-1)


def test_links() -> None:
    router = Router(regions=("a", "b", "c"), rules=make_rules([("x", ["a"]), ("y", ["b", "a"])]))
    assert router.links() == {("b", "a"), ("c", "a"), ("a", "b"), ("c", "b")}
    assert router.rules[1].topic == "y"
    assert router.regions == ("a", "b", "c")


def test_many_rules_route_like_the_reference() -> None:
    # Shared prefixes, '*' and '>' at every depth: one trie, thousands of rules.
    specs: list[tuple[str, list[str]]] = []
    for i in range(2000):
        head = f"s{i % 50}"
        specs.append((f"{head}/e{i % 7}/k{i}", [REGIONS[i % 4]]))
        if i % 100 == 0:
            specs.append((f"{head}/*/>", [REGIONS[(i + 1) % 4]]))
            specs.append((f"*/e{i % 7}", [REGIONS[(i + 2) % 4]]))
    rules = make_rules(specs)
    router = Router(regions=REGIONS, rules=rules)
    for topic in ["s1/e1/k1", "s3/e3/k53", "s0/e0", "s0/e0/a/b", "s7/x/y", "zz/e3", "nothing"]:
        matching = [r for r in rules if pattern_matches(r.topic, topic)]
        expected = tuple(sorted({"r1", *(region for r in matching for region in r.regions)}))
        assert router.route(topic, "r1") == expected, topic
