"""atheris harness: topic and pattern validation and the trie router against the DESIGN.md reference.

    python -m tests.fuzz.atheris_topics [-max_total_time=60]

Each input is split into a few strings: every one is validated as a topic and as a pattern
(the result must be the reference's: None exactly when valid, else a reason), and the valid
patterns among them become rules of a Router whose routes must be the reference's.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["meshgate"]):
    from meshgate.config import RouteRule
    from meshgate.router import InvalidTopicError, Router, validate_pattern, validate_topic

from tests.fuzz._atheris import run
from tests.fuzz.test_topics import ref_matches, ref_pattern, ref_route, ref_topic

ORIGINS = ("r1", "r2")
SEEDS = [b"orders/*\x00orders/created", b"a/>\x00a\x00a/b/c", b"*/x\x00y/x\x00x" * 3, b"a//b\x00/a\x00a/"]


def test_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    strings = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes()).split("\x00")[:12]
    for s in strings:
        topic, pattern = validate_topic(s), validate_pattern(s)
        if (topic is None) != ref_topic(s) or (pattern is None) != ref_pattern(s):
            raise AssertionError(f"validation of {s!r}: topic {topic!r}, pattern {pattern!r}")
        if topic is not None and not (isinstance(topic, str) and topic.strip()):
            raise AssertionError(f"empty reason for {s!r}")
    patterns = [s for s in strings if ref_pattern(s)]
    rules = [RouteRule(index=i, topic=p, regions=(ORIGINS[i % 2], "x")) for i, p in enumerate(patterns)]
    router = Router(regions=ORIGINS, rules=rules, cache_size=4)
    for s in strings:
        for origin in ORIGINS:
            if not ref_topic(s):
                try:
                    router.route(s, origin)
                except InvalidTopicError:
                    continue
                raise AssertionError(f"route({s!r}) accepted an invalid topic")
            got, want = router.route(s, origin), ref_route(rules, s, origin)
            if got != want:
                raise AssertionError(f"route({s!r}, {origin}) = {got}, reference {want}")
            matched = router.explain(s, origin).rules
            if matched != tuple(r for r in rules if ref_matches(r.topic, s)):
                raise AssertionError(f"explain({s!r}) rules {matched}")


if __name__ == "__main__":
    run(test_one, SEEDS)
