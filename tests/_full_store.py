"""A nats-server that runs out of room: JetStream capped by ``max_file_store`` (server wide).

Only for the tests that fill it; never the shared ``nats_server`` fixture. Room is made again
with a native client (purging a stream), as an operator would.
"""

from __future__ import annotations

import json
from typing import Any

import nats

from tests._servers import ConfiguredNats

__all__ = ["SmallStoreNats", "fill_with_filler", "purge_stream"]

FILLER_STREAM = "FILLER"


class SmallStoreNats(ConfiguredNats):
    """An ``EmbeddedNats`` whose JetStream keeps at most ``max_file_store`` bytes on file."""

    def __init__(self, *, max_file_store: int, **kwargs: Any) -> None:
        super().__init__(jetstream=f"  max_file_store: {max_file_store}\n", **kwargs)
        self.max_file_store = max_file_store


async def _request(url: str, subject: str, body: dict[str, object] | None = None) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        msg = await nc.request(subject, json.dumps(body).encode() if body is not None else b"", timeout=5)
    finally:
        await nc.close()
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def purge_stream(url: str, stream: str) -> int:
    """Purges every message of ``stream`` with a native client; how many were purged."""
    reply = await _request(url, f"$JS.API.STREAM.PURGE.{stream}")
    assert reply.get("success") is True, reply
    return int(reply.get("purged", 0))


async def fill_with_filler(url: str, *, chunk: int = 8192, limit: int = 100_000) -> int:
    """Fills the server's JetStream with a stream of its own (``FILLER``) until it refuses.

    Returns how many filler messages were stored. Meshgate's own streams are left alone, so
    what they hold afterwards is only what Meshgate wrote.
    """
    created = await _request(
        url,
        f"$JS.API.STREAM.CREATE.{FILLER_STREAM}",
        {"name": FILLER_STREAM, "subjects": ["filler.>"], "storage": "file", "max_bytes": -1},
    )
    assert "error" not in created, created
    nc = await nats.connect(url)
    stored = 0
    try:
        js = nc.jetstream(timeout=5)
        payload = b"f" * chunk
        for i in range(limit):
            try:
                await js.publish(f"filler.{i}", payload)
            except nats.js.errors.APIError as exc:
                # 10023 insufficient resources: the server's max_file_store is reached.
                assert exc.err_code == 10023, exc
                return stored
            stored += 1
    finally:
        await nc.close()
    raise AssertionError(f"JetStream took {stored} filler messages without running out of room")
