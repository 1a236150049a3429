"""Replication across three regions, each a ``meshgate serve`` process with its own embedded
JetStream: every acked event reaches every region of its route exactly once, in key order,
with its attributes; links report REPLICATING with no lag; the CLI shows it all.
"""

from __future__ import annotations

import asyncio
import functools
import json

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from meshgate.v1 import admin_pb2, event_pb2, gateway_pb2
from tests._cli import run_cli
from tests._wait import eventually
from tests.e2e._ledger import Ledger, Producer, make_event, read_region
from tests.e2e._mesh import MeshCluster, wait_links_idle
from tests.e2e.conftest import MeshFactory

US, EU, AP = "us-west", "eu-central", "ap-south"
REGIONS = [US, EU, AP]
ROUTING = [
    ("orders/*", [US, EU, AP]),
    ("inventory/>", [US, EU]),
    # billing/*: no rule, so it stays in its origin.
]


def workload(origin: str, n: int, *, keys: int = 8) -> list[event_pb2.Event]:
    """``n`` events from ``origin``: orders, inventory and billing topics, ``keys`` ordering keys."""
    topics = ["orders/created", "inventory/eu/sku-991", "billing/invoice", "orders/paid", "inventory/us/sku-7"]
    return [
        make_event(
            f"{origin}-{i:05d}",
            topics[i % len(topics)],
            key=f"{origin}-key{i % keys}",
            extensions={"seq": str(i), "producer": origin.replace("-", "")},
        )
        for i in range(n)
    ]


@pytest.mark.slow
async def test_two_origins_concurrently_reach_every_region_of_their_route_once_in_key_order(
    make_mesh: MeshFactory,
) -> None:
    cluster: MeshCluster = await make_mesh(REGIONS, ROUTING)
    ledger = Ledger()
    producers = [
        Producer(cluster, ledger, US, workload(US, 1500), batch_size=50),
        Producer(cluster, ledger, AP, workload(AP, 1500), batch_size=50),
    ]
    await asyncio.wait_for(asyncio.gather(*(p.run() for p in producers)), 60)
    assert len(ledger.acked) == 3000 and not ledger.rejected

    # Routes stamped at admission: the union of matching rules plus the origin.
    routes = {(rec.origin, rec.topic.split("/")[0]): set(rec.route) for rec in ledger.acked.values()}
    assert routes[(US, "orders")] == routes[(AP, "orders")] == {US, EU, AP}
    assert routes[(US, "inventory")] == {US, EU}
    assert routes[(AP, "inventory")] == {US, EU, AP}
    assert routes[(US, "billing")] == {US} and routes[(AP, "billing")] == {AP}

    observed = await ledger.verify(cluster, timeout=60)
    # Nothing else crossed: billing stayed home, and the counts are what the routes say.
    assert len(observed[US]) == 1500 + 1200  # its own, and ap-south's orders and inventory
    assert len(observed[EU]) == 1200 + 1200  # orders and inventory of both
    assert len(observed[AP]) == 1500 + 600  # its own, and us-west's orders

    await wait_links_idle(cluster, REGIONS, timeout=30)
    for source in REGIONS:
        status = await cluster.status(source)
        assert status.region == source
        links = {link.destination: link for link in status.links}
        assert set(links) == set(REGIONS) - {source}, f"{source} links: {sorted(links)}"
        for dest, link in links.items():
            assert link.state == admin_pb2.LINK_STATE_REPLICATING, (source, dest, link)
            assert link.lag_events == 0 and link.lag_seconds == 0.0, (source, dest, link)
            assert link.dead_lettered == 0, (source, dest, link)
            sent = sum(1 for rec in ledger.acked.values() if rec.origin == source and dest in rec.route)
            # A clean run forwards each event once.
            assert link.forwarded == sent, f"{source} -> {dest}: forwarded {link.forwarded}, routed {sent}"


async def test_replicated_event_keeps_its_attributes_and_the_cli_shows_it(make_mesh: MeshFactory) -> None:
    cluster: MeshCluster = await make_mesh(REGIONS, ROUTING)
    when = Timestamp(seconds=1_700_000_000, nanos=123_000_000)
    sent = [
        make_event("attr-1", "orders/created", key="cust-7", data=b'{"order": 1}', extensions={"tenant": "acme"}),
        make_event(
            "attr-2", "orders/created", key="cust-7", data=bytes(range(256)), extensions={"a1": "x", "b": "y z"}
        ),
        make_event("attr-3", "orders/paid", data="grüße".encode(), extensions={}),
    ]
    sent[1].datacontenttype = "application/octet-stream"
    sent[2].time.CopyFrom(when)
    resp = await cluster.stub(EU).Publish(gateway_pb2.PublishRequest(events=sent), timeout=10)
    acks = {r.id: r for r in resp.results}
    assert all(r.outcome == event_pb2.OUTCOME_ACCEPTED for r in resp.results), resp
    at_origin = {e.id: e for e in await read_region(cluster, EU, "orders/>", expect=3)}

    for region in (US, AP):
        got = await eventually(
            functools.partial(_read_ids, cluster, region, 3), 30, what=f"the 3 events of eu-central in {region}"
        )
        # attr-1 and attr-2 share a key (so a partition: in order); attr-3 has none and its own
        # partition, which may reach the destination first.
        assert [e.id for e in got if e.key] == ["attr-1", "attr-2"], region
        got = sorted(got, key=lambda e: e.id)
        assert [e.id for e in got] == ["attr-1", "attr-2", "attr-3"], region
        for e, orig, pub in zip(got, (at_origin[i] for i in ("attr-1", "attr-2", "attr-3")), sent, strict=True):
            for name in ("id", "topic", "key", "data", "source", "type", "specversion", "datacontenttype", "time"):
                assert getattr(e, name) == getattr(orig, name), f"{region} {e.id}: {name} differs from the origin's"
            assert dict(e.extensions) == dict(pub.extensions) == dict(orig.extensions)
            assert e.origin == EU, f"{region} {e.id}: origin {e.origin!r}"
            assert list(e.route) == list(orig.route) == sorted(REGIONS)
            assert e.origin_sequence == acks[e.id].sequence == orig.sequence, f"{region} {e.id}"
        assert got[2].time == when

    # meshgate tail in a destination shows the origin's events.
    tail = ("tail", "-g", cluster.address(AP), "orders/>", "--from", "earliest", "--limit", "3", "--json")
    rc, out, err = await run_cli(*tail)
    assert rc == 0, err
    lines = sorted((json.loads(line) for line in out.splitlines()), key=lambda x: str(x["id"]))
    assert [(x["id"], x["topic"], x["key"], x["origin"]) for x in lines] == [
        ("attr-1", "orders/created", "cust-7", EU),
        ("attr-2", "orders/created", "cust-7", EU),
        ("attr-3", "orders/paid", "", EU),
    ]
    assert lines[0]["data"] == '{"order": 1}' and lines[2]["data"] == "grüße"
    assert lines[1].get("data_encoding") == "base64"

    # meshgate status: a link per destination, replicating, no lag once caught up.
    await wait_links_idle(cluster, [EU], timeout=30)
    rc, out, err = await run_cli("status", "-g", cluster.address(EU), "--json")
    assert rc == 0, err
    status = json.loads(out)
    assert status["region"] == EU
    links = {link["destination"]: link for link in status["links"]}
    assert set(links) == {US, AP}
    for link in links.values():
        assert link["state"] == "replicating" and link["lag_events"] == 0, link
        assert link["forwarded"] == 3, link
    rc, out, err = await run_cli("status", "-g", cluster.address(EU))
    assert rc == 0, err
    assert "-> us-west" in out and "-> ap-south" in out and "replicating" in out


async def _read_ids(cluster: MeshCluster, region: str, n: int) -> list[event_pb2.Event] | None:
    got = await read_region(cluster, region, "orders/>", expect=n, idle=0.5)
    return got if len(got) >= n else None
