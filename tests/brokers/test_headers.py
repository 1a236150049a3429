"""Raw header lines read and rewritten without decoding (brokers/_headers.py)."""

from __future__ import annotations

import itertools
import random

from meshgate.brokers._codec import header_lines, parse_header_lines
from meshgate.brokers._headers import (
    ROUTE_NAME,
    RouteMatcher,
    each_contains,
    header_value,
    header_values,
    set_header,
)
from tests.gateway._helpers import ev

LINES = b"ce-id: e-1\r\nce-traceparent: 00-old-01\r\nmg-route: a,b\r\n"


def test_header_value_first_line_middle_line_and_missing() -> None:
    assert header_value(LINES, b"ce-id") == b"e-1"
    assert header_value(LINES, b"mg-route") == b"a,b"
    assert header_value(LINES, b"mg-origin") is None
    # A name that only ends another header's name is not that header.
    assert header_value(b"x-ce-id: no\r\n", b"ce-id") is None
    # A NATS header block: the lines follow the version line.
    assert header_value(b"NATS/1.0\r\nmg-route: a\r\n\r\n", ROUTE_NAME) == b"a"


def test_set_header_replaces_the_line_in_place_or_appends_one() -> None:
    replaced = set_header(LINES, b"ce-traceparent", b"00-new-01")
    assert replaced == b"ce-id: e-1\r\nce-traceparent: 00-new-01\r\nmg-route: a,b\r\n"
    first = set_header(LINES, b"ce-id", b"e-2")
    assert first == b"ce-id: e-2\r\nce-traceparent: 00-old-01\r\nmg-route: a,b\r\n"
    added = set_header(b"ce-id: e-1\r\n", b"ce-traceparent", b"00-new-01")
    assert added == b"ce-id: e-1\r\nce-traceparent: 00-new-01\r\n"
    assert set_header(b"", b"ce-id", b"x") == b"ce-id: x\r\n"


def test_header_values_any_case() -> None:
    lines = b"mg-origin: a\r\nMG-Origin: b\r\nce-id: x\r\n"
    assert header_values(lines, b"mg-origin") == [b"a", b"b"]


def test_route_matcher_reads_the_route_of_encoded_events() -> None:
    here = RouteMatcher("eu-west")
    assert here(header_lines(ev(id="1", origin="us", route=["us", "eu-west"])))
    assert not here(header_lines(ev(id="2", origin="us", route=["us", "eu-westish"])))
    assert not here(b"ce-id: 3\r\n")
    # The decoder agrees on what the rewritten lines say.
    lines = set_header(header_lines(ev(id="4", origin="us", route=["us"])), b"ce-traceparent", b"00-x-01")
    assert parse_header_lines(lines)["ce-traceparent"] == "00-x-01"


def test_route_matcher_names_all_equals_a_check_of_each_block() -> None:
    # names_all decides a whole batch in scans of its bytes (one count when every route is the
    # same); it must say what asking of each block says: exactly one route line, naming here.
    rng = random.Random(7)
    here = RouteMatcher("b")
    values = [b"a,b", b"a,b", b"a,b", b"a,c", b"b", b"a,b\rjunk", b"b\nx", b"bb", b""]

    def block(value: bytes | None, *, nats: bool, twice: bool = False) -> bytes:
        lines = b"ce-id: x\r\n" + (b"" if value is None else b"mg-route: " + value + b"\r\n")
        if twice and value is not None:
            lines += b"mg-route: " + value + b"\r\n"
        lines += b"mg-origin: a\r\n"
        return b"NATS/1.0\r\n" + lines + b"\r\n" if nats else b"\r\n" + lines

    def each(blocks: list[bytes]) -> bool:
        return all(b.count(b"\r\nmg-route: ") == 1 and here(b) for b in blocks)

    for _ in range(3000):
        nats = rng.random() < 0.5
        common = rng.choice(values)
        blocks = []
        for _ in range(rng.randint(1, 6)):
            roll = rng.random()
            value = common if roll < 0.7 else None if roll < 0.75 else rng.choice(values)
            blocks.append(block(value, nats=nats, twice=rng.random() < 0.03))
        assert here.names_all(blocks, b"".join(blocks)) == each(blocks), blocks


def test_each_contains_is_all_of_in() -> None:
    rng = random.Random(5)
    parts = [b"ab", b"\r\nmg-route: ", b"x", b""]
    for _ in range(2000):
        blocks = [bytes(rng.choice(b"ab\r\nx") for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(0, 5))]
        part = rng.choice(parts)
        assert each_contains(blocks, itertools.repeat(part)) == all(part in b for b in blocks)
        own = [rng.choice(parts) for _ in blocks]
        assert each_contains(blocks, own) == all(p in b for p, b in zip(own, blocks, strict=True))
