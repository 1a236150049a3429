"""What a running gateway can take from a new mesh file without a restart."""

from __future__ import annotations

import dataclasses

from meshgate.config._model import KafkaSettings, MeshConfig, NatsSettings, RegionConfig
from meshgate.config._values import format_duration

__all__ = ["check_compatible", "region_changes"]

_SERVER_LIMITS = (
    "max_message_bytes",
    "max_metadata_bytes",
    "max_connections",
    "max_connections_per_address",
    "idle_connection_timeout_seconds",
)


def _field_changes(block: str, old: NatsSettings | KafkaSettings, new: NatsSettings | KafkaSettings) -> list[str]:
    return [
        f"{block}.{f.name} {getattr(old, f.name)} -> {getattr(new, f.name)}"
        for f in dataclasses.fields(old)
        if getattr(old, f.name) != getattr(new, f.name)
    ]


def region_changes(old: RegionConfig, new: RegionConfig) -> list[str]:
    """What differs between two versions of a region, apart from its routing rules, for people to read."""
    changes: list[str] = []
    if old.kind != new.kind:
        changes.append(f"broker kind {old.kind.value} -> {new.kind.value}")
    if sorted(old.brokers) != sorted(new.brokers):
        changes.append(f"brokers {', '.join(old.brokers) or '(none)'} -> {', '.join(new.brokers) or '(none)'}")
    if old.gateway != new.gateway:
        changes.append(f"gateway address {old.gateway or '(default)'} -> {new.gateway or '(default)'}")
    if old.metrics != new.metrics:
        changes.append(f"metrics address {old.metrics or '(default)'} -> {new.metrics or '(default)'}")
    if old.tls != new.tls:
        # The files' contents are re-read on change; which files is fixed when the server starts.
        changes.append(f"tls {_tls(old)} -> {_tls(new)}")
    # The broker adapter created its stream or topics from these at start.
    if old.kind != new.kind:
        return changes
    if old.kind.value in ("nats", "embedded"):
        changes.extend(_field_changes("nats", old.nats, new.nats))
    else:
        changes.extend(_field_changes("kafka", old.kafka, new.kafka))
    return changes


def _tls(region: RegionConfig) -> str:
    return f"cert {region.tls.cert}, key {region.tls.key}" if region.tls is not None else "(none)"


def _security_changes(old: MeshConfig, new: MeshConfig) -> list[str]:
    a, b = old.security, new.security
    changes = []
    if a.ca != b.ca:
        changes.append(f"security.ca {a.ca or '(none: plaintext)'} -> {b.ca or '(none: plaintext)'}")
    if a.client_certs != b.client_certs:
        changes.append(f"security.client_certs {a.client_certs.value} -> {b.client_certs.value}")
    # A gateway takes its replication credential when it starts (never shown: it is a secret).
    if a.replication_secret != b.replication_secret:
        changes.append("security.replication_secret changed")
    if a.replication != b.replication:
        changes.append(f"security.replication {a.replication.value} -> {b.replication.value}")
    return changes


def check_compatible(old: MeshConfig, new: MeshConfig, region: str) -> str | None:
    """ "restart needed: ..." when ``new`` changes what region ``region``'s running gateway cannot swap live, else None.

    Routing, other regions, settings and client tokens swap live; this region's own listen addresses,
    broker kind, brokers, broker layout and certificate paths, the gRPC server's size limits, the lease TTL, the
    replication ack timeout and window, and the
    TLS settings (security.ca, client_certs) do not. New contents of the certificate files need no
    reload at all: they are used from the next handshake.
    """
    if region not in new.region_names:
        return f"restart needed: region {region!r} is not in the new file (regions: {', '.join(new.region_names)})"
    if region not in old.region_names:
        return f"restart needed: region {region!r} was not in the running config"
    changes = region_changes(old.region(region), new.region(region))
    # The gRPC server enforces these itself, from options fixed when it started.
    for name in _SERVER_LIMITS:
        before, after = getattr(old.settings.limits, name), getattr(new.settings.limits, name)
        if before != after:
            changes.append(f"settings.limits.{name} {before} -> {after}")
    # The replicator renews at the TTL it started with, and the NATS lease bucket lapses entries at it.
    if old.settings.lease_ttl_seconds != new.settings.lease_ttl_seconds:
        changes.append(
            f"settings.lease_ttl {format_duration(old.settings.lease_ttl_seconds)}"
            f" -> {format_duration(new.settings.lease_ttl_seconds)}"
        )
    # Each link's call waits by the timeout its options had when it started.
    if old.settings.replication_ack_timeout_seconds != new.settings.replication_ack_timeout_seconds:
        changes.append(
            f"settings.replication_ack_timeout {format_duration(old.settings.replication_ack_timeout_seconds)}"
            f" -> {format_duration(new.settings.replication_ack_timeout_seconds)}"
        )
    # So does its window.
    if old.settings.replication_window != new.settings.replication_window:
        changes.append(
            f"settings.replication_window {old.settings.replication_window} -> {new.settings.replication_window}"
        )
    # And its batches.
    if old.settings.replication_batch_events != new.settings.replication_batch_events:
        changes.append(
            f"settings.replication_batch_events {old.settings.replication_batch_events}"
            f" -> {new.settings.replication_batch_events}"
        )
    security = _security_changes(old, new)
    if security:
        return "restart needed: " + "; ".join(security + changes)
    if not changes:
        return None
    return f"restart needed: region {region}'s " + "; ".join(changes)
