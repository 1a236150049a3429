"""What ``meshgate up`` claims before it starts any broker: its data dir, by a lock, and its ports.

A second ``meshgate up`` in the same folder used to start, reach the first region's embedded
broker, find the running mesh's nats-server on the data dir and advise killing it: a broker
in use, not a leftover. Now ``up`` takes ``<data-dir>/meshgate-up.lock`` (``flock``, held
until it exits; the kernel drops it with the process, so a killed mesh leaves no stale lock)
and checks that every address it will listen on is free, before anything starts. When
either is taken, the refusal names the mesh that holds it (its pid, config file, data dir)
and what to do.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import fcntl
import json
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshgate.config import BrokerKind, MeshConfig, split_host_port

__all__ = ["LOCK_NAME", "ClaimError", "Endpoint", "UpClaim", "UpClaimState", "endpoints_of"]

LOCK_NAME = "meshgate-up.lock"
_DEFAULT_NATS_PORT = 4222
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
_STOP_HINT = "stop it first (Ctrl-C in its terminal, or kill {pid}: it drains and stops its brokers)"


class ClaimError(Exception):
    """``meshgate up`` cannot start here; the message says who holds what and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address ``up`` will listen on, and for what ("gateway of region us-west")."""

    what: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def endpoints_of(config: MeshConfig, listens: Sequence[str]) -> list[Endpoint]:
    """The fixed addresses the regions' gateways, metrics and embedded brokers will listen on."""
    out: list[Endpoint] = []
    for region, listen in zip(config.regions, listens, strict=True):
        host, _, port = listen.rpartition(":")
        out.append(Endpoint(f"gateway of region {region.name}", host.strip("[]") or "0.0.0.0", int(port)))
        if region.metrics:
            mhost, mport = split_host_port(region.metrics)
            out.append(Endpoint(f"metrics of region {region.name}", mhost, mport or 0))
        if region.kind is BrokerKind.EMBEDDED and region.brokers:
            bhost, bport = split_host_port(region.brokers[0], port_required=False)
            out.append(Endpoint(f"embedded broker of region {region.name}", bhost, bport or _DEFAULT_NATS_PORT))
        if region.kind is BrokerKind.EMBEDDED and region.nats.monitor:
            nhost, nport = split_host_port(region.nats.monitor)
            out.append(Endpoint(f"broker monitoring of region {region.name}", nhost, nport or 0))
    return [e for e in out if e.port > 0]


def _in_use(endpoint: Endpoint) -> bool:
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False  # the start itself says what is wrong with the address
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        # As the servers bind: a port whose last connections are in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError:
            return True
    return False


# --- who holds a port (Linux /proc; elsewhere the refusal names the port only) ----------------


def _listening_inodes(port: int) -> set[int]:
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(int(fields[9]))
    return inodes - {0}


def _pid_of(inodes: set[int]) -> int | None:
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        return int(proc.name)
    return None


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The fields after the parenthesised command name: state, then the parent pid.
    return int(stat.rpartition(")")[2].split()[1])


def _up_data_dir(pid: int, argv: list[str]) -> Path | None:
    """The data dir of a ``meshgate up`` process, from its arguments, or None if it is not one."""
    if "up" not in argv or not any("meshgate" in a for a in argv):
        return None
    data_dir = ".meshgate"
    for i, arg in enumerate(argv):
        if arg == "--data-dir" and i + 1 < len(argv):
            data_dir = argv[i + 1]
        elif arg.startswith("--data-dir="):
            data_dir = arg.partition("=")[2]
    path = Path(data_dir)
    if not path.is_absolute():
        with contextlib.suppress(OSError):
            path = Path(os.readlink(f"/proc/{pid}/cwd")) / path
    return path


def _holder(endpoint: Endpoint) -> str:
    """Who listens on ``endpoint``, for a person: a mesh (with its lock's details), a broker, or a pid."""
    pid = _pid_of(_listening_inodes(endpoint.port))
    if pid is None:
        return f"another process (find it with: ss -ltnp 'sport = :{endpoint.port}')"
    argv = _cmdline(pid)
    data_dir = _up_data_dir(pid, argv)
    if data_dir is not None:
        return _describe_mesh(pid, data_dir)
    if argv and "nats-server" in argv[0]:
        parent = _parent(pid)
        parent_dir = _up_data_dir(parent, _cmdline(parent)) if parent else None
        if parent is not None and parent_dir is not None:
            return f"nats-server pid {pid}, the broker of {_describe_mesh(parent, parent_dir)}"
        return f"nats-server pid {pid} ({' '.join(argv)[:200]}), left over from an earlier run? stop it (kill {pid})"
    return f"pid {pid} ({' '.join(argv)[:200] or 'command unknown'})"


def _describe_mesh(pid: int, data_dir: Path) -> str:
    info = _read_lock(data_dir / LOCK_NAME)
    config = info.get("config") or "?"
    started = info.get("started")
    since = f", running since {started}" if started else ""
    return (
        f"the mesh of meshgate up pid {pid} (config {config}, data dir {data_dir}{since}); {_STOP_HINT.format(pid=pid)}"
    )


def _read_lock(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


class UpClaimState(enum.Enum):
    NEW = "new"
    HELD = "held"
    RELEASED = "released"


class UpClaim:
    """The data dir lock and the port check of one ``meshgate up``; ``release()`` is safe twice."""

    def __init__(self, *, data_dir: Path, config_path: Path) -> None:
        self.data_dir = data_dir.absolute()
        self.config_path = config_path.absolute()
        self.lock_path = self.data_dir / LOCK_NAME
        self.state = UpClaimState.NEW
        self._fd: int | None = None

    def acquire(self, endpoints: Iterable[Endpoint]) -> None:
        """Takes the lock, then checks the ports; ClaimError (nothing held) when either is taken."""
        if self.state is not UpClaimState.NEW:
            return
        endpoints = list(endpoints)
        self._lock()
        try:
            # Written at once: a second `up` that finds the lock taken reads who holds it here.
            self._write(endpoints_text=", ".join(str(e) for e in endpoints))
            self._refuse_busy(endpoints)
        except BaseException:
            self.release()
            raise
        self.state = UpClaimState.HELD

    def _refuse_busy(self, endpoints: Sequence[Endpoint]) -> None:
        busy = [e for e in endpoints if _in_use(e)]
        if busy:
            # One line per holder: a running mesh holds all its addresses.
            by_holder: dict[str, list[Endpoint]] = {}
            for e in busy:
                by_holder.setdefault(_holder(e), []).append(e)
            lines = [
                f"  {', '.join(f'{e} ({e.what})' for e in held)}: in use by {holder}"
                for holder, held in by_holder.items()
            ]
            raise ClaimError(
                f"meshgate up: {len(busy)} address(es) of {self.config_path} are taken:\n"
                + "\n".join(lines)
                + "\nstop what holds them, or give the regions of the file other gateway, metrics and broker"
                " addresses"
            )

    def _lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Not inherited by the brokers' processes (PEP 446): the lock dies with this process only.
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = _read_lock(self.lock_path)
            pid = info.get("pid", "?")
            raise ClaimError(
                f"meshgate up: data dir {self.data_dir} is in use by another mesh: meshgate up pid {pid}"
                f" (config {info.get('config', '?')}, started {info.get('started', '?')},"
                f" listening on {info.get('addresses', '?')});\n{_STOP_HINT.format(pid=pid)},"
                " or run this one with another --data-dir (and other ports)"
            ) from None
        self._fd = fd

    def _write(self, *, endpoints_text: str) -> None:
        assert self._fd is not None
        info = {
            "pid": os.getpid(),
            "config": str(self.config_path),
            "data_dir": str(self.data_dir),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "addresses": endpoints_text,
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(info).encode() + b"\n", 0)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        self.state = UpClaimState.RELEASED
        if fd is not None:
            # Emptied first: a reader between the two sees no stale pid.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)
