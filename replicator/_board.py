"""The link status board: what the links of a region do, whichever processes run them.

Replication need not run in the process that serves Status: a region can run its links in
``meshgate serve --role replicator`` processes and in worker processes. Each process that runs
a ``Replicator`` posts a note to the region's broker every ``POST_SECONDS`` (``BoardPoster``):
its owner name, pid and host, and the status of each of its links. A gateway that runs no link
itself reads the notes (``LinkBoard``) and merges them per destination, so Admin.Status,
``meshgate status`` and the link metrics show every link with its state, lag and last error.

The notes live in the broker, like everything else Meshgate keeps: on NATS in a KV bucket beside
the stream (``<stream>_LINKS``) whose entries lapse ``NOTE_TTL`` seconds after their last write,
so a killed process's note goes by itself; on a broker without ``Board`` (Kafka) as checkpoints,
whose age the reader judges from the time written in them (clocks of one region's hosts are
assumed within a few seconds of each other), a clean stop blanking its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import json_format

from meshgate.brokers import Board, Broker, BrokerError
from meshgate.replicator._group import merge_statuses
from meshgate.replicator._replicator import Replicator
from meshgate.v1 import admin_pb2

__all__ = [
    "NOTE_TTL",
    "POST_SECONDS",
    "BoardNote",
    "BoardPoster",
    "BoardState",
    "LinkBoard",
    "board_prefix",
    "merge_links",
]

log = logging.getLogger("meshgate.replicator.board")

# A process rewrites its note this often, and a note not rewritten for NOTE_TTL is gone: a
# process that died drops off the board within NOTE_TTL.
POST_SECONDS = 1.0
NOTE_TTL = 5.0
_NAME_UNSAFE = re.compile(r"[^-_a-zA-Z0-9]")
# The states of a link that runs in the process that posted it.
_IDLE = frozenset({admin_pb2.LINK_STATE_STANDBY, admin_pb2.LINK_STATE_UNSPECIFIED})


def _safe(text: str) -> str:
    # Note names are KV keys and checkpoint names: [-/_a-zA-Z0-9] and '.' between the parts.
    return _NAME_UNSAFE.sub("_", text)


def board_prefix(region: str) -> str:
    """The names of the notes of ``region``'s processes start with this."""
    return f"links.{_safe(region)}."


class BoardState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class BoardNote:
    """One process's note: who it is, when it wrote, and its links as its own Status would show them."""

    owner: str
    pid: int
    host: str
    posted: float  # seconds since the epoch
    links: tuple[admin_pb2.LinkStatus, ...] = ()
    # Per destination: the times its link failed and backed off (not in LinkStatus).
    retries: Mapping[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "pid": self.pid,
                "host": self.host,
                "posted": self.posted,
                "links": [json_format.MessageToDict(s) for s in self.links],
                "retries": dict(self.retries),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, value: bytes) -> BoardNote:
        """ValueError when ``value`` is not a note (a blanked one, or written by something else)."""
        try:
            doc = json.loads(value)
            links = tuple(json_format.ParseDict(d, admin_pb2.LinkStatus()) for d in doc["links"])
            return cls(
                owner=str(doc["owner"]),
                pid=int(doc["pid"]),
                host=str(doc["host"]),
                posted=float(doc["posted"]),
                links=links,
                retries={str(k): int(v) for k, v in doc.get("retries", {}).items()},
            )
        except (KeyError, TypeError, AttributeError, ValueError, json_format.ParseError) as exc:
            raise ValueError(f"not a link board note ({len(value)} bytes): {exc}") from None

    def running(self) -> list[str]:
        """The destinations of the links this process runs (neither standby nor stopped)."""
        return [s.destination for s in self.links if s.state not in _IDLE]


def _merge_one(destination: str, region: str, entries: Sequence[admin_pb2.LinkStatus]) -> admin_pb2.LinkStatus:
    # Of the processes that run one link (several on Kafka, each with some of its partitions;
    # on NATS each with the partitions it holds the leases of), the runners make the line.
    runners = [s for s in entries if s.state not in _IDLE]
    out = merge_statuses(destination, runners)
    # Counters are per process (a restarted process starts from 0): their sum over the live ones.
    out.forwarded = sum(s.forwarded for s in entries)
    out.dead_lettered = sum(s.dead_lettered for s in entries)
    if runners:
        return out
    if entries:
        out.state = admin_pb2.LINK_STATE_STANDBY
        out.last_error = (
            f"no process of region {region} reports running the link to {destination}: its lease is held by a"
            " process that posts no status, or it is passing to another one"
        )
    else:
        out.state = admin_pb2.LINK_STATE_UNSPECIFIED
        out.last_error = (
            f"no replicator process of region {region} runs the link to {destination}: none posted a status"
            f" within {NOTE_TTL:g} s"
        )
    out.last_error_time.FromNanoseconds(time.time_ns())
    return out


def merge_links(region: str, destinations: Iterable[str], notes: Iterable[BoardNote]) -> list[admin_pb2.LinkStatus]:
    """One status per destination (those of the mesh file and any a note names), by name."""
    per: dict[str, list[admin_pb2.LinkStatus]] = {d: [] for d in destinations}
    for note in notes:
        for status in note.links:
            per.setdefault(status.destination, []).append(status)
    return [_merge_one(d, region, per[d]) for d in sorted(per)]


@dataclass(slots=True)
class _Task:
    task: asyncio.Task[None] | None = None
    state: BoardState = BoardState.NEW
    failures: int = field(default=0)


class BoardPoster:
    """Posts ``replicator``'s link statuses under its owner name every ``interval`` s, in this loop.

    Runs in the process's own loop with the process's broker (not the links' thread): a post
    is a read of ``statuses()`` and one write. ``stop()`` removes the note, so a clean stop
    leaves the board at once.
    """

    def __init__(self, *, broker: Broker, replicator: Replicator, interval: float = POST_SECONDS) -> None:
        self._broker = broker
        self._replicator = replicator
        self._interval = interval
        self.name = board_prefix(replicator.region) + _safe(replicator.owner)
        self._run = _Task()

    @property
    def state(self) -> BoardState:
        return self._run.state

    def note(self) -> BoardNote:
        return BoardNote(
            owner=self._replicator.owner,
            pid=os.getpid(),
            host=socket.gethostname(),
            posted=time.time(),
            links=tuple(self._replicator.statuses()),
            retries={name: link.counters.retries for name, link in self._replicator.links.items()},
        )

    async def post(self) -> None:
        value = self.note().encode()
        if isinstance(self._broker, Board):
            await self._broker.post_note(self.name, value, ttl=NOTE_TTL)
        else:
            await self._broker.put_checkpoint(self.name, value)

    async def start(self) -> None:
        if self._run.state is not BoardState.NEW:
            return
        self._run.state = BoardState.RUNNING
        self._run.task = asyncio.create_task(self._loop(), name=f"board note of {self._replicator.owner}")

    async def _loop(self) -> None:
        while True:
            try:
                await self.post()
                self._run.failures = 0
            except BrokerError as exc:
                # The note lapses meanwhile: readers show the links as run by nobody, which is
                # what they can tell. Logged once per run of failures.
                if not self._run.failures:
                    log.warning("link status of %s not posted: %s", self._replicator.owner, exc)
                self._run.failures += 1
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        if self._run.state is not BoardState.RUNNING:
            self._run.state = BoardState.STOPPED
            return
        self._run.state = BoardState.STOPPED
        task, self._run.task = self._run.task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=2.0)
        with contextlib.suppress(BrokerError, TimeoutError):
            async with asyncio.timeout(2.0):
                if isinstance(self._broker, Board):
                    await self._broker.remove_note(self.name)
                else:
                    await self._broker.put_checkpoint(self.name, b"")


class LinkBoard:
    """Reads the notes of ``region``'s processes every ``interval`` s; ``statuses()`` merges them.

    ``destinations`` gives the regions the mesh file in force names (read at each refresh, so a
    reload shows new links as unassigned until a replicator runs them). The reads are plain
    reads of what the last refresh found (Status, the metrics' scrape), never a broker call.
    """

    def __init__(
        self,
        *,
        broker: Broker,
        region: str,
        destinations: Callable[[], Iterable[str]],
        interval: float = POST_SECONDS,
    ) -> None:
        self.region = region
        self._broker = broker
        self._destinations = destinations
        self._interval = interval
        self._prefix = board_prefix(region)
        self.notes: tuple[BoardNote, ...] = ()
        # Why the last refresh failed ("" when it worked): shown on links nobody is seen to run.
        self.problem = ""
        self._run = _Task()

    @property
    def state(self) -> BoardState:
        return self._run.state

    @property
    def owners(self) -> tuple[str, ...]:
        """The lease owners (replicator processes) of the region seen on the board, by name."""
        return tuple(sorted(n.owner for n in self.notes))

    async def refresh(self) -> None:
        if isinstance(self._broker, Board):
            values = await self._broker.notes(self._prefix, ttl=NOTE_TTL)
            oldest = 0.0  # the broker lapses them
        else:
            values = await self._broker.checkpoints(self._prefix)
            oldest = time.time() - NOTE_TTL
        notes = []
        for name, value in values.items():
            if not value:
                continue  # blanked by a clean stop
            try:
                note = BoardNote.decode(value)
            except ValueError as exc:
                log.debug("board note %s skipped: %s", name, exc)
                continue
            if note.posted >= oldest:
                notes.append(note)
        self.notes = tuple(notes)
        self.problem = ""

    def counters(self, pids: Collection[int]) -> dict[str, tuple[int, int, int]]:
        """Per destination: forwarded, retries, dead-lettered, summed over the notes of ``pids`` only.

        A process exports the counters of its own workers: summed over every process that
        scrapes the board, each would be counted once per reader."""
        out: dict[str, tuple[int, int, int]] = {}
        for note in self.notes:
            if note.pid not in pids:
                continue
            for status in note.links:
                f, r, d = out.get(status.destination, (0, 0, 0))
                out[status.destination] = (
                    f + status.forwarded,
                    r + note.retries.get(status.destination, 0),
                    d + status.dead_lettered,
                )
        return out

    def statuses(self) -> list[admin_pb2.LinkStatus]:
        merged = merge_links(self.region, self._destinations(), self.notes)
        if self.problem:
            for status in merged:
                if status.state in _IDLE:
                    status.last_error = f"{status.last_error}; the board cannot be read: {self.problem}"
        return merged

    async def start(self) -> None:
        if self._run.state is not BoardState.NEW:
            return
        self._run.state = BoardState.RUNNING
        await self._refresh()  # Status is complete from the first call when the broker answers
        self._run.task = asyncio.create_task(self._loop(), name=f"link board of {self.region}")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._refresh()

    async def _refresh(self) -> None:
        try:
            await self.refresh()
        except BrokerError as exc:
            # What the board said before is not known to hold any more.
            self.notes = ()
            self.problem = str(exc)

    async def stop(self) -> None:
        previous, self._run.state = self._run.state, BoardState.STOPPED
        task, self._run.task = self._run.task, None
        if previous is BoardState.RUNNING and task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=2.0)
