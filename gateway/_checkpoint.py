"""Saving a replicating origin's dedup state while its Replicate call runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from meshgate.brokers import BrokerError
from meshgate.gateway._dedup import OriginDedup, OriginState

__all__ = ["Checkpointer"]

log = logging.getLogger("meshgate.gateway.replication")

_CHECKPOINT_EVERY = 0.2
# How often an open call moves up the entries of the streams it has not changed: a recovery
# scans this region's log from the oldest entry's position, so an entry left where its
# stream went quiet would have it scan all the local traffic since (see _dedup).
_REFRESH_EVERY = 10.0


class Checkpointer:
    """Saves the streams of an origin the call changed, in the background, at most every ``_CHECKPOINT_EVERY`` s.

    The log position is read first, then the changed streams are snapshotted once every
    write started before that read has been applied to the state (``started``/``applied``,
    counted by the call): what landed at or below the position is then in the snapshot. Each
    stream's entry is written with that position; a stream whose write failed is saved again
    the next time. Every ``_REFRESH_EVERY`` s the unchanged streams are saved too, so their
    entries follow the log while their streams are quiet (``OriginDedup.save(refresh=...)``).

    Stopped by a flag, not by cancelling: nats-py swallows a cancellation that lands inside
    one of its requests, and a cancelled saver could then wait forever.
    """

    def __init__(self, dedup: OriginDedup, state: OriginState) -> None:
        self._dedup = dedup
        self._state = state
        # Streams changed since their last save.
        self._dirty: set[str] = set()
        # The log position the unchanged streams' entries were last moved up to (recovery did).
        self._refreshed = state.position
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.started = 0
        self.applied = 0
        self._applied = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    def writing(self) -> None:
        self.started += 1

    def written(self, streams: Iterable[str]) -> None:
        """The write counted by ``writing`` is applied to the state; ``streams`` may have changed."""
        self.applied += 1
        self._dirty.update(streams)
        self._applied.set()
        self._wake.set()

    async def _applied_up_to(self, mark: int) -> bool:
        while self.applied < mark:
            if self._stop.is_set():
                return False  # the call ended before that write was applied: its outcome is unknown
            self._applied.clear()
            await self._applied.wait()
        return True

    async def _save(self, *, refresh: bool = False) -> None:
        """Saves the changed streams; with ``refresh``, also moves the others up to the log's position."""
        state = self._state
        try:
            position = await self._dedup.position()
            if not await self._applied_up_to(self.started):
                return
            # Taken at once: no write is applied between the snapshot and the dirty set's reset.
            quiet: frozenset[str] = frozenset()
            if refresh and position != self._refreshed:
                quiet = frozenset(state.registered - self._dirty)
                self._refreshed = position
            snapshot = state.snapshot(self._dirty | quiet)
            self._dirty = set()
            if not snapshot:
                return
            failed = await self._dedup.save(state, snapshot, position, refresh=quiet)
        except BrokerError as exc:
            log.warning("replication checkpoint of %s not saved: %s", state.origin, exc)
            return
        if failed:
            # Only the scan after the next recovery gets longer; retried on the next save.
            self._dirty.update(failed)
            log.warning(
                "replication checkpoint of %s not saved for %d stream(s): %s",
                state.origin,
                len(failed),
                next(iter(failed.values())),
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        refresh_at = loop.time() + _REFRESH_EVERY
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, refresh_at - loop.time()))
            self._wake.clear()
            if self._stop.is_set():
                return
            refresh = loop.time() >= refresh_at
            if refresh:
                refresh_at = loop.time() + _REFRESH_EVERY
            await self._save(refresh=refresh)
            # Rate limit: touches meanwhile only set the flag; close() ends the pause at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), _CHECKPOINT_EVERY)

    async def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._applied.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5.0)
        except TimeoutError:
            self._task.cancel()
        if self._dirty:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._save(), 2.0)
