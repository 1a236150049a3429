"""Whether a broker can store events, as its adapter last saw it: readiness reads it.

An adapter reports a refusal for want of room (``refused``) and, once per batch, a stored
write (``stored``); nothing is counted per event on the write path. While a problem is set the
adapter probes the broker with a small write that is not an event, so the problem clears by
itself once room is made even when no client writes meanwhile (a gateway that is not ready
gets no traffic to prove it wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from meshgate.brokers._base import BrokerError, StorageFullError

__all__ = ["PROBE_KEY", "StorageHealth", "StorageState"]

# The key of the probe write in the adapter's checkpoint store: never an event.
PROBE_KEY = "mg-storage-probe"
_PROBE_FIRST_SECONDS = 0.25
_PROBE_MAX_SECONDS = 2.0

logger = logging.getLogger("meshgate.brokers")


class StorageState(enum.Enum):
    OK = "ok"
    # Refused writes for want of room (or stopped answering them) since ``since``.
    REFUSING = "refusing"


@dataclass(slots=True, kw_only=True)
class StorageHealth:
    """The storage state of one broker client; ``problem`` is read from any thread."""

    name: str
    # Called (in the event loop) when a problem starts: the adapter starts its probe.
    on_problem: Callable[[], None] | None = None
    state: StorageState = StorageState.OK
    problem: str | None = None
    since: float | None = None
    refusals: int = 0
    # Problems seen since the client started, and probes that found the broker still full.
    episodes: int = 0
    failed_probes: int = 0
    _clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _probe: asyncio.Task[None] | None = field(default=None, repr=False)

    def refused(self, reason: str) -> None:
        """A write was refused (or went unanswered) for want of room; ``reason`` says why."""
        self.refusals += 1
        self.problem = reason
        if self.state is StorageState.REFUSING:
            return
        self.state = StorageState.REFUSING
        self.since = self._clock()
        self.episodes += 1
        logger.warning("broker %s cannot store events: %s", self.name, reason)
        if self.on_problem is not None:
            self.on_problem()

    def stored(self) -> None:
        """A write (an event, or a probe) was stored: the broker has room again."""
        if self.state is StorageState.OK:
            return
        took = self._clock() - (self.since or self._clock())
        logger.info(
            "broker %s stores events again after %.1f s (%d writes refused meanwhile)",
            self.name,
            took,
            self.refusals,
        )
        self.state = StorageState.OK
        self.problem = None
        self.since = None
        self.refusals = 0

    async def probe(self, write: Callable[[], Awaitable[object]], *, running: Callable[[], bool]) -> None:
        """Calls ``write`` (a small write that is not an event; a BrokerError when refused), backing
        off from 0.25 s to 2 s, until it stores, an event is stored meanwhile, or ``running()`` is false."""
        delay = _PROBE_FIRST_SECONDS
        while running():
            await asyncio.sleep(delay)
            delay = min(delay * 2, _PROBE_MAX_SECONDS)
            if self.problem is None:
                return  # an event was stored meanwhile
            try:
                await write()
            except BrokerError as exc:
                self.failed_probes += 1
                if isinstance(exc, StorageFullError):
                    self.refused(str(exc))
                logger.debug("storage probe of %s: %s", self.name, exc)
                continue
            self.stored()
            return

    def start_probe(self, write: Callable[[], Awaitable[object]], *, running: Callable[[], bool]) -> None:
        """Runs ``probe`` in a task of its own, unless one runs or ``running()`` is false."""
        if not running() or (self._probe is not None and not self._probe.done()):
            return
        self._probe = asyncio.get_running_loop().create_task(
            self.probe(write, running=running), name=f"storage-probe-{self.name}"
        )

    async def stop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
