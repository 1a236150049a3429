"""Replication links: this region's log to every other region's gateway, acked, ordered, resumable."""

from meshgate.replicator._link import DLQ_TOPIC_PREFIX, Link, LinkOptions, LinkState, dead_letter_event
from meshgate.replicator._replicator import DEFAULT_LEASE_TTL, Replicator

__all__ = [
    "DEFAULT_LEASE_TTL",
    "DLQ_TOPIC_PREFIX",
    "Link",
    "LinkOptions",
    "LinkState",
    "Replicator",
    "dead_letter_event",
]
