"""The NATS adapter's names: the buckets beside the stream, reader consumers, durable consumer generations.

Mesh topic <-> subject is the layout's (``_subjects.SubjectLayout``: prefix, origin, partition, levels).
"""

from __future__ import annotations

import secrets

__all__ = [
    "GENERATION_SEP",
    "board_bucket",
    "check_durable_name",
    "checkpoint_bucket",
    "generation_name",
    "generation_of",
    "kv_stream",
    "kv_subject_prefix",
    "lease_bucket",
    "reader_name",
]

# A durable consumer's generations are named <name>@<n>. '@' is outside the alphabet of region
# names ([A-Za-z0-9_-], so of link names mg-link-<destination>) and is refused in a name given
# to durable_consumer: <name>@<n> can never be another name's generation (with '-', mg-link-b-2
# would be both destination b's generation 2 and a name of destination b-2), and
# JetStream takes it in a consumer name (which may not hold '.', '*', '>', whitespace, slashes).
GENERATION_SEP = "@"


def checkpoint_bucket(stream: str) -> str:
    """The KV bucket of the checkpoints kept beside ``stream``."""
    return f"{stream}_CHECKPOINTS"


def lease_bucket(stream: str) -> str:
    """The KV bucket of the leases kept beside ``stream``."""
    return f"{stream}_LEASES"


def board_bucket(stream: str) -> str:
    """The KV bucket of the notes (the link status board) kept beside ``stream``."""
    return f"{stream}_LINKS"


def kv_stream(bucket: str) -> str:
    """The JetStream stream that holds KV bucket ``bucket``."""
    return f"KV_{bucket}"


def kv_subject_prefix(bucket: str) -> str:
    """The subjects of KV bucket ``bucket`` are this prefix and a key."""
    return f"$KV.{bucket}."


def reader_name() -> str:
    """A new name for a reader's ephemeral consumer."""
    return f"mg-read-{secrets.token_hex(8)}"


def check_durable_name(name: str) -> None:
    """Refuses a durable consumer name that is not a valid consumer name or could look like a generation."""
    if not name or GENERATION_SEP in name or any(c in name for c in ".*> \t\r\n/\\"):
        raise ValueError(
            f"durable consumer name {name!r} must be non-empty, without {GENERATION_SEP!r}, '.', '*', '>', "
            "whitespace or slashes"
        )


def generation_name(base: str, number: int) -> str:
    """The consumer of generation ``number`` of durable consumer ``base``."""
    return f"{base}{GENERATION_SEP}{number}"


def generation_of(name: str, base: str) -> int | None:
    """The generation number of consumer ``name`` of durable consumer ``base``, or None."""
    head, sep, number = name.rpartition(GENERATION_SEP)
    if sep and head == base and number.isascii() and number.isdigit():
        return int(number)
    return None
