"""What a link needs for its ``Replicate`` call: the channel, and its TLS rotation."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from meshgate.tls import ClientTls, TlsError, TlsMaterial

__all__ = [
    "CHANNEL_OPTIONS",
    "TLS_POLL_SECONDS",
    "LinkError",
    "TlsRotated",
    "open_channel",
    "tls_changed",
]

log = logging.getLogger("meshgate.replicator")

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # While the destination is down, gRPC retries the connection within 0.1 s doubling to 0.5 s
    # (its defaults: 1 s to 120 s) for as long as a session waits to connect: a gateway
    # restarted meanwhile is found at once (between sessions, the link's backoff).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
# How often a connected link looks at its TLS files for a rotation.
TLS_POLL_SECONDS = 1.0


class LinkError(Exception):
    """The destination broke the protocol or the call ended; reconnect and resend."""


class TlsRotated(Exception):
    """The TLS files changed: the batches in flight were acked; reconnect with the new files at once."""


def open_channel(
    address: str, *, destination: str, tls: ClientTls | None
) -> tuple[grpc.aio.Channel, TlsMaterial | None]:
    """A channel to a destination's gateway, with TLS when ``tls`` is set, and the TLS material
    it was made with (read now, so a rotated certificate is used from the next connection on)."""
    material = tls.material() if tls is not None else None
    if tls is not None:
        return tls.channel(address, target_name=destination, options=CHANNEL_OPTIONS, material=material), material
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS), None


async def tls_changed(tls: ClientTls, material: TlsMaterial, *, who: str) -> None:
    """Returns once the TLS files changed from ``material`` into usable ones (``who``: for the log)."""
    refused = ""
    while True:
        await asyncio.sleep(TLS_POLL_SECONDS)
        if not tls.changed(material):
            continue
        try:
            tls.material()
        except TlsError as exc:
            # Halfway through a rotation (a new certificate, the old key) or broken: the
            # connection made with the previous files stays up meanwhile.
            if str(exc) != refused:
                refused = str(exc)
                log.warning("%s: new TLS files not usable yet: %s", who, exc)
            continue
        return
