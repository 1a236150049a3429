"""The typed, frozen mesh config model: what the loader produces and every other part reads."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BrokerKind",
    "ClientCerts",
    "ClientToken",
    "KafkaSettings",
    "Limits",
    "MeshConfig",
    "NatsSettings",
    "RegionConfig",
    "RegionTls",
    "ReplicationMode",
    "RouteRule",
    "SecuritySettings",
    "Settings",
]


class BrokerKind(enum.StrEnum):
    NATS = "nats"
    KAFKA = "kafka"
    EMBEDDED = "embedded"


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsSettings:
    """JetStream layout of a NATS or embedded region (created by the gateway if missing)."""

    # JetStream cannot hold a stream over every subject, so mesh subjects live under a prefix,
    # then the origin region and the partition: topic `orders/created` of origin us-west in
    # partition 3 is subject `mesh.us-west.3.orders.created` (brokers/nats/_subjects.py).
    subject_prefix: str = "mesh."
    stream: str = "MESHGATE"
    # Partitions of the log, by a hash of the event key: replication's units of work, each sent
    # by one replica at a time. A fixed property of the stream (recorded in its metadata).
    partitions: int = 8
    replicas: int = 1
    # Retention: 0 means unlimited. When reached, JetStream discards the oldest events.
    max_age_seconds: float = 7 * 24 * 3600.0
    max_bytes: int = 0
    max_msgs: int = 0
    # Embedded only: fsync every write before acking (slower; the server's default syncs every 2 min).
    sync_always: bool = False
    # Embedded only: the server's max_payload, the largest event (data and headers) it stores.
    max_payload: int = 4 * 1024 * 1024
    # Embedded only: HOST:PORT of the server's HTTP monitoring (/varz, /jsz) for NATS tools;
    # None: a free port on the broker's host, shown by `meshgate up` and `meshgate status`.
    monitor: str | None = None
    # Embedded only: the cores the server runs on at once (its GOMAXPROCS); 0: half of this
    # machine's (at least 1), the rest left to the gateway and any other region on it.
    cpus: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaSettings:
    topic_prefix: str = "mesh."
    partitions: int = 6
    replication_factor: int = 1
    # Event ids the gateway remembers for duplicate detection at most (Kafka has none by id):
    # ~45 bytes each, the oldest forgotten first when more arrive within the window.
    max_window_ids: int = 200_000


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionTls:
    """A region's gateway certificate: served to every client, and shown as the client certificate
    when this region replicates to its peers. Absolute paths (relative ones are taken from the mesh
    file's folder by the loader); the files are re-read when they change."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionConfig:
    name: str
    brokers: tuple[str, ...] = ()
    kind: BrokerKind = BrokerKind.NATS
    # HOST:PORT where the region's gateway listens and where peers replicate to.
    gateway: str | None = None
    # HOST:PORT of the Prometheus endpoint.
    metrics: str | None = None
    nats: NatsSettings = field(default_factory=NatsSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    # Its gateway's certificate and key; required when security.ca is set.
    tls: RegionTls | None = None
    # Where the region is declared in the mesh file (1-based; 0 when built in code).
    line: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRule:
    # Zero-based position in event_mesh.routing: the rule's identity in explanations.
    index: int
    topic: str
    regions: tuple[str, ...]
    line: int = 0
    column: int = 0


# Events all append calls of a Kafka broker hold together between their start and their results
# (more wait, first come, first served): the default of KafkaBroker(max_append_events=), here so
# that the replication ingress below is derived from it (config may not import brokers). An
# event costs a few KB of encoded headers, record, batch and result until its ack, besides its
# own bytes. 2,000 is 4 batches of 500 (a replication link's batch) or 20 requests of 100:
# enough for the next produce request to fill while the one before it is answered (an append
# bench ran fastest with 2-4 calls of 500 at once). A destination's replication ingress held up
# to 16,000 without it (8 calls, 4 batches of 500 each being written): the gateway's peak went
# from ~115 to 181-210 MB.
KAFKA_MAX_APPEND_EVENTS = 2000
# Defaults of limits.max_replication_inflight_events by the region's broker (see Limits). A Kafka
# region's: what its appends hold, and twice that sorted and waiting behind them (6,000).
KAFKA_REPLICATION_INFLIGHT_EVENTS = 3 * KAFKA_MAX_APPEND_EVENTS
NATS_REPLICATION_INFLIGHT_EVENTS = 32_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Admission limits; each refusal names the limit and the measured size."""

    max_data_bytes: int = 1024 * 1024
    # Sum of the attribute and extension names and values of one event.
    max_attributes_bytes: int = 8 * 1024
    max_extensions: int = 32
    max_batch_events: int = 1000
    # Events admitted but not yet acked by the broker, per PublishStream and per gateway.
    max_inflight_events_per_stream: int = 20_000
    max_inflight_events: int = 100_000
    # Events all Replicate calls of a gateway hold at once, from before a batch is sorted until
    # its write is done (a batch larger than this is taken alone); 0 = by the region's broker
    # (replication_inflight_events).
    max_replication_inflight_events: int = 0
    # The gRPC server's own bounds, checked before a request is even parsed (restart to change).
    max_message_bytes: int = 4 * 1024 * 1024
    max_metadata_bytes: int = 16 * 1024
    # Per client (its token's name, or its IP address when there are no tokens).
    max_streams_per_client: int = 16
    # Events per second, 0 = unlimited; the bucket holds client_burst events (0 = one second of client_rate).
    client_rate: float = 0.0
    client_burst: int = 0
    # Events a Subscribe call holds between the broker and the client (its broker prefetch included).
    subscribe_buffer_events: int = 1000
    # gRPC connections (restart to change). The total is lowered to fit the process's open-file
    # limit; 0 = only that bound. Per peer IP address, 0 = no cap. A connection with no call for
    # idle_connection_timeout_seconds is closed, and one that has not finished its handshake
    # within that (at most 10 s) too.
    max_connections: int = 4096
    max_connections_per_address: int = 256
    idle_connection_timeout_seconds: float = 60.0
    # Bytes of events the same, per call (at least one event), and for all calls of a gateway:
    # each call reserves subscribe_buffer_bytes of the total, and one beyond it is refused.
    subscribe_buffer_bytes: int = 4 * 1024 * 1024
    subscribe_buffer_total_bytes: int = 256 * 1024 * 1024

    @property
    def client_bucket(self) -> int:
        """The client rate's bucket size: client_burst, else one second of client_rate (at least 1)."""
        if self.client_burst:
            return self.client_burst
        return max(1, math.ceil(self.client_rate))

    def replication_inflight_events(self, kind: BrokerKind) -> int:
        """``max_replication_inflight_events``, or when 0 the broker's default: a Kafka region's
        appends hold ``KAFKA_MAX_APPEND_EVENTS`` (2,000) at a time, so 6,000 keeps 4,000 sorted
        and waiting behind them (12 link batches of 500); a NATS region writes more at once the more it is given, so
        32,000 only stops a runaway number of calls (16 calls of 4 batches of 500)."""
        if self.max_replication_inflight_events:
            return self.max_replication_inflight_events
        return KAFKA_REPLICATION_INFLIGHT_EVENTS if kind is BrokerKind.KAFKA else NATS_REPLICATION_INFLIGHT_EVENTS


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientToken:
    """A client of the gateway's API: its name, its bearer token and what it may do."""

    # Shown in errors and logs in place of the token.
    name: str
    # The secret: never in repr, logs or messages. Always from an environment variable.
    token: str = field(repr=False)
    # The environment variable the token came from (its name is no secret; it says which one to fix).
    variable: str = ""
    # Topic patterns it may publish to, and patterns its Subscribe patterns must lie within.
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    # May call meshgate.v1.Admin (Status, Explain, Reload, Locate).
    admin: bool = False
    line: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    idempotency_window_seconds: float = 15 * 60.0
    shutdown_grace_seconds: float = 10.0
    # A replica that stops renewing a link's lease loses it within this long, and another
    # replica of the region takes the link over; renewals come every third of it.
    lease_ttl_seconds: float = 10.0
    # A link that sent a batch and has no answer within this long drops the call, resets to its
    # oldest unacked event and backs off: how soon a destination that hangs (a frozen broker, a
    # stalled gateway) shows as backing_off with growing lag.
    replication_ack_timeout_seconds: float = 30.0
    # Batches a link has sent and not yet had answered (per destination and process: on NATS a
    # link carries the partitions its process holds). Eight keep a loopback or LAN link up with
    # a full ingest rate (docs/PERFORMANCE.md, "One reader per process over its partitions");
    # a long round trip needs more (a link sends at most window x replication_batch_events per
    # round trip).
    replication_window: int = 8
    # Events a link sends in one batch at most (fewer when the log has no more within 20 ms).
    # Larger batches cost every process on the path fewer wake-ups and system calls per event:
    # 1,000 drained a catch-up ~9 % faster than 500, for 10-20 MB more at the peak of a gateway
    # that ingests and replicates at once (docs/PERFORMANCE.md, "Link batches of 1,000"): one
    # run's peak passed 150 MB, a target the project keeps. So 500, and 1,000 is a choice.
    replication_batch_events: int = 500
    limits: Limits = field(default_factory=Limits)


class ClientCerts(enum.StrEnum):
    """Whether clients other than peer regions must present a certificate of the mesh CA."""

    OFF = "off"
    OPTIONAL = "optional"
    REQUIRED = "required"


class ReplicationMode(enum.StrEnum):
    """How a gateway knows that a ``Replicate`` caller is a region of the mesh."""

    # By the peer's certificate (security.ca) or the regions' shared replication_secret: a mesh
    # of several regions with neither is refused when a gateway starts.
    AUTHENTICATED = "authenticated"
    # Nobody is asked: anyone who reaches a gateway can write events as any other region.
    # Only by explicit choice, and said loudly at start and in `meshgate config validate`.
    ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True, kw_only=True)
class SecuritySettings:
    # The mesh CA (PEM, may hold several certificates during a CA rotation). Set: every gateway
    # serves TLS only and Replicate needs a peer certificate naming a region of the mesh.
    ca: Path | None = None
    client_certs: ClientCerts = ClientCerts.REQUIRED
    # Empty: clients are not authenticated (anyone who reaches the port may call).
    tokens: tuple[ClientToken, ...] = ()
    # The secret every region of the mesh sends with Replicate, and asks of its callers. Like a
    # client token: always from one environment variable, never in repr, logs or messages.
    replication_secret: str | None = field(default=None, repr=False)
    # The variable it came from (no secret; it says which one to set).
    replication_secret_variable: str = ""
    replication: ReplicationMode = ReplicationMode.AUTHENTICATED
    # Where the security block (else the event_mesh key) is in the mesh file: what a refusal points at.
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @property
    def replication_authenticated(self) -> bool:
        """A Replicate caller must prove it is a region: by its certificate, the shared secret, or both."""
        return self.ca is not None or self.replication_secret is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshConfig:
    regions: tuple[RegionConfig, ...]
    routing: tuple[RouteRule, ...] = ()
    settings: Settings = field(default_factory=Settings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    # The file it came from ("<string>" when built in code) and the sha256 of its bytes.
    source: str = "<string>"
    sha256: str = ""

    def region(self, name: str) -> RegionConfig:
        for r in self.regions:
            if r.name == name:
                return r
        known = ", ".join(r.name for r in self.regions)
        raise KeyError(f"region {name!r} is not in {self.source} (regions: {known})")

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)
