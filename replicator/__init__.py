"""Replication links: this region's log to every other region's gateway, acked, ordered, resumable."""

from meshgate.replicator._board import NOTE_TTL, BoardNote, BoardPoster, LinkBoard, board_prefix
from meshgate.replicator._group import LinkGroup
from meshgate.replicator._link import DLQ_TOPIC_PREFIX, Link, LinkOptions, LinkState, dead_letter_event
from meshgate.replicator._replicator import DEFAULT_LEASE_TTL, Replicator

__all__ = [
    "DEFAULT_LEASE_TTL",
    "DLQ_TOPIC_PREFIX",
    "NOTE_TTL",
    "BoardNote",
    "BoardPoster",
    "Link",
    "LinkBoard",
    "LinkGroup",
    "LinkOptions",
    "LinkState",
    "Replicator",
    "board_prefix",
    "dead_letter_event",
]
