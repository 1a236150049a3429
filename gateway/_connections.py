"""Bounds on the gateway's gRPC connections, so that a flood of sockets cannot take its descriptors.

Three layers, each where it can act:

* gRPC core itself: ``grpc.max_allowed_incoming_connections`` closes a connection at accept
  once the total is reached; ``grpc.server_handshake_timeout_ms`` closes a socket that has not
  spoken HTTP/2 (and TLS) in time (gRPC's default is 120 s: 20,000 idle sockets stayed open that
  long); ``grpc.max_connection_idle_ms`` sends GOAWAY to a connection without a call (clients
  reconnect by themselves on their next call).
* The open-file limit: raised from its soft to its hard value at start, and the total cap is
  kept ``_FD_RESERVE`` descriptors below it, so the broker connection, the files and the
  ``/healthz``/``/readyz`` endpoint always have descriptors left.
* A cap per peer IP address, which gRPC does not have (its connection quota ignores the peer):
  a thread reads the process's sockets on the gateway's port from ``/proc`` about once a second
  and shuts down the newest connections of an address beyond the cap. gRPC then sees the
  socket end and closes it as if the peer had gone. Linux only; elsewhere the total cap,
  the handshake timeout and idle reaping remain.

What is refused or closed is logged (at most once per ``_LOG_EVERY`` seconds per kind of
event), with the addresses that hold the most connections.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import logging
import os
import resource
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from meshgate.config import Limits

__all__ = [
    "ConnectionGuard",
    "ConnectionGuardState",
    "ConnectionPlan",
    "plan_connections",
    "raise_open_file_limit",
]

log = logging.getLogger("meshgate.gateway")

# Descriptors kept for everything but client connections: broker connections, files, the
# HTTP probes' sockets and threads, peer channels, the embedded broker's pipes.
_FD_RESERVE = 256
_MIN_CONNECTIONS = 16
# gRPC's own default handshake timeout is 120 s; a real client finishes in milliseconds.
_MAX_HANDSHAKE_SECONDS = 10.0
_SWEEP_SECONDS = 1.0
_LOG_EVERY = 30.0
# A share of the total cap from which "near the cap" is logged.
_NEAR_CAP = 0.9
_MAX_PEERS_LOGGED = 4096
_ESTABLISHED = "01"
_TCP_TABLES = (Path("/proc/self/net/tcp"), Path("/proc/self/net/tcp6"))
_FD_DIR = Path("/proc/self/fd")

_raised = threading.Lock()
_raised_to: tuple[int, int] | None = None


def raise_open_file_limit() -> tuple[int, int]:
    """Raises this process's soft RLIMIT_NOFILE to its hard limit, once; returns (soft, hard) in force."""
    global _raised_to  # noqa: PLW0603 - one process-wide limit, raised once whatever the number of gateways
    with _raised:
        if _raised_to is not None:
            return _raised_to
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < target:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (OSError, ValueError) as exc:
                log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
            else:
                log.info("open-file limit raised from %d to %d (the hard limit)", soft, target)
                soft = target
        _raised_to = (soft, hard)
        return _raised_to


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionPlan:
    """The connection bounds one gateway's gRPC server runs with."""

    max_connections: int
    per_address: int
    idle_seconds: float
    handshake_seconds: float
    open_files: int

    def server_options(self) -> list[tuple[str, int]]:
        options = [
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.server_handshake_timeout_ms", int(self.handshake_seconds * 1000)),
        ]
        if self.idle_seconds > 0:
            options.append(("grpc.max_connection_idle_ms", max(1, int(self.idle_seconds * 1000))))
        return options

    def describe(self) -> str:
        per = f"{self.per_address} per address" if self.per_address else "no cap per address"
        idle = f"closed after {self.idle_seconds:g} s without a call" if self.idle_seconds > 0 else "never closed idle"
        return (
            f"at most {self.max_connections} gRPC connections ({per}; open-file limit {self.open_files});"
            f" {idle}; handshakes must finish within {self.handshake_seconds:g} s"
        )


def plan_connections(limits: Limits, *, region: str) -> ConnectionPlan:
    """The bounds for ``limits`` under this process's open-file limit (raised to its hard value first)."""
    soft, _ = raise_open_file_limit()
    room = max(_MIN_CONNECTIONS, soft - _FD_RESERVE) if soft != resource.RLIM_INFINITY else 1 << 30
    wanted = limits.max_connections or room
    total = min(wanted, room)
    if limits.max_connections and total < limits.max_connections:
        log.warning(
            "region %s: limits.max_connections %d lowered to %d: the open-file limit is %d and %d descriptors"
            " stay for the broker, files and probes; raise the limit (ulimit -n, LimitNOFILE, the container's"
            " nofile) to allow more",
            region,
            limits.max_connections,
            total,
            soft,
            _FD_RESERVE,
        )
    idle = limits.idle_connection_timeout_seconds
    handshake = min(_MAX_HANDSHAKE_SECONDS, idle) if idle > 0 else _MAX_HANDSHAKE_SECONDS
    return ConnectionPlan(
        max_connections=total,
        per_address=limits.max_connections_per_address,
        idle_seconds=idle,
        handshake_seconds=max(0.5, handshake),
        open_files=soft,
    )


def _address(hex_address: str) -> str:
    """``0100007F`` (IPv4) or 32 hex digits (IPv6) of /proc/net/tcp, as text; a v4-mapped v6 as its v4."""
    raw = bytes.fromhex(hex_address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return str(ipaddress.IPv4Address(words))
    v6 = ipaddress.IPv6Address(words)
    return str(v6.ipv4_mapped or v6)


def _socket_fds() -> dict[int, int]:
    """inode -> descriptor of this process's sockets."""
    out: dict[int, int] = {}
    for entry in os.scandir(_FD_DIR):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(entry.path)
            if target.startswith("socket:["):
                out[int(target[8:-1])] = int(entry.name)
    return out


def _connections(port: int, fds: dict[int, int]) -> dict[str, list[tuple[int, int]]]:
    """Peer address -> (inode, fd) of this process's established connections to local ``port``."""
    by_peer: dict[str, list[tuple[int, int]]] = {}
    for table in _TCP_TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _ESTABLISHED:
                continue
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if inode not in fds or int(local.rpartition(":")[2], 16) != port:
                continue
            by_peer.setdefault(_address(remote.rpartition(":")[0]), []).append((inode, fds[inode]))
    return by_peer


def _shut(fd: int, inode: int) -> bool:
    """Shuts down the socket behind ``fd`` if it is still socket ``inode``; gRPC then closes it itself.

    Works on a duplicate: the socket cannot be closed and its number reused under us, and the
    inode check makes sure the number still names the connection that was counted.
    """
    try:
        dup = os.dup(fd)
    except OSError:
        return False
    try:
        if os.fstat(dup).st_ino != inode:
            return False
        sock = socket.socket(fileno=dup)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return False
        finally:
            sock.detach()
        return True
    finally:
        os.close(dup)


class ConnectionGuardState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    # Not on this platform (no /proc): the gRPC bounds alone.
    UNSUPPORTED = "unsupported"
    STOPPED = "stopped"


class ConnectionGuard:
    """Watches the connections on ``port``: logs when the total nears its cap, enforces the per-address cap.

    Runs in a daemon thread of its own, so a blocked event loop neither stops it nor is slowed by it.
    ``start()`` and ``stop()`` are safe to call twice.
    """

    def __init__(self, *, region: str, port: int, plan: ConnectionPlan, interval: float = _SWEEP_SECONDS) -> None:
        self.region = region
        self.port = port
        self.plan = plan
        self.interval = interval
        self.state = ConnectionGuardState.NEW
        self.closed = 0  # connections shut down for the per-address cap, since start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._near_cap_logged = 0.0
        self._near_cap = False
        self._closed_logged: dict[str, float] = {}
        self._closed_since_log: Counter[str] = Counter()

    def start(self) -> None:
        if self.state is not ConnectionGuardState.NEW:
            return
        if not all(p.exists() for p in (_FD_DIR, _TCP_TABLES[0])):
            self.state = ConnectionGuardState.UNSUPPORTED
            if self.plan.per_address:
                log.info(
                    "region %s: limits.max_connections_per_address needs Linux /proc; not enforced here"
                    " (the total cap, the handshake timeout and idle reaping are)",
                    self.region,
                )
            return
        self.state = ConnectionGuardState.RUNNING
        self._thread = threading.Thread(target=self._run, name=f"meshgate-connections-{self.region}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self.state is ConnectionGuardState.RUNNING:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=5.0)
                self._thread = None
        self.state = ConnectionGuardState.STOPPED

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except (OSError, ValueError) as exc:
                log.debug("region %s: connection sweep failed: %s", self.region, exc)

    def sweep(self) -> None:
        """One look at the connections: log near the cap, close what exceeds the per-address cap."""
        plan = self.plan
        near = int(plan.max_connections * _NEAR_CAP)
        threshold = min(near, plan.per_address) if plan.per_address else near
        # Cheap gate: fewer descriptors than either bound means neither can be reached.
        if len(os.listdir(_FD_DIR)) <= threshold:
            self._back_under(0)
            return
        by_peer = _connections(self.port, _socket_fds())
        total = sum(len(v) for v in by_peer.values())
        now = time.monotonic()
        if total >= near:
            self._near_cap = True
            if now - self._near_cap_logged >= _LOG_EVERY:
                self._near_cap_logged = now
                log.warning(
                    "region %s: %d gRPC connections open on port %d, limits.max_connections is %d: connections"
                    " beyond it are closed as they arrive; most held by %s",
                    self.region,
                    total,
                    self.port,
                    plan.max_connections,
                    _top(by_peer),
                )
        else:
            self._back_under(total)
        if plan.per_address:
            for peer, conns in by_peer.items():
                excess = len(conns) - plan.per_address
                if excess > 0:
                    self._close_excess(peer, conns, excess, now)

    def _back_under(self, total: int) -> None:
        if self._near_cap:
            self._near_cap = False
            log.info(
                "region %s: %d gRPC connections open, back under limits.max_connections %d",
                self.region,
                total,
                self.plan.max_connections,
            )

    def _close_excess(self, peer: str, conns: list[tuple[int, int]], excess: int, now: float) -> None:
        # Newest first (inodes grow): the connections a peer has held longest keep working.
        closed = sum(_shut(fd, inode) for inode, fd in sorted(conns, reverse=True)[:excess])
        self.closed += closed
        if len(self._closed_logged) > _MAX_PEERS_LOGGED:
            self._closed_logged.clear()  # a flood from many addresses: forget who was logged when
        self._closed_since_log[peer] += closed
        if now - self._closed_logged.get(peer, 0.0) >= _LOG_EVERY:
            self._closed_logged[peer] = now
            log.warning(
                "region %s: closed %d connections from %s, which held %d: limits.max_connections_per_address is %d",
                self.region,
                self._closed_since_log.pop(peer),
                peer,
                len(conns),
                self.plan.per_address,
            )


def _top(by_peer: dict[str, list[tuple[int, int]]], n: int = 3) -> str:
    ranked = sorted(by_peer.items(), key=lambda kv: len(kv[1]), reverse=True)[:n]
    return ", ".join(f"{peer} ({len(conns)})" for peer, conns in ranked) or "nobody"
