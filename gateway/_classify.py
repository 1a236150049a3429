"""Sorting a replicated batch's events, and recording what its write did.

Each event of a ``Replicate`` request is a resend (already handled here), refused before,
invalid, or to be written; after the write, each written one is stored, a duplicate (the
broker's id window), refused for good or not stored (the call ends, the source resends).
The events come raw, as the source's broker stored them (``RawEvents``): nothing is decoded.
A request of decoded ``events`` (the protocol still has them) is encoded to raw first, so
there is one path.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from itertools import repeat

import grpc

from meshgate.brokers import AppendResult, BrokerError
from meshgate.brokers._codec import (
    check_header_lines,
    escape_header_value,
    header_lines,
    plain_header_blocks,
    plain_values,
)
from meshgate.brokers._headers import ORIGIN_NAME, RouteMatcher, each_contains, header_values
from meshgate.gateway._dedup import OriginState
from meshgate.gateway._metrics import GatewayMetrics
from meshgate.gateway._replication_peer import CallFailed, PeerCheck
from meshgate.router import validate_topic
from meshgate.v1 import event_pb2, replication_pb2

__all__ = ["Classifier", "ProcessedBatch", "as_raw", "event_results"]

_ACCEPTED = event_pb2.OUTCOME_ACCEPTED
_DUPLICATE = event_pb2.OUTCOME_DUPLICATE
_REJECTED = event_pb2.OUTCOME_REJECTED
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_CRLF = b"\r\n"
# An id's own line, for ids that need no escaping: "\x00" (escaped in any id) splits them.
_ID_LINES_HEAD = "\r\nce-id: "
_ID_LINES_SEP = "\r\n\x00\r\nce-id: "


class ProcessedBatch:
    """One request: its events' indices to write and the refusals found on the way."""

    __slots__ = (
        "duplicates",
        "ids",
        "last",
        "refused",
        "request",
        "seqs",
        "w_data",
        "w_headers",
        "w_ids",
        "w_index",
        "w_seqs",
        "w_streams",
        "w_topics",
        "written",
    )

    def __init__(self, request: replication_pb2.ReplicateRequest) -> None:
        self.request = request
        self.ids: list[str] = []
        self.seqs: list[int] = []
        self.refused: list[replication_pb2.RawRefusal] = []
        self.duplicates = 0
        self.w_index: list[int] = []
        self.w_ids: list[str] = []
        self.w_topics: list[str] = []
        self.w_headers: list[bytes] = []
        self.w_data: list[bytes] = []
        self.w_seqs: list[int] = []
        self.w_streams: list[str] = []
        self.written: list[AppendResult | BrokerError] = []
        # Highest origin sequence of each origin stream in the request.
        self.last: dict[str, int] = {}


def as_raw(request: replication_pb2.ReplicateRequest) -> tuple[replication_pb2.ReplicateRequest, dict[int, str]]:
    """A request of decoded ``events`` as the raw request a link sends, and the events that
    cannot be encoded (index -> why; their header lines then hold only what the sorting reads)."""
    raw = replication_pb2.RawEvents()
    invalid: dict[int, str] = {}
    for i, ev in enumerate(request.events):
        try:
            lines = header_lines(ev)
        except ValueError as exc:
            # Refused by the sorting, after the origin and sequence checks it still needs.
            invalid[i] = f"event cannot be written: {exc}"
            bare = event_pb2.Event(id=ev.id, source=ev.source, type=ev.type, origin=ev.origin, route=ev.route)
            lines = header_lines(bare)
        raw.ids.append(ev.id)
        raw.topics.append(ev.topic)
        raw.sequences.append(ev.sequence)
        raw.streams.append(ev.stream)
        raw.headers.append(lines)
        raw.data.append(ev.data)
    if not any(raw.streams):
        del raw.streams[:]
    return (
        replication_pb2.ReplicateRequest(source_region=request.source_region, batch_id=request.batch_id, raw=raw),
        invalid,
    )


def event_results(batch: ProcessedBatch, events: list[event_pb2.Event] | None) -> list[event_pb2.EventResult] | None:
    """The per-event answer of a request that came as decoded ``events`` (None for a raw one)."""
    if events is None:
        return None
    refused = {r.index: r.message for r in batch.refused}
    written = dict(zip(batch.w_index, batch.written, strict=True))
    results = []
    for i, ev in enumerate(events):
        message = refused.get(i)
        res = written.get(i)
        if message is not None:
            results.append(event_pb2.EventResult(id=ev.id, outcome=_REJECTED, code=_INVALID, message=message))
        elif isinstance(res, AppendResult):
            outcome = _DUPLICATE if res.duplicate else _ACCEPTED
            results.append(event_pb2.EventResult(id=ev.id, outcome=outcome, sequence=res.sequence, route=ev.route))
        else:
            results.append(event_pb2.EventResult(id=ev.id, outcome=_DUPLICATE, route=ev.route))
    return results


class Classifier:
    """Sorts raw batches against an origin's dedup state and applies their writes' outcomes.

    What repeats across events is decided once: a topic's problem, whether a route header
    names this region.
    """

    def __init__(self, *, region: str, metrics: GatewayMetrics, peers: PeerCheck) -> None:
        self.region = region
        self._metrics = metrics
        self._peers = peers
        self._topic_problems: dict[str, str | None] = {}
        self._route_here = RouteMatcher(region)
        # The mesh's regions: a handful.
        self._origins: dict[str, tuple[bytes, bytes, bytes]] = {}

    def _origin_lines(self, origin: str) -> tuple[bytes, bytes, bytes]:
        """The origin's escaped value, its header line, and that line after another one."""
        lines = self._origins.get(origin)
        if lines is None:
            value = escape_header_value(origin).encode()
            line = ORIGIN_NAME + b": " + value + b"\r\n"
            lines = self._origins[origin] = (value, line, b"\r\n" + line)
        return lines

    def _topic_problem(self, topic: str) -> str | None:
        cache = self._topic_problems
        if topic in cache:
            return cache[topic]
        if len(cache) > 65_536:
            cache.clear()
        problem = cache[topic] = validate_topic(topic)
        return problem

    def _check_columns(self, origin: str, request: replication_pb2.ReplicateRequest, *, peer_checked: bool) -> None:
        raw = request.raw
        n = len(raw.ids)
        counts = (len(raw.sequences), len(raw.topics), len(raw.headers), len(raw.data))
        if all(c == n for c in counts) and len(raw.streams) in (0, n) and len(raw.stored_unix_nanos) in (0, n):
            return
        if peer_checked:
            self._peers.check_raw_origins(origin, request)  # a foreign origin is refused as such first
        raise CallFailed(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"raw batch {request.batch_id} has {n} ids, {counts[0]} sequences, {counts[1]} topics, "
            f"{counts[2]} header lines, {counts[3]} payloads, {len(raw.streams)} streams and "
            f"{len(raw.stored_unix_nanos)} stored times; it needs one of each per event (streams: none when the "
            "source's log is one stream; stored times: none when the source does not send them)",
        )

    def _origin_problem(
        self, origin: str, request: replication_pb2.ReplicateRequest, i: int, lines: bytes, *, peer_checked: bool
    ) -> str | None:
        """The one origin check of an event (with its sequence's): why it has no place in the
        origin's streams, or None. ``peer_checked``: another origin ends the call instead."""
        origin_value, origin_line, origin_mid = self._origin_lines(origin)
        # The decoder keeps the last of repeated headers: exactly one mg-origin (in any case),
        # the sender's, and that one its own exact line. Fast: the text mg-origin once, and
        # that is the sender's line.
        exact = lines.startswith(origin_line) or origin_mid in lines
        problem = None
        if not (exact and lines.lower().count(ORIGIN_NAME) == 1):
            origins = header_values(lines, ORIGIN_NAME)
            if origins != [origin_value]:
                if peer_checked:
                    raise self._peers.foreign_origin(origin, request, request.raw.ids[i], origins)
                if exact:
                    # A second one would relabel the event.
                    problem = f"event carries more than one origin header; it must carry exactly one, {origin!r}"
        if request.raw.sequences[i] < 1:
            return "event carries no position in its origin's log (sequence)"
        if not exact:
            return f"event origin is not the sending region {origin!r}"
        return problem

    def _event_problem(self, eid: str, topic: str, lines: bytes) -> str | None:
        """Why an event of the origin may not be written here, or None."""
        if not eid:
            return "event has no id"
        id_line = b"ce-id: %b\r\n" % escape_header_value(eid).encode()
        if not (lines.startswith(id_line) or (b"\r\n" + id_line in lines)):
            return "event id is not the one in its ce-id header"
        if not self._route_here(lines):
            return f"event's route does not name region {self.region}"
        return self._topic_problem(topic) or check_header_lines(lines)

    def _plain(
        self, origin: str, state: OriginState, request: replication_pb2.ReplicateRequest
    ) -> ProcessedBatch | None:
        """The batch when every event of it is to be written, decided by whole-batch checks that
        iterate in C; None when any check does not pass (``classify`` then sorts event by event,
        and says why of each). The checks are ``classify``'s own, event by event:

        * its header lines pass ``check_header_lines`` and end with CRLF (so no line crosses
          from one event's lines into the next, and a count over all of them is a sum of each's);
        * the sender's exact ``mg-origin`` line in each, and the text mg-origin (any case) as
          many times as there are events: once in each;
        * its id not empty, needing no escaping, its exact ``ce-id`` line in its lines;
        * one ``mg-route`` line in each (so the first is the only one), naming this region;
        * every distinct topic valid; a sequence of at least 1, above what its stream handled,
          in a stream with nothing above its acked position and nothing refused.
        """
        raw = request.raw
        # Each read of a protobuf repeated field makes new Python objects: read once.
        headers = list(raw.headers)
        ids = list(raw.ids)
        seqs = list(raw.sequences)
        n = len(ids)
        if not n or min(seqs) < 1 or not min(map(len, ids)):
            return None
        if not plain_header_blocks(headers) or not plain_values(ids):
            return None
        _, _, origin_mid = self._origin_lines(origin)
        lined = list(map(_CRLF.__add__, headers))
        joined = b"".join(lined)
        if not each_contains(lined, repeat(origin_mid)) or joined.lower().count(ORIGIN_NAME) != n:
            return None
        id_lines = (_ID_LINES_HEAD + _ID_LINES_SEP.join(ids) + "\r\n").encode().split(b"\x00")
        if not each_contains(lined, id_lines):
            return None
        if not self._route_here.names_all(lined, joined):
            return None
        topics = list(raw.topics)
        if any(self._topic_problem(topic) is not None for topic in set(topics)):
            return None
        names = list(raw.streams)
        if not names:
            highs = {"": max(seqs)}
            lows = {"": min(seqs)}
        elif len(set(names)) == 1:
            highs = {names[0]: max(seqs)}
            lows = {names[0]: min(seqs)}
        else:
            # Several streams (a NATS source's link sends the partitions its process holds in one
            # request): each stream's lowest and highest, in one pass.
            highs, lows = {}, {}
            for name, seq in zip(names, seqs, strict=True):
                if seq > highs.get(name, 0):
                    highs[name] = seq
                if seq < lows.get(name, seq + 1):
                    lows[name] = seq
        for name, low in lows.items():
            stream = state.streams.get(name)
            if stream is not None and (stream.above or stream.refused or low <= stream.acked):
                return None
        batch = ProcessedBatch(request)
        batch.ids = batch.w_ids = ids
        batch.seqs = batch.w_seqs = seqs
        batch.w_index = list(range(n))
        batch.w_topics = topics
        batch.w_headers = headers
        batch.w_data = list(raw.data)
        batch.w_streams = names or [""] * n
        batch.last = highs
        return batch

    def classify(
        self,
        origin: str,
        state: OriginState,
        request: replication_pb2.ReplicateRequest,
        *,
        peer_checked: bool,
        invalid: Mapping[int, str] | None = None,
    ) -> ProcessedBatch:
        """Sorts a raw batch's events; ``peer_checked`` (TLS on: ``origin`` is the peer's certificate
        region) makes an event carrying any origin header but exactly the peer's end the call.
        ``invalid``: events already known not to be writable (index -> why)."""
        self._check_columns(origin, request, peer_checked=peer_checked)
        if not invalid:
            plain = self._plain(origin, state, request)
            if plain is not None:
                return plain
        return self._sort(origin, state, request, peer_checked=peer_checked, invalid=invalid)

    def _sort(
        self,
        origin: str,
        state: OriginState,
        request: replication_pb2.ReplicateRequest,
        *,
        peer_checked: bool,
        invalid: Mapping[int, str] | None,
    ) -> ProcessedBatch:
        """``classify`` event by event: each event's checks, and the reason of each refusal."""
        raw = request.raw
        batch = ProcessedBatch(request)
        ids = batch.ids = list(raw.ids)
        seqs = batch.seqs = list(raw.sequences)
        topics = list(raw.topics)
        headers = list(raw.headers)
        datas = list(raw.data)
        names = list(raw.streams)
        refused = batch.refused
        streams = state.streams
        last = batch.last
        duplicates = 0
        _, origin_line, origin_mid = self._origin_lines(origin)
        for i, seq in enumerate(seqs):
            lines = headers[i]
            # Fast: the text mg-origin once, and that is the sender's line (_origin_problem says why not).
            if seq < 1 or not (
                (lines.startswith(origin_line) or origin_mid in lines) and lines.lower().count(ORIGIN_NAME) == 1
            ):
                problem = self._origin_problem(origin, request, i, lines, peer_checked=peer_checked)
            else:
                problem = None
            if problem is not None:
                # No place in any of the origin's streams to count as handled.
                refused.append(replication_pb2.RawRefusal(index=i, code=_INVALID, message=problem))
                continue
            name = names[i] if names else ""
            problem = (invalid.get(i) if invalid else None) or self._event_problem(ids[i], topics[i], lines)
            stream = streams.get(name) or state.stream(name)
            if problem is not None:
                refused.append(replication_pb2.RawRefusal(index=i, code=_INVALID, message=problem))
            elif seq in stream.refused:
                refused.append(replication_pb2.RawRefusal(index=i, code=_INVALID, message=stream.refused[seq]))
            elif stream.is_resend(seq):
                duplicates += 1
            else:
                batch.w_index.append(i)
                batch.w_ids.append(ids[i])
                batch.w_topics.append(topics[i])
                batch.w_headers.append(lines)
                batch.w_data.append(datas[i])
                batch.w_seqs.append(seq)
                batch.w_streams.append(name)
            if seq > last.get(name, 0):
                last[name] = seq
        batch.duplicates = duplicates
        return batch

    def apply(self, state: OriginState, batch: ProcessedBatch) -> BrokerError | None:
        """Records the batch's outcome in the state, the metrics and the refusals of its answer;
        the retriable error that stops the call, if any."""
        failure: BrokerError | None = None
        stored = duplicate = 0  # added once per batch: a counter update takes a lock
        refused = batch.refused
        for slot, name, res in zip(batch.w_index, batch.w_streams, batch.written, strict=True):
            if type(res) is AppendResult:
                if res.duplicate:
                    duplicate += 1
                else:
                    stored += 1
            elif isinstance(res, BrokerError):
                if not res.retriable:
                    message = f"region {self.region} refused it for good: {res}"
                    state.stream(name).refuse(batch.seqs[slot], message)
                    refused.append(replication_pb2.RawRefusal(index=slot, code=_INVALID, message=message))
                elif failure is None:
                    failure = res
        if failure is not None:
            # What did get stored is remembered for the resend that follows.
            for seq, name, res in zip(batch.w_seqs, batch.w_streams, batch.written, strict=True):
                if type(res) is AppendResult:
                    state.stream(name).above.add(seq)
        else:
            # Each stream came in its own order after everything acked before: all of it up to
            # the batch's highest sequence of that stream is handled.
            for name, seq in batch.last.items():
                state.stream(name).advance(seq)
        self._count(batch, stored, duplicate + batch.duplicates)
        batch.duplicates += duplicate
        return failure

    def _count(self, batch: ProcessedBatch, stored: int, duplicate: int) -> None:
        metrics = self._metrics
        if stored:
            metrics.replicated["stored"].inc(stored)
            # From when the origin's broker stored each event (never the producer's CloudEvents
            # time, which a client sets as it likes); a source that sends no stored times gives none.
            stored_at = batch.request.raw.stored_unix_nanos
            if stored_at:
                now = time.time_ns()
                latencies = [
                    # Clocks of two regions differ a little: a negative latency is a zero.
                    max(0, now - stored_at[i]) / 1e9
                    for i, res in zip(batch.w_index, batch.written, strict=True)
                    if type(res) is AppendResult and not res.duplicate
                ]
                metrics.observe_replication_latencies(latencies)
        if duplicate:
            metrics.replicated["duplicate"].inc(duplicate)
        if batch.refused:
            metrics.replicated["refused"].inc(len(batch.refused))
