"""The replication links' Prometheus metrics, read from the links at scrape time.

Nothing here runs in a link's loop: the collector looks at ``Replicator.links`` when
Prometheus scrapes, at the state and the counters the links keep anyway (``Link.counters``,
whose lag figures the link polls from the broker every 0.5 s).

The heartbeat of a link is ``meshgate_link_lag_seconds``: the age of the oldest event of the
link's consumer not yet acked by the destination, as the broker stored it. It is not "time
since the last send": while a link is stuck with events waiting it grows by one second per
second, even if the link never fetched them, so "lag 0 but nothing flows" cannot hide. It
is 0 only when nothing is waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshgate.replicator._link import LinkState

if TYPE_CHECKING:
    from meshgate.replicator._board import LinkBoard
    from meshgate.replicator._replicator import Replicator

__all__ = ["LINK_STATES", "BoardCollector", "LinkCollector"]

# The label values of meshgate_link_state, one per LinkState.
LINK_STATES: Final = tuple(s.name.lower() for s in LinkState)


class LinkCollector(Collector):
    """Per link of a replicator: lag (events, seconds), state, forwarded/retries/dead-lettered.

    Labels: ``region`` (the source, this gateway's region) and ``destination``. The lag series
    come only from the replica that runs the link (a standby replica's figures are stale); the
    state and the counters come from every replica (sum the counters' rates across replicas).
    """

    def __init__(self, replicator: Replicator) -> None:
        self._replicator = replicator

    def describe(self) -> Iterable[Metric]:
        return self._families(with_samples=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        rows: list[_Row] = []
        if with_samples:
            for name in sorted(self._replicator.links):
                link = self._replicator.links[name]
                c = link.counters
                rows.append(
                    _Row(
                        destination=name,
                        running=link.running,
                        lag_events=c.lag_events,
                        lag_seconds=link.lag_seconds,
                        state=link.state.name.lower(),
                        counters=(c.forwarded, c.retries, c.dead_lettered),
                    )
                )
        yield from _link_families(self._replicator.region, rows)


class BoardCollector(Collector):
    """The same families as ``LinkCollector``, from the link status board (links run elsewhere).

    For a process that runs no link itself (``--role gateway``, or one whose links run in its
    worker processes): each link's state and lag as the board merges them (gauges: every
    reader shows the same, aggregate them with ``max``). The counters only of the processes
    ``own_pids`` gives (this process's workers), so that summing every scraped process counts
    each event once; none for a gateway, whose replicators export their own.
    Also ``meshgate_replicator_processes``: how many processes of the region post to the board.
    """

    def __init__(self, board: LinkBoard, own_pids: Callable[[], Collection[int]] | None = None) -> None:
        self._board = board
        self._own_pids = own_pids

    def describe(self) -> Iterable[Metric]:
        return self._families(with_samples=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        rows: list[_Row] = []
        counters = self._board.counters(self._own_pids()) if with_samples and self._own_pids is not None else {}
        processes = GaugeMetricFamily(
            "meshgate_replicator_processes",
            "Processes of this region running a replicator (lease owners) seen on the link status board.",
            labels=["region"],
        )
        if with_samples:
            for status in self._board.statuses():
                state = LinkState(status.state)
                rows.append(
                    _Row(
                        destination=status.destination,
                        running=state not in (LinkState.STANDBY, LinkState.STOPPED),
                        lag_events=status.lag_events,
                        lag_seconds=status.lag_seconds,
                        state=state.name.lower(),
                        counters=counters.get(status.destination, (0, 0, 0)) if self._own_pids is not None else None,
                    )
                )
            processes.add_metric([self._board.region], float(len(self._board.notes)))
        yield from _link_families(self._board.region, rows)
        yield processes


@dataclass(frozen=True, slots=True, kw_only=True)
class _Row:
    destination: str
    running: bool
    lag_events: int
    lag_seconds: float
    state: str
    # forwarded, retries, dead-lettered; None: not this process's to export.
    counters: tuple[int, int, int] | None


def _link_families(region: str, rows: Iterable[_Row]) -> Iterator[Metric]:
    labels = ["region", "destination"]
    lag_events = GaugeMetricFamily(
        "meshgate_link_lag_events",
        "Events of this region routed to the destination and not yet acked by it (from the broker).",
        labels=labels,
    )
    lag_seconds = GaugeMetricFamily(
        "meshgate_link_lag_seconds",
        "Age of the oldest event not yet acked by the destination, as the broker stored it; "
        "grows while the link is stuck (the link's heartbeat), 0 when nothing waits.",
        labels=labels,
    )
    state = GaugeMetricFamily(
        "meshgate_link_state",
        "1 for the link's current state (connecting, replicating, backing_off, paused, standby, stopped), "
        "0 for the others.",
        labels=[*labels, "state"],
    )
    forwarded = CounterMetricFamily(
        "meshgate_forwarded",
        "Events the destination acked (stored or already there), by link.",
        labels=labels,
    )
    retries = CounterMetricFamily(
        "meshgate_link_retries",
        "Times the link failed (call ended, ack timeout, broker error) and backed off before resending.",
        labels=labels,
    )
    dead_lettered = CounterMetricFamily(
        "meshgate_dead_lettered",
        "Events the destination refused for good, written to meshgate/dlq/<destination> in this region.",
        labels=labels,
    )
    for row in rows:
        key = [region, row.destination]
        if row.running:
            lag_events.add_metric(key, float(row.lag_events))
            lag_seconds.add_metric(key, row.lag_seconds)
        for st in LINK_STATES:
            state.add_metric([*key, st], 1.0 if st == row.state else 0.0)
        if row.counters is not None:
            forwarded.add_metric(key, float(row.counters[0]))
            retries.add_metric(key, float(row.counters[1]))
            dead_lettered.add_metric(key, float(row.counters[2]))
    yield from (lag_events, lag_seconds, state, forwarded, retries, dead_lettered)
