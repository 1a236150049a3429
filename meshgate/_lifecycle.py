"""``async with`` for the long-lived objects that have ``start()`` and ``stop()``."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self

__all__ = ["StartStop"]


class StartStop(abc.ABC):
    """``async with x:`` is ``await x.start()`` ... ``await x.stop()``; both are safe to call twice."""

    __slots__ = ()

    @abc.abstractmethod
    async def start(self) -> object: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
