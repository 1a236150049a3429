"""The gateway's Prometheus metrics, on a registry per gateway (several may share a process).

Names are prefixed ``meshgate_`` and carry their unit; every family has the ``region`` label,
the rest come from a small fixed set (destination, outcome, plus ``reason`` for refusals,
``state`` for link states and ``result`` for config reloads), never from a topic or an event.
Beside them: ``meshgate_build_info`` and the process's own ``process_*``/``python_*``
figures. What the gateway counts as things happen is here; what it reads at scrape time
(broker connection, readiness, replication links) comes from collectors that look at the live
objects, so nothing on the event path polls.
"""

from __future__ import annotations

import bisect
import importlib.metadata
import platform
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, Literal, get_args

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshgate.brokers import BrokerError, BrokerState, EventTooLargeError, StorageFullError
from meshgate.replicator._metrics import BoardCollector, LinkCollector

if TYPE_CHECKING:
    from meshgate.brokers import Broker
    from meshgate.replicator import LinkBoard, Replicator


__all__ = [
    "REFUSAL_REASONS",
    "BrokerCollector",
    "GatewayMetrics",
    "RefusalReason",
    "broker_reason",
    "register_process_metrics",
]

# Why events were refused; a fixed set, so a label never grows with the input (and a typo is a
# type error, not a new series).
RefusalReason = Literal[
    "invalid",
    "too_large",
    "unavailable",
    "storage_full",
    "backpressure",
    "shutting_down",
    "permission",
    "unauthenticated",
    "rate_limited",
]
REFUSAL_REASONS: Final[tuple[RefusalReason, ...]] = get_args(RefusalReason)
# Outcomes of replicated events arriving here: written, recognised as already here, refused for good.
REPLICATED_OUTCOMES: Final = ("stored", "duplicate", "refused")
_PUBLISH_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_REPLICATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def broker_reason(error: BrokerError) -> RefusalReason:
    """The refusal reason of a broker's answer, by the error's class (never by its message).

    Out of room (retry once room is made), any other retriable failure, too large for the
    broker, or refused there for good.
    """
    if isinstance(error, StorageFullError):
        return "storage_full"
    if error.retriable:
        return "unavailable"
    return "too_large" if isinstance(error, EventTooLargeError) else "invalid"


class BrokerCollector(Collector):
    """``meshgate_broker_connected``, read from the broker's state at scrape time."""

    def __init__(self, region: str, broker: Broker) -> None:
        self._region = region
        self._broker = broker

    def describe(self) -> Iterable[Metric]:
        return self._families(0.0)

    def collect(self) -> Iterable[Metric]:
        return self._families(1.0 if self._broker.state is BrokerState.CONNECTED else 0.0)

    def _families(self, value: float) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "meshgate_broker_connected",
            "1 while the gateway's client is connected to its region's broker, 0 otherwise.",
            labels=["region"],
        )
        g.add_metric([self._region], value)
        yield g


# Counters and histograms get no ``_created`` series: they doubled the exposition and no
# query reads them (the OpenMetrics format still carries the created time where it has a field).
# Process-wide, as prometheus_client's own switch is; every gateway of a process wants it.
disable_created_metrics()  # type: ignore[no-untyped-call]


def _version() -> str:
    try:
        return importlib.metadata.version("meshgate")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree without an install
        return "unknown"


def register_process_metrics(registry: CollectorRegistry, *, region: str, version: str = "") -> None:
    """What every meshgate process's registry has, a gateway's or a replicator's:
    ``meshgate_build_info{version,python,region}`` (``version``: of meshgate, default the installed
    package's), and ``process_*`` (CPU, memory, descriptors, start time), ``python_info`` and
    ``python_gc_*``: per process, without a region (``meshgate up`` runs several regions in one
    process; their registries each show the same figures). The default registry's collectors, shared."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        try:
            registry.register(collector)
        except ValueError:  # the caller's registry has it already (e.g. the default registry)
            continue
    Gauge(
        "meshgate_build_info",
        "1, labelled with the running meshgate version, the Python version and the region.",
        ["version", "python", "region"],
        registry=registry,
    ).labels(version=version or _version(), python=platform.python_version(), region=region).set(1)


class GatewayMetrics:
    def __init__(self, *, region: str, registry: CollectorRegistry, version: str = "") -> None:
        """``version``: of meshgate, for ``meshgate_build_info`` (default: the installed package's)."""
        self.region = region
        self.registry = registry
        register_process_metrics(registry, region=region, version=version)
        self.ready = Gauge(
            "meshgate_ready",
            "1 while the gateway is ready for traffic (what /readyz answers 200 for: serving, its broker "
            "connected and able to store), 0 otherwise.",
            ["region"],
            registry=registry,
        ).labels(region=region)
        self.events = Counter(
            "meshgate_events_total",
            "Events that reached admission, by outcome (accepted, duplicate, rejected).",
            ["region", "outcome"],
            registry=registry,
        ).labels  # bound below per outcome
        self.accepted = self.events(region=region, outcome="accepted")
        self.duplicate = self.events(region=region, outcome="duplicate")
        self.rejected = self.events(region=region, outcome="rejected")
        refused = Counter(
            "meshgate_events_refused_total",
            "Published events refused, by reason: invalid, too_large, unavailable (broker; retry), "
            "storage_full (the broker has no room; retry once room is made), backpressure (gateway full), "
            "shutting_down, permission (a client outside its publish list, or a region not allowed to replicate "
            "here), unauthenticated (no valid client token), rate_limited (over client_rate).",
            ["region", "reason"],
            registry=registry,
        )
        self.refused = {reason: refused.labels(region=region, reason=reason) for reason in REFUSAL_REASONS}
        self.publish_seconds = Histogram(
            "meshgate_publish_duration_seconds",
            "From a batch's arrival to its broker acknowledgement.",
            ["region"],
            registry=registry,
            buckets=_PUBLISH_BUCKETS,
        ).labels(region=region)
        self.inflight = Gauge(
            "meshgate_inflight_events",
            "Events admitted and not yet acknowledged by the broker.",
            ["region"],
            registry=registry,
        ).labels(region=region)
        self.subscribe_buffered = Gauge(
            "meshgate_subscribe_buffered_events",
            "Events Subscribe calls have from the broker and have not yet handed to gRPC (with the one batch "
            "each prefetches, at most subscribe_buffer_events per call).",
            ["region"],
            registry=registry,
        ).labels(region=region)
        self.subscribe_buffered_bytes = Gauge(
            "meshgate_subscribe_buffered_bytes",
            "Bytes of the events Subscribe calls have from the broker and have not yet handed to gRPC (the batch "
            "each is sending: at most a quarter of subscribe_buffer_bytes per call, which also bounds its prefetch "
            "and gRPC's copies; each call reserves subscribe_buffer_bytes of subscribe_buffer_total_bytes).",
            ["region"],
            registry=registry,
        ).labels(region=region)
        replicated = Counter(
            "meshgate_replicated_events_total",
            "Events other regions replicated to this one, by outcome: stored, duplicate (a resend "
            "recognised by dedup), refused (for good: invalid or too large here).",
            ["region", "outcome"],
            registry=registry,
        )
        self.replicated = {
            outcome: replicated.labels(region=region, outcome=outcome) for outcome in REPLICATED_OUTCOMES
        }
        self.replication_latency = Histogram(
            "meshgate_replication_latency_seconds",
            "From when the origin region's broker stored a replicated event (JetStream's stored time, Kafka's "
            "record timestamp) to its write in this region.",
            ["region"],
            registry=registry,
            buckets=_REPLICATION_BUCKETS,
        ).labels(region=region)

    # --- what the event path calls ---------------------------------------------------------

    def refuse(self, reason: RefusalReason, n: int = 1) -> None:
        """Counts ``n`` refused events; ``reason`` is one of ``REFUSAL_REASONS``."""
        if n > 0:
            self.refused[reason].inc(n)

    def observe_replication_latencies(self, latencies: Sequence[float]) -> None:
        """The end-to-end latencies (origin time -> stored here) of a batch's replicated events, in
        one go: one lock per bucket, not per event."""
        hist = self.replication_latency
        bounds = getattr(hist, "_upper_bounds", None)
        buckets = getattr(hist, "_buckets", None)
        total = getattr(hist, "_sum", None)
        if bounds is None or buckets is None or total is None:  # another prometheus_client
            for latency in latencies:
                hist.observe(latency)
            return
        counts = [0] * len(bounds)
        for latency in latencies:
            # The first bound at or above it, as Histogram.observe picks (the last one is +Inf).
            counts[bisect.bisect_left(bounds, latency)] += 1
        for bucket, n in zip(buckets, counts, strict=True):
            if n:
                bucket.inc(n)
        total.inc(sum(latencies))

    # --- what is read at scrape time -------------------------------------------------------

    def watch(
        self,
        *,
        broker: Broker,
        replicator: Replicator | None,
        board: LinkBoard | None = None,
        board_pids: Callable[[], Collection[int]] | None = None,
    ) -> None:
        """Registers the collectors reading the broker's state and the replication links.

        The links are read from ``replicator`` when they run here, else from ``board`` (run elsewhere;
        ``board_pids``: this process's workers, whose counters it exports)."""
        self.registry.register(BrokerCollector(self.region, broker))
        if replicator is not None:
            self.registry.register(LinkCollector(replicator))
        elif board is not None:
            self.registry.register(BoardCollector(board, board_pids))
