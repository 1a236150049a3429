"""A mesh of ``meshgate serve`` processes with mTLS on: replication end to end, the CLI with TLS
options, and certificates rotated under load without a restart and without a lost or doubled event."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509

from meshgate.tls import make_ca
from meshgate.v1 import event_pb2
from tests._cli import run_cli
from tests._wait import eventually
from tests.e2e._ledger import Ledger, Producer, make_event
from tests.e2e._mesh import wait_links_idle
from tests.security._mesh import TlsMeshCluster
from tests.security._pki import served_certificate

US, EU = "us-west", "eu-central"
ROUTING = [("orders/*", [US, EU]), ("inventory/>", [US, EU])]  # billing/* stays home

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def workload(origin: str, n: int, *, keys: int = 8) -> list[event_pb2.Event]:
    topics = ["orders/created", "inventory/eu/sku-1", "orders/paid", "billing/invoice"]
    return [make_event(f"{origin}-{i:05d}", topics[i % len(topics)], key=f"{origin}-key{i % keys}") for i in range(n)]


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run_cli(*args, env={**os.environ, **(env or {})})


async def test_an_mtls_mesh_replicates_both_ways_and_the_cli_speaks_tls(
    make_tls_mesh: Callable[..., Any],
) -> None:
    cluster: TlsMeshCluster = await make_tls_mesh([US, EU], ROUTING)
    assert "(TLS, client certificates of the mesh CA required)" in cluster.process(US).text()
    ledger = Ledger()
    producers = [Producer(cluster, ledger, US, workload(US, 400)), Producer(cluster, ledger, EU, workload(EU, 400))]
    await asyncio.wait_for(asyncio.gather(*(p.run() for p in producers)), 60)
    assert len(ledger.acked) == 800 and not ledger.rejected
    await ledger.verify(cluster, timeout=60)
    await wait_links_idle(cluster, [US, EU], 30)

    pki = cluster.pki
    tls = ["--ca", str(pki.ca_path), "--cert", str(pki.cert("client")), "--cert-key", str(pki.key("client"))]
    rc, out, err = await cli("publish", "-g", cluster.address(US), *tls, "orders/created", "hello", "--key", "k1")
    assert rc == 0 and out.startswith("accepted id=") and "route=eu-central,us-west" in out, (out, err)
    # The same through the MESHGATE_* variables, on the other region: the event has arrived there.
    env = {"MESHGATE_CA": tls[1], "MESHGATE_CERT": tls[3], "MESHGATE_KEY": tls[5]}
    event_id = out.split("id=")[1].split()[0]
    rc, out, err = await cli("trace", "-g", cluster.address(EU), event_id, env=env)
    assert rc == 0, err
    rc, out, err = await cli("status", "-g", cluster.address(EU), env=env)
    assert rc == 0 and "-> us-west" in out and "replicating" in out, (out, err)
    # Plaintext, or TLS without a client certificate: refused, with a hint.
    rc, out, err = await cli("publish", "-g", cluster.address(US), "orders/created", "x")
    assert rc == 1 and "needs --ca, --cert and --cert-key" in err
    rc, out, err = await cli("publish", "-g", cluster.address(US), "--ca", tls[1], "orders/created", "x")
    assert rc == 1 and "UNAVAILABLE" in err


def count(cluster: TlsMeshCluster, region: str, text: str) -> int:
    return cluster.process(region).text().count(text)


# A rotating link reconnects once its batches in flight are acked, or after the link's ack
# timeout (30 s) when one is not: the guarantee checked here is the ledger, not how fast.
_ROTATED_WITHIN = 45


async def test_certificates_rotate_under_load_without_a_lost_or_doubled_event(
    make_tls_mesh: Callable[..., Any],
) -> None:
    cluster: TlsMeshCluster = await make_tls_mesh([US, EU], ROUTING)
    pki = cluster.pki
    ledger = Ledger()
    reconnected = "TLS files changed; reconnecting with them"
    calls_from_us = "replication from us-west:"
    per_phase = 1200

    def producer(phase: int) -> Producer:
        events = workload(US, per_phase * 3)[phase * per_phase : (phase + 1) * per_phase]
        return Producer(cluster, ledger, US, events, batch_size=50, pace=0.05, deadline=60)

    async def under_load(phase: int, rotate: Callable[[], Any]) -> None:
        """Publishes a phase's events and rotates once a quarter of them is acked and forwarding."""
        p = producer(phase)
        producing = asyncio.create_task(p.run())
        try:
            await eventually(lambda: p.acked >= per_phase // 4, 60, what=f"phase {phase}: events acked at {US}")
            link = await cluster.link(US, EU)
            floor = link.forwarded if link is not None else 0

            async def forwarding() -> bool:
                now = await cluster.link(US, EU)
                return now is not None and now.forwarded > floor

            await eventually(forwarding, 30, what=f"phase {phase}: {US} -> {EU} forwarding")
            await rotate()
            await asyncio.wait_for(producing, 60)
        finally:
            if not producing.done():
                producing.cancel()

    async def new_leaves() -> None:
        # New certificates and keys, same CA, on both sides while events flow.
        eu_new = pki.region(EU)
        pki.region(US)
        # The destination serves its new certificate from the next handshake on ...
        served = await asyncio.to_thread(served_certificate, cluster.address(EU), pki, "client")
        assert served.serial_number == eu_new.certificate.serial_number
        # ... and the source reconnects with its new one, the batches in flight acked first.
        await eventually(
            lambda: count(cluster, US, reconnected) >= 1, _ROTATED_WITHIN, what=f"{US}'s link to reconnect"
        )

    async def new_ca() -> None:
        # A new CA: trusted beside the old one first, then every region's certificate is made by it.
        ca2 = make_ca(name="Meshgate development CA 2")
        tmp = pki.ca_path.with_name(".ca.crt.new")
        tmp.write_bytes(pki.ca_path.read_bytes() + ca2.cert)
        os.replace(tmp, pki.ca_path)
        eu_ca2 = pki.region(EU, ca=ca2)
        pki.region(US, ca=ca2)
        await eventually(
            lambda: count(cluster, US, reconnected) >= 2,
            _ROTATED_WITHIN,
            what=f"{US}'s link to reconnect with the new CA's",
        )
        served = await asyncio.to_thread(served_certificate, cluster.address(EU), pki, "client")
        assert served.serial_number == eu_ca2.certificate.serial_number
        served.verify_directly_issued_by(x509.load_pem_x509_certificate(ca2.cert))

    async def nothing() -> None:
        return None

    await under_load(0, new_leaves)
    await under_load(1, new_ca)
    await under_load(2, nothing)  # and events keep flowing on the new certificates

    assert len(ledger.acked) == 3 * per_phase and not ledger.rejected
    # Every acked event is in every region of its route exactly once, in key order.
    await ledger.verify(cluster, timeout=60)
    await wait_links_idle(cluster, [US], 30)
    # No restart: one incarnation per region, and each gateway took the new files live.
    assert not cluster.regions[US].history and not cluster.regions[EU].history
    assert count(cluster, EU, "TLS files reloaded") >= 2
    # The link's first call, and one after each reconnection (a call shows in the log with its
    # first batch; the next phase's events at the latest went over the new connection).
    assert count(cluster, EU, calls_from_us) >= 3
