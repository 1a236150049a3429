"""The link status board on real brokers: NATS keeps notes that lapse by themselves (a TTL KV
bucket), Kafka keeps them as checkpoints whose age the reader judges; a clean stop removes a
process's note at once, and the merge shows each link as the process running it reports it.
"""

from __future__ import annotations

import time

import pytest

from meshgate.brokers import Board, Broker, KafkaBroker, NatsBroker
from meshgate.config import load_config_text
from meshgate.replicator import BoardNote, BoardPoster, LinkBoard, LinkState, Replicator, board_prefix
from meshgate.v1 import admin_pb2
from tests._wait import eventually

MESH = """
event_mesh:
  security: {replication: anonymous}
  regions:
    - {name: a, kind: nats, brokers: ["127.0.0.1:4222"], gateway: "127.0.0.1:7401"}
    - {name: b, kind: nats, brokers: ["127.0.0.1:4223"], gateway: "127.0.0.1:7402"}
  routing:
    - {topic: "orders/*", regions: [a, b]}
"""


def replicator_on(broker: Broker) -> Replicator:
    # Never started: its links are STOPPED, which is what it posts.
    return Replicator(region="a", broker=broker, config=load_config_text(MESH), own_thread=False)


async def check_board(broker: Broker) -> None:
    replicator = replicator_on(broker)
    poster = BoardPoster(broker=broker, replicator=replicator)
    board = LinkBoard(broker=broker, region="a", destinations=lambda: ["b", "c"])
    await board.refresh()
    assert board.notes == ()
    (b, c) = board.statuses()
    assert (b.destination, b.state) == ("b", admin_pb2.LINK_STATE_UNSPECIFIED)
    assert "no replicator process of region a runs the link to b" in b.last_error

    await poster.start()
    await eventually(lambda: _refreshed(board, 1), 10, what="the posted note is read")
    assert board.owners == (replicator.owner,)
    # The note of a replicator running the link: shown as it reports it, with its lag.
    replicator.links["b"].state = LinkState.REPLICATING
    # The destination's link: its counters.
    counters = replicator.links["b"].reader.counters
    counters.lag_events = 42
    counters.forwarded = 7
    await poster.post()
    await board.refresh()
    (b, c) = board.statuses()
    assert (b.state, b.lag_events, b.forwarded, b.last_error) == (admin_pb2.LINK_STATE_REPLICATING, 42, 7, "")
    assert c.state == admin_pb2.LINK_STATE_UNSPECIFIED

    await poster.stop()
    await board.refresh()
    assert board.notes == ()  # a clean stop leaves the board at once


async def _refreshed(board: LinkBoard, n: int) -> bool:
    await board.refresh()
    return len(board.notes) == n


async def test_board_on_nats(nats_broker: NatsBroker) -> None:
    await check_board(nats_broker)


async def test_a_note_nobody_rewrites_lapses_on_nats(nats_broker: NatsBroker) -> None:
    assert isinstance(nats_broker, Board)
    note = BoardNote(owner="a/dead", pid=1, host="h", posted=time.time())
    await nats_broker.post_note(board_prefix("a") + "dead", note.encode(), ttl=1.0)
    assert set(await nats_broker.notes(board_prefix("a"), ttl=1.0)) == {board_prefix("a") + "dead"}
    assert await nats_broker.notes(board_prefix("b"), ttl=1.0) == {}

    async def lapsed() -> bool:
        return await nats_broker.notes(board_prefix("a"), ttl=1.0) == {}

    await eventually(lapsed, 10, what="the note lapses within its TTL")


@pytest.mark.slow
async def test_board_on_kafka_and_stale_notes_ignored(kafka_broker: KafkaBroker) -> None:
    assert not isinstance(kafka_broker, Board)
    await check_board(kafka_broker)
    # A process killed without a clean stop: its note stays, too old to count.
    old = BoardNote(owner="a/dead", pid=1, host="h", posted=time.time() - 60)
    await kafka_broker.put_checkpoint(board_prefix("a") + "dead", old.encode())
    board = LinkBoard(broker=kafka_broker, region="a", destinations=lambda: ["b"])
    await board.refresh()
    assert board.notes == ()
