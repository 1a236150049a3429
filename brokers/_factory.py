"""Builds the broker adapter of a region from its config."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from meshgate.brokers._base import Broker, BrokerError
from meshgate.brokers.embedded import EmbeddedNatsBroker
from meshgate.brokers.kafka import KafkaBroker
from meshgate.brokers.nats import NatsBroker
from meshgate.config import BrokerKind, RegionConfig, split_host_port

__all__ = ["DEFAULT_KAFKA_PORT", "DEFAULT_NATS_PORT", "kafka_bootstrap_servers", "make_broker", "nats_server_urls"]

DEFAULT_NATS_PORT = 4222
DEFAULT_KAFKA_PORT = 9092


def nats_server_urls(brokers: Sequence[str]) -> list[str]:
    """``host[:port]`` entries as NATS URLs (port 4222 by default); a URL (``tls://...``) stays as is."""
    urls = []
    for entry in brokers:
        if "://" in entry:
            urls.append(entry)
            continue
        host, port = split_host_port(entry.strip(), port_required=False)
        urls.append(f"nats://{_url_host(host)}:{port or DEFAULT_NATS_PORT}")
    return urls


def kafka_bootstrap_servers(brokers: Sequence[str]) -> list[str]:
    """``host[:port]`` entries as Kafka bootstrap servers (port 9092 by default)."""
    servers = []
    for entry in brokers:
        host, port = split_host_port(entry.strip(), port_required=False)
        servers.append(f"{_url_host(host)}:{port or DEFAULT_KAFKA_PORT}")
    return servers


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def make_broker(region: RegionConfig, *, idempotency_window_seconds: float, data_dir: Path) -> Broker:
    """The (not yet started) broker of ``region``.

    ``nats``: a ``NatsBroker`` on the region's ``brokers``. ``kafka``: a ``KafkaBroker`` with the
    region's ``brokers`` as bootstrap servers. ``embedded``: an ``EmbeddedNatsBroker``
    with its data in ``data_dir/<region>``, listening on the first ``brokers`` entry when one is
    given (so native clients find it), else on a free port of 127.0.0.1; its HTTP monitoring on
    ``nats.monitor`` when set, else on a free port of the same host.
    """
    if region.kind in (BrokerKind.NATS, BrokerKind.KAFKA) and not region.brokers:
        raise BrokerError(f"region {region.name!r} is of kind {region.kind} but lists no brokers", retriable=False)
    if region.kind is BrokerKind.NATS:
        return NatsBroker(
            servers=nats_server_urls(region.brokers),
            settings=region.nats,
            idempotency_window_seconds=idempotency_window_seconds,
            name=f"meshgate-{region.name}",
        )
    if region.kind is BrokerKind.EMBEDDED:
        host, port = "127.0.0.1", -1
        if region.brokers:
            listen_host, listen_port = split_host_port(region.brokers[0], port_required=False)
            host, port = listen_host, listen_port or DEFAULT_NATS_PORT
        monitor_host, monitor_port = host, -1
        if region.nats.monitor:
            monitor_host, pinned = split_host_port(region.nats.monitor)
            monitor_port = pinned or -1
        return EmbeddedNatsBroker(
            data_dir=data_dir,
            region=region.name,
            settings=region.nats,
            idempotency_window_seconds=idempotency_window_seconds,
            host=host,
            port=port,
            max_payload=region.nats.max_payload,
            monitor_host=monitor_host,
            monitor_port=monitor_port,
        )
    if region.kind is BrokerKind.KAFKA:
        return KafkaBroker(
            bootstrap_servers=kafka_bootstrap_servers(region.brokers),
            settings=region.kafka,
            idempotency_window_seconds=idempotency_window_seconds,
            name=f"meshgate-{region.name}",
        )
    raise BrokerError(f"region {region.name!r}: unknown broker kind {region.kind!r}", retriable=False)
