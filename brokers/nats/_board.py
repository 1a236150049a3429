"""The NATS adapter's board: a KV bucket beside the stream whose notes lapse unless rewritten."""

from __future__ import annotations

import asyncio

import nats.js.errors
from nats.aio.client import Client
from nats.js.api import StorageType
from nats.js.kv import KeyValue

from meshgate.brokers.nats._errors import NATS_FAILURES, broker_error
from meshgate.brokers.nats._names import board_bucket, kv_stream, kv_subject_prefix
from meshgate.brokers.nats._state import NatsState
from meshgate.brokers.nats._ttl_bucket import ttl_bucket

__all__ = ["NatsBoard"]


class NatsBoard(NatsState):
    """The notes of ``NatsBroker`` (``Board``): ``<stream>_LINKS``, one entry per note, max age the TTL."""

    # The bucket, with the connection it was opened on: a new connection (a restart of the
    # adapter) opens it again. Kept here rather than in NatsState so the board stays a mixin.
    _board: tuple[Client, KeyValue] | None = None

    async def _board_kv(self, ttl: float) -> KeyValue:
        nc = self._require_nc()
        if self._board is not None and self._board[0] is nc:
            return self._board[1]
        js = nc.jetstream(timeout=self._ack_timeout)
        # Memory storage: a note is worth nothing after a restart of the server.
        kv = await ttl_bucket(
            js, board_bucket(self.settings.stream), ttl=ttl, storage=StorageType.MEMORY, replicas=self.settings.replicas
        )
        self._board = (nc, kv)
        return kv

    async def post_note(self, name: str, value: bytes, *, ttl: float) -> None:
        try:
            kv = await self._board_kv(ttl)
            await kv.put(name, value)
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"post note {name!r}") from exc

    async def notes(self, prefix: str, *, ttl: float) -> dict[str, bytes]:
        # As the checkpoints are listed: the subjects the bucket's stream holds, then one get each.
        bucket = board_bucket(self.settings.stream)
        head = kv_subject_prefix(bucket)
        try:
            kv = await self._board_kv(ttl)
            info = await self._require_jsm().stream_info(kv_stream(bucket), subjects_filter=f"{head}{prefix}>")
            names = [s[len(head) :] for s in info.state.subjects or {}]
            values = await asyncio.gather(*(self._note(kv, name) for name in names))
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"read notes {prefix!r}") from exc
        return {name: value for name, value in zip(names, values, strict=True) if value}

    @staticmethod
    async def _note(kv: KeyValue, name: str) -> bytes | None:
        try:
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:  # removed or lapsed since it was listed
            return None
        return entry.value

    async def remove_note(self, name: str) -> None:
        if self._board is None or self._board[0] is not self._nc:
            return  # never posted on this connection: nothing of ours to remove
        try:
            await self._board[1].purge(name)
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"remove note {name!r}") from exc
