"""Running gateways in the foreground: signals, the grace period, a forced exit."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from meshgate.brokers import BrokerError
from meshgate.config import ReloadResult

__all__ = [
    "EVENT_LOOP_ENV",
    "SWITCH_INTERVAL_SECONDS",
    "Served",
    "freeze_startup_heap",
    "run_until_signalled",
    "use_event_loop",
    "use_switch_interval",
]

log = logging.getLogger("meshgate")

# MESHGATE_EVENT_LOOP=uvloop runs the gateway (and its links' thread) on uvloop when it is
# installed; "asyncio" (the default) or anything else keeps the standard loop.
EVENT_LOOP_ENV = "MESHGATE_EVENT_LOOP"


# How long a thread that wants the GIL waits before the one holding it is asked to let go
# (CPython's default: 5 ms). A gateway's links run in a thread and event loop of their own
# beside ingest, and every event they forward passes between those threads (and gRPC's poller);
# while ingest keeps its thread busy, each pass could wait the whole interval. At 1 ms the
# median from publish to stored in the destination at half Meshgate's own live rate went from
# 10.7-11.6 to 8.0-9.3 ms and the live rate stayed the same (docs/PERFORMANCE.md, "The GIL's
# switch interval").
SWITCH_INTERVAL_SECONDS = 0.001


def use_switch_interval() -> None:
    """The GIL's switch interval for a process that runs gateways (see SWITCH_INTERVAL_SECONDS)."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


def use_event_loop() -> str:
    """Sets the event loop policy MESHGATE_EVENT_LOOP asks for; returns the loop in use."""
    if os.environ.get(EVENT_LOOP_ENV, "asyncio").strip().lower() != "uvloop":
        return "asyncio"
    try:
        import uvloop  # optional: only when asked for
    except ImportError:
        log.warning("%s=uvloop but uvloop is not installed (pip install uvloop); using asyncio", EVENT_LOOP_ENV)
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def freeze_startup_heap() -> None:
    """Takes what the start made (modules, classes, protobuf descriptors, the config: ~60,000
    objects) out of the garbage collector's full collections.

    A gateway under load ran one full collection every ~1.2 s, each 20-40 ms of CPU spent
    walking those objects, which never become garbage: 3 % of a Kafka gateway's CPU, and a
    pause in every event then in flight. Frozen, they are not walked again (``gc.freeze``); the
    start's own garbage is collected first, or it would stay for good.
    """
    gc.collect()
    gc.freeze()


class Served(Protocol):
    """What runs in the foreground: a ``Gateway`` or a ``ReplicatorProcess``."""

    @property
    def region(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self, grace: float | None = None) -> None: ...

    async def reload(self) -> ReloadResult: ...


@runtime_checkable
class _WithLinks(Protocol):
    """A ``Gateway``: its links can be stopped before the rest of it."""

    @property
    def shutdown_grace(self) -> float: ...

    async def stop_links(self, grace: float | None = None) -> None: ...


async def run_until_signalled(gateways: Sequence[Served], *, on_serving: Callable[[], None] | None = None) -> int:
    """Starts the gateways, serves until SIGTERM/SIGINT, then drains them all.

    ``on_serving`` is called once every gateway serves (``meshgate up`` prints its banner: the
    brokers' ports are known only then). A second SIGTERM/SIGINT during the drain exits at once
    (status 1). SIGHUP re-reads the mesh file: a valid file is swapped in, an invalid one is
    refused and the config stays.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stop(signame: str) -> None:
        if stop.is_set():
            log.warning("second %s: exiting without draining", signame)
            os._exit(1)
        log.info("%s: draining (send it again to exit at once)", signame)
        stop.set()

    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        for gw in gateways:
            task = loop.create_task(_reload(gw))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        started: list[Served] = []
        try:
            for gw in gateways:
                await gw.start()
                started.append(gw)
        except (OSError, BrokerError) as exc:
            # A start that fails for a reason the operator can fix: one line, not a traceback.
            await asyncio.gather(*(gw.stop(grace=0.0) for gw in started), return_exceptions=True)
            log.error("cannot start: %s", exc)  # noqa: TRY400 - the message says it all; no traceback
            return 1
        except BaseException:
            await asyncio.gather(*(gw.stop(grace=0.0) for gw in started), return_exceptions=True)
            raise
        freeze_startup_heap()
        if on_serving is not None:
            on_serving()
        await stop.wait()
        began = loop.time()
        if len(gateways) > 1:
            # They replicate to each other: their links end first, while every destination
            # still serves, so a clean stop logs no "Cancelling all calls" warning per link.
            # At most half of the grace: the other half is the admitted publishes' (they finish
            # within the grace period, as a gateway's own stop promises).
            linked: list[_WithLinks] = [gw for gw in gateways if isinstance(gw, _WithLinks)]
            await asyncio.gather(*(gw.stop_links(grace=gw.shutdown_grace / 2) for gw in linked))
        spent = loop.time() - began
        # One grace period for the whole stop: what the links took is not given again.
        await asyncio.gather(
            *(
                gw.stop(grace=max(0.0, gw.shutdown_grace - spent)) if isinstance(gw, _WithLinks) else gw.stop()
                for gw in gateways
            )
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0


async def _reload(gw: Served) -> None:
    result = await gw.reload()
    if result.applied:
        log.info("region %s: reloaded (sha256 %s)", gw.region, result.sha256[:12])
    else:
        for err in result.errors:
            log.error("region %s: reload refused: %s", gw.region, err)
