"""The oldest nats-server Meshgate runs on, and how a server's version compares with it.

A region's stream keeps its subject layout and partition count in the stream's metadata
(``_check_layout``), which nats-server keeps from 2.10.0 on: an older server takes the stream
config and drops the metadata, so the next start would find a stream of "another layout".
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["MINIMUM_SERVER_VERSION", "older_than", "server_version", "version_key"]

MINIMUM_SERVER_VERSION: Final = "2.10.0"

# major.minor.patch, an optional pre-release and build (semver), and a leading "v" some builds show.
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")


def version_key(text: str) -> tuple[int, int, int, int] | None:
    """``text`` as (major, minor, patch, 0 for a pre-release else 1), in semver order; None when it is no version.

    Pre-releases of one version are not told apart: the minimum is a release.
    """
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    return int(major), int(minor), int(patch), 0 if pre else 1


def older_than(version: str, minimum: str = MINIMUM_SERVER_VERSION) -> bool:
    """Whether ``version`` is known to be older than ``minimum`` (a pre-release comes before its release).

    A version that cannot be read is not: a server is refused for what it says, not for what it
    does not (the layout check still guards the stream).
    """
    have, need = version_key(version), version_key(minimum)
    if need is None:
        raise ValueError(f"minimum version {minimum!r} is not major.minor.patch")
    return have is not None and have < need


def server_version(nc: Client) -> str:
    """The version the connected server's INFO gave ("" when none): nats-py keeps that INFO (a
    new dict at each connect, reconnects too), and offers the version only parsed
    (``connected_server_version``, which fails on a leading "v")."""
    return str(nc._server_info.get("version", ""))
