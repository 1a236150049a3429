"""The gateway's Prometheus metrics, on a registry per gateway (several may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["GatewayMetrics"]


class GatewayMetrics:
    def __init__(self, *, region: str, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter(
            "meshgate_events_total",
            "Events that reached admission, by outcome (accepted, duplicate, rejected).",
            ["region", "outcome"],
            registry=registry,
        ).labels  # bound below per outcome
        self.accepted = self.events(region=region, outcome="accepted")
        self.duplicate = self.events(region=region, outcome="duplicate")
        self.rejected = self.events(region=region, outcome="rejected")
        self.publish_seconds = Histogram(
            "meshgate_publish_duration_seconds",
            "From a batch's arrival to its broker acknowledgement.",
            ["region"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        ).labels(region=region)
        self.inflight = Gauge(
            "meshgate_inflight_events",
            "Events admitted and not yet acknowledged by the broker.",
            ["region"],
            registry=registry,
        ).labels(region=region)
