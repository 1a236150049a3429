"""Who may replicate into this region, and as whom: the Replicate call's peer checks.

With TLS on, the caller is the region its verified certificate names and may forward only
that region's events; with a replication secret, the call carries it (``ReplicationGuard``);
in every case the source region is another region of the mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from meshgate.brokers._codec import escape_header_value
from meshgate.brokers._headers import ORIGIN_NAME, header_values
from meshgate.gateway._metrics import GatewayMetrics
from meshgate.tls import peer_identity
from meshgate.v1 import replication_pb2

__all__ = ["CallFailed", "PeerCheck", "request_size"]


class CallFailed(Exception):
    """A request the call cannot go on after; ends it with ``code``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def request_size(request: replication_pb2.ReplicateRequest) -> int:
    """The number of events a request carries, decoded or raw."""
    return len(request.events) or len(request.raw.ids)


class PeerCheck:
    """The peer checks of one region's Replicate handler; ``region_names`` reads the mesh in force."""

    __slots__ = ("_metrics", "_region_names", "region")

    def __init__(self, *, region: str, metrics: GatewayMetrics, region_names: Callable[[], Sequence[str]]) -> None:
        self.region = region
        self._metrics = metrics
        self._region_names = region_names

    async def peer_region(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The region of the caller's verified certificate; the call is aborted otherwise."""
        identity = peer_identity(context.auth_context())
        if not identity.verified:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"region {self.region} takes Replicate only from a peer showing its region's certificate"
                " of the mesh CA",
            )
        names = self._region_names()
        known = [r for r in identity.regions if r in names and r != self.region]
        if len(identity.regions) != 1 or not known:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"region {self.region} takes Replicate only from another region of the mesh; the caller showed"
                f" {identity.describe()} (regions: {', '.join(names)})",
            )
        return known[0]

    def source_refusal(self, first: replication_pb2.ReplicateRequest, peer: str | None) -> CallFailed | None:
        """Why the call's source region (its first request's) may not replicate here, or None."""
        origin = first.source_region
        names = self._region_names()
        if peer is not None and origin != peer:
            self._metrics.refuse("permission", request_size(first))
            return CallFailed(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of region {peer} cannot replicate as region {origin!r}",
            )
        if origin not in names or origin == self.region:
            self._metrics.refuse("permission", request_size(first))
            return CallFailed(
                grpc.StatusCode.PERMISSION_DENIED,
                f"region {origin!r} may not replicate to {self.region} (mesh regions: {', '.join(names)})",
            )
        return None

    def refuse_foreign(self, peer: str, request: replication_pb2.ReplicateRequest, claimed: str) -> CallFailed:
        """What ends a call whose batch holds an event of another origin than the peer's (TLS on)."""
        self._metrics.refuse("permission", request_size(request))
        return CallFailed(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{claimed}; the certificate of region {peer} may forward only events of region {peer}",
        )

    def foreign_origin(
        self, peer: str, request: replication_pb2.ReplicateRequest, eid: str, origins: list[bytes]
    ) -> CallFailed:
        shown = b", ".join(origins).decode("utf-8", "replace") or "none"
        return self.refuse_foreign(peer, request, f"event {eid} carries the origin header(s) {shown}")

    def check_event_origins(self, peer: str, request: replication_pb2.ReplicateRequest) -> None:
        """A peer forwards only its own events: a decoded one of another origin ends the call
        (CallFailed) before anything of its batch is stored. Raw events are checked as they are sorted."""
        for ev in request.events:
            if ev.origin != peer:
                raise self.refuse_foreign(peer, request, f"event {ev.id} claims origin {ev.origin!r}")

    def check_raw_origins(self, peer: str, request: replication_pb2.ReplicateRequest) -> None:
        """The sorting's origin refusal for a raw batch it does not sort (a malformed one), so
        that another origin in it is still refused as such. Slow, and only on that error path."""
        raw = request.raw
        own = escape_header_value(peer).encode()
        for i, lines in enumerate(raw.headers[:]):
            origins = header_values(lines, ORIGIN_NAME)
            if origins != [own]:
                raise self.foreign_origin(peer, request, raw.ids[i] if i < len(raw.ids) else f"#{i}", origins)
