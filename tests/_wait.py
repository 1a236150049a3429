"""The tests' one way to wait: poll a condition, bounded, and name what was awaited when it never holds.

No test sleeps a fixed time: it waits for what it needs with ``eventually``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

import grpc

__all__ = ["TRANSIENT", "eventually"]

T = TypeVar("T")

# What a poll of a server that is starting, restarting or not reachable yet raises: "not yet", not a failure.
TRANSIENT: tuple[type[BaseException], ...] = (grpc.aio.AioRpcError, OSError, TimeoutError)


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T | None]],
    timeout: float,
    *,
    what: str,
    interval: float = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
    status: Callable[[], object] | None = ...,
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    what: str,
    interval: float = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
    status: Callable[[], object] | None = ...,
) -> T: ...


async def eventually(
    predicate: Callable[[], object],
    timeout: float,
    *,
    what: str,
    interval: float = 0.1,
    retry_on: tuple[type[BaseException], ...] = TRANSIENT,
    status: Callable[[], object] | None = None,
) -> object:
    """Polls ``predicate`` (sync or async) until it returns a truthy value, which is returned.

    After ``timeout`` seconds raises AssertionError naming ``what``, the last value (or the last
    exception of ``retry_on``, which count as "not yet") and ``status()`` when given. Any other
    exception of the predicate fails the wait at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last = value
        except retry_on as exc:
            last = exc
        if time.monotonic() >= deadline:
            now = f"; now: {status()}" if status is not None else ""
            cause = last if isinstance(last, BaseException) else None
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}; last value: {last!r}{now}"
            ) from cause
        await asyncio.sleep(interval)
