"""A loopback TCP proxy for fault tests: forwards to a target, can cut the link and add delay.

``TcpProxy`` listens on 127.0.0.1 on a free port chosen by the OS (read back after the bind)
and forwards every connection to ``target``. ``cut()`` closes every open connection (abort:
both peers see the connection reset) and closes every new one at once until ``restore()``;
``delay`` (seconds, settable while running) is added to each chunk forwarded in either
direction, as a latency: chunks keep their order and stay pipelined, so a delay slows every
round trip without capping the throughput to one chunk per delay.

Bounded: at most ``max_connections`` open connections, at most ``max_pending_chunks`` chunks
queued per direction (the reader waits when full, so TCP flow control holds the sender), a
bounded connect timeout, and loopback addresses only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time

from meshgate._lifecycle import StartStop

__all__ = ["TcpProxy"]

_CHUNK = 64 * 1024


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"TcpProxy forwards to loopback addresses only, not {host!r}")


class _Conn:
    """One proxied connection: the client side, the upstream side and the two pump tasks."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                w.transport.abort()
        for t in self.tasks:
            t.cancel()


class TcpProxy(StartStop):
    def __init__(
        self,
        target: str,
        *,
        delay: float = 0.0,
        max_connections: int = 64,
        max_pending_chunks: int = 256,
        connect_timeout: float = 5.0,
    ) -> None:
        host, port = _split(target)
        _require_loopback(host)
        self.target = target
        self._target = (host, port)
        self.delay = delay
        self.max_connections = max_connections
        self.max_pending_chunks = max_pending_chunks
        self.connect_timeout = connect_timeout
        self.port = 0
        self.accepted = 0  # connections accepted and forwarded
        self.refused = 0  # connections closed at once (cut, or too many)
        self.forwarded_bytes = 0
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._cut = False

    # --- addresses ------------------------------------------------------------------------

    @property
    def address(self) -> str:
        if not self.port:
            raise RuntimeError("TcpProxy is not started")
        return f"127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return (
            f"TcpProxy({self.port or '-'} -> {self.target}, cut={self._cut}, delay={self.delay:g}, "
            f"open={len(self._conns)}, accepted={self.accepted}, refused={self.refused}, "
            f"forwarded_bytes={self.forwarded_bytes})"
        )

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> str:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self.address

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self._conns):
            conn.abort()
        handlers = list(self._handlers)
        for t in handlers:
            t.cancel()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    # --- faults ---------------------------------------------------------------------------

    def cut(self) -> None:
        """Closes every open connection and every new one, until ``restore()``."""
        self._cut = True
        for conn in list(self._conns):
            conn.abort()

    def restore(self) -> None:
        self._cut = False

    # --- forwarding -----------------------------------------------------------------------

    def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut or len(self._conns) >= self.max_connections:
            self.refused += 1
            writer.transport.abort()
            return
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self._target), self.connect_timeout
                )
            except (OSError, TimeoutError):
                return
            conn.upstream = up_writer
            if self._cut:  # cut while connecting
                return
            self.accepted += 1
            conn.tasks = [
                asyncio.ensure_future(self._pipe(reader, up_writer)),
                asyncio.ensure_future(self._pipe(up_reader, writer)),
            ]
            # Either direction ending ends the connection (half-close is not needed here).
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._conns.discard(conn)
            conn.abort()
            if conn.tasks:
                await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(self.max_pending_chunks)

        async def read() -> None:
            try:
                while chunk := await src.read(_CHUNK):
                    await queue.put((time.monotonic(), chunk))
            except OSError:
                pass
            await queue.put(None)  # end of stream (a cancelled reader puts nothing)

        reading = asyncio.ensure_future(read())
        try:
            while (item := await queue.get()) is not None:
                received, chunk = item
                if self.delay > 0:
                    wait = received + self.delay - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if self._cut:
                    return
                dst.write(chunk)
                self.forwarded_bytes += len(chunk)
                await dst.drain()
        except OSError:
            return
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
